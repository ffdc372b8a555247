from betty_mcp.cli import main

main()
