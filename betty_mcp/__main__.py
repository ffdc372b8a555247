from betty_mcp.main import main

main()
