"""``mcp-secrets serve`` exactly as the CLI runs it, plus one trivial tool ``floor`` for benchmarks.

    python benchmarks/_serve_with_floor.py [serve options, e.g. --transport streamable-http --port 8123]

Not a benchmark itself: ``tools.py`` starts it as the server subprocess. The
server cannot be patched from outside its process, and the benchmarks need a
floor tool on the very server they measure, called through the same client and
transport; so this wraps the ``build_server`` the ``serve`` command calls, adds the floor to
the server it returns, and hands over to the CLI's own ``serve`` command.
Everything else (settings, store, master key, auth, logging, uvicorn) is the CLI's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ParamSpec

from mcp.server.mcpserver import MCPServer

from mcp_secrets import app, cli, serving

FLOOR = "floor"
P = ParamSpec("P")


def with_floor(build: Callable[P, MCPServer[Any]]) -> Callable[P, MCPServer[Any]]:
    """``build``, adding to the server it returns a tool that returns a constant."""

    def build_with_floor(*args: P.args, **kwargs: P.kwargs) -> MCPServer[Any]:
        server = build(*args, **kwargs)
        # A sync function: the SDK runs it in a worker thread, as our tools run the Secrets service.
        server.add_tool(lambda: "ok", name=FLOOR, description="Benchmark floor: returns a constant.")
        return server

    return build_with_floor


if __name__ == "__main__":
    serving.build_server = with_floor(app.build_server)  # type: ignore[attr-defined]
    raise SystemExit(cli.main(["serve", *sys.argv[1:]]))
