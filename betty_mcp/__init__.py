"""betty-mcp: Betty's skills as MCP tools, plus any LLM.

Kept free of heavy imports: skill handlers import ``betty_mcp.kit.skillkit`` in every call.
"""

__version__ = "0.1.0"
