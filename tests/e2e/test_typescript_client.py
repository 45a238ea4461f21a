"""The TypeScript SDK's client, which most MCP clients are built on, on stdio, Streamable HTTP and SSE.

``typescript_client.mjs`` drives ``@modelcontextprotocol/sdk`` (installed from the npm registry at a pinned
version into a temporary directory, once for the module) as a client author would: the handshake, every
tool's schemas compiled by the SDK's own validator (ajv), each tool called, its structured content checked
by the SDK, ``request_secret`` as a URL elicitation answered by filling the entry page, ``list_secret_keys``
paged and, over HTTP, a downstream's tools through the gateway. Skipped where Node.js or npm is not
installed; CI installs them and sets MCP_SECRETS_REQUIRE_INSPECTOR, so that there it fails instead of
skipping.
"""

from __future__ import annotations

import json
import secrets as _random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import isolated_env, run_client_script, run_program, serving, stdout_path

from .test_gateway import STDIO_ENTRY
from .test_inspector import INSPECTOR_TIMEOUT, needed

SDK = "@modelcontextprotocol/sdk@1.32.2"
SCRIPT = Path(__file__).with_name("typescript_client.mjs")
MCP_SECRETS_COMMAND = str(Path(sys.executable).parent / "mcp-secrets")
SECRETS_TOOLS = ["request_secret", "set_secret", "delete_secret", "list_secret_keys", "list_secret_events"]
PAGED_USER = "carol"
PAGED_KEYS = 1005  # more than the 1,000 of one page
# A user holding more keys than one page lists, each with a value of its own.
STORES_MANY = (
    "import secrets, sys; from mcp_secrets import open_secrets; s = open_secrets(); "
    "[s.set_secret(sys.argv[1], f'srv{i % 3}', f'KEY_{i:04d}', secrets.token_urlsafe(12)) "
    "for i in range(int(sys.argv[2]))]; s.close(); s.store.close()"
)


@pytest.fixture(scope="module")
def node() -> str:
    return needed("node", "the TypeScript SDK's client")


@pytest.fixture(scope="module")
def typescript_sdk(node: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where ``SDK`` is installed, with the client script beside its node_modules."""
    npm = needed("npm", "the TypeScript SDK's client")
    root = tmp_path_factory.mktemp("typescript-sdk")
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefer-offline", "--prefix", str(root), SDK],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSPECTOR_TIMEOUT,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    (root / SCRIPT.name).write_text(SCRIPT.read_text(encoding="utf-8"), encoding="utf-8")
    return root


def run_client(node: str, sdk: Path, settings: dict[str, str], printed: list[str]) -> dict[str, Any]:
    """The script's report; all it printed (a stdio server's log too) is added to ``printed``."""
    return run_client_script([node, str(sdk / SCRIPT.name)], settings, printed, INSPECTOR_TIMEOUT)


def assert_calls(calls: dict[str, Any]) -> None:
    """Each tool's results as a client read them; refusals are tool errors without structured content."""
    for name in ("set", "replace", "keys", "events", "delete"):
        assert calls[name]["isError"] is False, (name, calls[name])
        assert calls[name].get("read", True) is True, (name, calls[name])  # FastMCP read it as its type
    assert calls["set"]["structured"] == {"server": "github", "key": "GITHUB_TOKEN", "status": "created"}
    assert calls["replace"]["structured"]["status"] == "updated"
    assert [key["key"] for key in calls["keys"]["structured"]["keys"]] == ["GITHUB_TOKEN"]
    assert [event["action"] for event in calls["events"]["structured"]["events"]] == ["updated", "created"]
    assert calls["delete"]["structured"]["status"] == "deleted"
    for refused in ("deleteAgain", "badName", "noValue", "badLimit", "badCursor"):
        assert calls[refused]["isError"] is True, (refused, calls[refused])
        assert calls[refused]["structured"] is None


