from betty_mcp.cli.main import main

main()
