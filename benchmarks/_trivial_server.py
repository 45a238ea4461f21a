"""The smallest MCP server on the same SDK: the baseline of ``cold_start.py``.

python benchmarks/_trivial_server.py   # speaks MCP over stdio
"""

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("trivial")


@mcp.tool()
def ping() -> str:
    """Answer a constant."""
    return "ok"


if __name__ == "__main__":
    mcp.run()