@contextmanager
def client_settings(transport: str, env: dict[str, str], log: Path, value: str) -> Iterator[dict[str, str]]:
    """The script's settings for ``transport``: over HTTP, a gateway serving as long as the block lasts."""
    settings = {"TS_TRANSPORT": transport, "TS_VALUE": value, "TS_PAGED_USER": PAGED_USER}
    if transport == "stdio":
        server_env = {name: value for name, value in env.items() if name.startswith("MCP_SECRETS_")}
        yield {**settings, "TS_COMMAND": MCP_SECRETS_COMMAND, "TS_SERVER_ENV": json.dumps(server_env)}
        return
    servers = log.with_name("gateway.json")
    servers.write_text(json.dumps({"mcpServers": {"down": STDIO_ENTRY}}), encoding="utf-8")
    with serving(env, transport, log, "--servers", str(servers)) as deployment:
        yield {
            **settings,
            "TS_URL": deployment.endpoint,
            "TS_TOKEN": deployment.token("alice"),
            "TS_PAGED_TOKEN": deployment.token(PAGED_USER),
            "TS_NUMBER": str(10**11 + _random.randbelow(9 * 10**11)),  # an account id, say
        }


def printed_by_servers(log: Path) -> list[str]:
    return [path.read_text() for path in (log, stdout_path(log)) if path.exists()]


@pytest.mark.timeout(INSPECTOR_TIMEOUT * 2)
@pytest.mark.parametrize("transport", ["stdio", "streamable-http", "sse"])
def test_the_typescript_sdks_client_reads_every_tool_and_result_as_the_server_means_them(
    node: str, typescript_sdk: Path, tmp_path: Path, canary: str, transport: str
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SECRETS_PER_USER=str(PAGED_KEYS))
    stored = run_program(env, [sys.executable, "-c", STORES_MANY, PAGED_USER, str(PAGED_KEYS)])
    assert stored.returncode == 0, stored.stderr
    printed: list[str] = []
    log = tmp_path / "server.log"

    with client_settings(transport, env, log, canary) as settings:
        report = run_client(node, typescript_sdk, settings, printed)

    # The SDK offers its latest revision, and the server takes it.
    assert report["answered"] == report["offered"] == "2025-11-25"
    assert report["schemas"] == {
        f"{tool}.{which}": "compiled" for tool in SECRETS_TOOLS for which in ("inputSchema", "outputSchema")
    }
    assert_calls(report["calls"])

    request = report["request"]
    assert "threw" not in request["result"], request["result"]
    if transport == "stdio":
        assert request["result"]["structured"]["status"] == "use_terminal"
        assert request["asked"] == []
    else:
        # Asked once in URL mode, for a page of this server; the page filled, the same id said complete.
        assert [(asked["mode"], asked["sameOrigin"]) for asked in request["asked"]] == [("url", True)]
        assert request["filled"] == [200]
        assert request["completed"] == [True]
        assert request["result"]["structured"]["status"] == "stored"
        assert request["stored"] == ["ENTERED"]
        assert request["progressed"] is True
        assert report["formOnly"] == {"isError": False, "status": "link_sent", "hasUrl": True}

    assert report["pages"] == [1000, PAGED_KEYS - 1000]
    listed = report["listed"]
    assert len(set(listed)) == PAGED_KEYS
    assert listed == sorted(listed, key=lambda name: tuple(name.split("/")))
    if transport == "streamable-http":
        assert report["afterTermination"] == "refused"
    if transport != "stdio":
        # Its structured content, the number now a label, is withheld rather than thrown on by the SDK.
        gateway = report["gateway"]
        assert gateway["offered"] is True
        assert "threw" not in gateway["number"], gateway["number"]
        assert gateway["number"]["isError"] is True
        assert gateway["number"]["structured"] is None
        assert "[redacted TOKEN]" in gateway["number"]["text"]
        assert gateway["text"]["isError"] is False, gateway["text"]
        assert gateway["text"]["structured"]["plain"] == "my token is [redacted TOKEN]"

    values = [canary, env["MCP_SECRETS_MASTER_KEY"]]
    values += [settings[name] for name in ("TS_TOKEN", "TS_PAGED_TOKEN", "TS_NUMBER") if name in settings]
    for text in [*printed, *printed_by_servers(log)]:
        leaked = [index for index, value in enumerate(values) if value in text]  # which, never the value
        assert not leaked
