"""The MCP front end: the server, its transports, resources, hot reload and thin tools over services."""
