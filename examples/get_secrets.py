"""Fetch one user's decrypted secrets for one MCP server, as a gateway does right before a tool call.

Uses the same MCP_SECRETS_* settings as the server (master key, database URL):

    python examples/get_secrets.py alice github

Prints only the key names: the values stay in memory for the duration of the call.
"""

from __future__ import annotations

import sys

from mcp_secrets import SecretsError, open_secrets


def main(username: str, server: str) -> int:
    try:
        secrets = open_secrets()  # ConfigurationError: a setting (the master key, say) missing or malformed
    except SecretsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        values = secrets.get_secrets(username, server)
    except SecretsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        secrets.close()  # uses are written in the background: write this one before the store goes
        secrets.store.close()
    # A real caller would pass `values` to the downstream server's environment here, then drop them.
    print(f"{len(values)} secret(s) for {username} on {server}: {', '.join(sorted(values)) or '(none)'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:  # noqa: PLR2004 - the script and its two arguments
        print("usage: python examples/get_secrets.py USERNAME SERVER", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
