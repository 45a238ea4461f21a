"""MCP Inspector's command line as the client, on stdio, Streamable HTTP and SSE, as users run it.

The Inspector is a Node.js program that ``npx`` fetches from the npm registry at a pinned version, with
the Node.js it needs (22), whatever the system's own is. Skipped where ``npx`` is not installed; CI
installs it and sets MCP_SECRETS_REQUIRE_INSPECTOR, so that there it fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Deployment, isolated_env, run_program, serving, stdout_path

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
NODE = "node@22"  # the Inspector's own requirement; Debian's Node.js is 18
# The first run fetches the Inspector from the registry; later runs take a few seconds.
INSPECTOR_TIMEOUT = 300
MCP_SECRETS_COMMAND = str(Path(sys.executable).parent / "mcp-secrets")
# Prints whether alice's github secrets are exactly {"GITHUB_TOKEN": argv[1]}, never the value.
READS_BACK = (
    "import sys; from mcp_secrets import open_secrets; "
    "print(open_secrets(create=False).get_secrets('alice', 'github') == {'GITHUB_TOKEN': sys.argv[1]})"
)


def npx(runs: str = "the MCP Inspector") -> str:
    """The ``npx`` to run ``runs`` with: skipped where there is none, failed where CI requires one."""
    return needed("npx", runs)


def needed(program: str, runs: str) -> str:
    """The path of Node.js's ``program``, which ``runs`` needs: skipped where there is none, failed in CI."""
    found = shutil.which(program)
    if found is None:
        reason = f"{program} not found (Node.js and npm run {runs})"
        if os.environ.get("MCP_SECRETS_REQUIRE_INSPECTOR", "") not in ("", "0"):
            pytest.fail(f"MCP_SECRETS_REQUIRE_INSPECTOR is set, but {reason}")
        pytest.skip(reason)
    return found


class Inspector:
    """Runs ``npx INSPECTOR --cli`` and keeps every byte it printed, for the leak check at the end."""

    def __init__(self, npx: str, catalog: Path) -> None:
        self.npx = npx
        # npm's cache stays the user's (one fetch of the Inspector serves every run); its catalog of
        # servers, which it writes, is the test's.
        self.env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "MCP_CATALOG_PATH": str(catalog)}
        self.printed: list[str] = []

    def run(self, *args: str) -> tuple[int, str]:
        """Exit code and stdout of one Inspector run; its stderr is kept too."""
        done = subprocess.run(
            [self.npx, "--yes", "-p", NODE, "-p", INSPECTOR, "--", "mcp-inspector", "--cli", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSPECTOR_TIMEOUT,
            check=False,
        )
        self.printed += [done.stdout, done.stderr]
        return done.returncode, done.stdout

    def call(self, *target: str, tool: str, **arguments: str) -> dict[str, Any]:
        """``tools/call`` of ``tool`` on ``target``: the result, which must not be an error."""
        tool_args = [f"{name}={value}" for name, value in arguments.items()]
        code, out = self.run(
            *target,
            "--method",
            "tools/call",
            "--tool-name",
            tool,
            *(["--tool-arg", *tool_args] if tool_args else []),
        )
        assert code == 0, self.printed[-1]
        result: dict[str, Any] = json.loads(out)
        assert result["isError"] is False, result
        return result


def stdio_target(env: dict[str, str], username: str, key_file: Path) -> list[str]:
    """The Inspector's arguments that spawn ``mcp-secrets serve`` on stdio as ``username``.

    As the README says: the master key by its file (``key_file``, written here), not in the arguments.
    """
    settings = {name: value for name, value in env.items() if name.startswith("MCP_SECRETS_")}
    key_file.write_text(settings.pop("MCP_SECRETS_MASTER_KEY"))
    key_file.chmod(0o600)
    settings.update(MCP_SECRETS_MASTER_KEY_FILE=str(key_file), MCP_SECRETS_USER=username)
    return [flag for name, value in settings.items() for flag in ("-e", f"{name}={value}")] + [
        MCP_SECRETS_COMMAND,
        "serve",
    ]


def http_target(deployment: Deployment, token: str) -> list[str]:
    """The Inspector's arguments for a server over HTTP, with ``token`` as the bearer."""
    transport = "sse" if deployment.transport == "sse" else "http"
    return [deployment.endpoint, "--transport", transport, "--header", f"Authorization: Bearer {token}"]


def stored_keys(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["server"], entry["key"]) for entry in result["structuredContent"]["keys"]]


# pytest-timeout's bound, for a run that has to fetch the Inspector and Node.js first.
@pytest.mark.timeout(INSPECTOR_TIMEOUT * 2)
def test_the_inspector_stores_lists_and_reads_the_trail_on_every_transport(
    tmp_path: Path, canary: str
) -> None:
    inspector = Inspector(npx(), tmp_path / "inspector.json")
    env = isolated_env(tmp_path)
    stdio = stdio_target(env, "alice", tmp_path / "master.key")

    # Its strict check finds nothing in the tools' schemas that clients could read differently.
    code, listed = inspector.run(*stdio, "--method", "tools/list", "--strict")
    assert code == 0, inspector.printed[-1]
    assert {tool["name"] for tool in json.loads(listed)["tools"]} == {
        "request_secret",
        "set_secret",
        "delete_secret",
        "list_secret_keys",
        "list_secret_events",
    }

    stored = inspector.call(*stdio, tool="set_secret", server="github", key="GITHUB_TOKEN", value=canary)
    assert stored["structuredContent"]["status"] == "created"
    trail = inspector.call(*stdio, tool="list_secret_events")
    assert [
        (event["action"], event["key"], event["transport"]) for event in trail["structuredContent"]["events"]
    ] == [("created", "GITHUB_TOKEN", "stdio")]

    with serving(env, "streamable-http", tmp_path / "http.log") as http:
        alice, bob = http.token("alice"), http.token("bob")
        inspector.call(
            *http_target(http, alice), tool="set_secret", server="linear", key="API_KEY", value=canary
        )
        listed_by_alice = inspector.call(*http_target(http, alice), tool="list_secret_keys")
        assert sorted(stored_keys(listed_by_alice)) == [("github", "GITHUB_TOKEN"), ("linear", "API_KEY")]
        assert stored_keys(inspector.call(*http_target(http, bob), tool="list_secret_keys")) == []
        # No token: the server asks for one, and the Inspector, told not to start a login, gives up.
        code, _ = inspector.run(
            http.endpoint, "--transport", "http", "--stored-auth-only", "--method", "tools/list"
        )
        assert code != 0
        assert '"POST /mcp HTTP/1.1" 401' in http.log()

    with serving(env, "sse", tmp_path / "sse.log") as sse:
        deleted = inspector.call(
            *http_target(sse, sse.token("alice")), tool="delete_secret", server="linear", key="API_KEY"
        )
        assert deleted["structuredContent"]["status"] == "deleted"

    assert stored_keys(inspector.call(*stdio, tool="list_secret_keys")) == [("github", "GITHUB_TOKEN")]
    # The value the Inspector sent is what a service reading alice's secrets gets, whole.
    read = run_program(env, [sys.executable, "-c", READS_BACK, canary])
    assert (read.returncode, read.stdout) == (0, "True\n"), read.stderr
    logs = [(tmp_path / name).read_text() for name in ("http.log", "sse.log")]
    logs += [stdout_path(tmp_path / name).read_text() for name in ("http.log", "sse.log")]
    assert all(canary not in text for text in [*inspector.printed, *logs])
    assert env["MCP_SECRETS_MASTER_KEY"] not in " ".join(stdio)
