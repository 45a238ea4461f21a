"""Where a started ``mcp-secrets`` begins: closed to other processes first, then the command line.

Its imports take most of a start (about 0.7 s for ``serve``, 0.2 s for the other commands, nearly all
of it libraries). Until the process is marked not dumpable, every process of its OS user can read its
environment, ``MCP_SECRETS_MASTER_KEY`` included; so it is marked before any of them, and the window
left is the interpreter's own start.
"""

from __future__ import annotations

from mcp_secrets.hardening import forbid_inspection


def main() -> int:
    """The ``mcp-secrets`` command (and ``python -m mcp_secrets``)."""
    forbid_inspection()
    from mcp_secrets.cli import main as run  # noqa: PLC0415 - only once the process is closed

    return run()
