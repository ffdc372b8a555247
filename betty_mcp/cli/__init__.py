"""The command-line front end: ``betty-mcp`` (main.py parses ``serve``; commands.py the rest)."""
