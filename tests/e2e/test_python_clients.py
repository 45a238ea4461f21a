"""The Python SDK 1.x's client and FastMCP's, which many Python services and agents run, on every transport.

Each runs ``python_client.py`` in a virtual environment of its own, made from PyPI at a pinned version
(they cannot share this project's: mcp-secrets needs the SDK 2.x), kept in the temporary directory under
a name of its pins for later runs: the handshake, every schema, each tool called and its structured
content checked by the client, ``request_secret`` as a URL elicitation answered by filling the entry page,
``list_secret_keys`` paged past 2,000 keys and, over HTTP, a downstream's tools through the gateway. The
library, as the README has a service on the SDK 1.x install it, reads a secret back beside that client.
Skipped where PyPI cannot be reached; CI sets MCP_SECRETS_REQUIRE_PYPI, so that there it fails instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets as _random
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import isolated_env, run_client_script, run_program, serving, stdout_path

from .test_gateway import STDIO_ENTRY
from .test_typescript_client import MCP_SECRETS_COMMAND, SECRETS_TOOLS, STORES_MANY, assert_calls

# The latest of each line; FastMCP 2 runs on the SDK 1.x. platformdirs: the README's line for the library.
CLIENTS = {"mcp": ["mcp==1.30.0", "platformdirs"], "fastmcp": ["fastmcp==2.14.7"]}
SCRIPT = Path(__file__).with_name("python_client.py")
SERVER = Path(__file__).parents[2] / "server"
INSTALL_TIMEOUT = 600
INSTALLED = "installed"  # a file, written once pip has installed every pin
CLIENT_TIMEOUT = 300
PAGED_USER = "carol"
PAGED_KEYS = 2005  # two pages of 1,000 and a few
# Whether alice's github secrets are exactly {"GITHUB_TOKEN": argv[1]}, never the value, and the SDK 1.x's
# client is still there to import.
READS_BACK = (
    "import sys; from mcp_secrets import open_secrets; "
    "from mcp.client.streamable_http import streamablehttp_client; "
    "import importlib.metadata as m; "
    "print(m.version('mcp'), open_secrets(create=False).get_secrets('alice', 'github') == "
    "{'GITHUB_TOKEN': sys.argv[1]})"
)
STORES_ONE = (
    "import sys; from mcp_secrets import open_secrets; s = open_secrets(); "
    "s.set_secret('alice', 'github', 'GITHUB_TOKEN', sys.argv[1]); s.close(); s.store.close()"
)


def client_python(client: str) -> Path:
    """The Python of a virtual environment holding ``client``, made once per set of pins for this machine."""
    pins = CLIENTS[client]
    home = Path(tempfile.gettempdir()) / f"mcp-secrets-{'-'.join(pins).replace('==', '-')}"
    python = home / "bin" / "python"
    # One test process makes it while the others (pytest-xdist's) wait, rather than make their own.
    with (home.parent / f"{home.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / INSTALLED).exists():
            make_environment(home, pins)
    return python


def make_environment(home: Path, pins: list[str]) -> None:
    """A virtual environment at ``home`` with ``pins`` from PyPI; skipped where PyPI cannot be reached."""
    shutil.rmtree(home, ignore_errors=True)  # what a run stopped halfway left
    venv.create(home, with_pip=True, symlinks=True)
    installed = subprocess.run(
        [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--retries", "1", *pins],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    if installed.returncode != 0:
        shutil.rmtree(home)
        said = installed.stderr.strip().splitlines() or ["nothing"]
        reason = f"pip could not install {' '.join(pins)} from PyPI: {said[-1]}"
        if os.environ.get("MCP_SECRETS_REQUIRE_PYPI", "") not in ("", "0"):
            pytest.fail(f"MCP_SECRETS_REQUIRE_PYPI is set, but {reason}")
        pytest.skip(reason)
    (home / INSTALLED).touch()


def run_client(python: Path, settings: dict[str, str], printed: list[str]) -> dict[str, Any]:
    """The script's report; all it printed (a stdio server's log too) is added to ``printed``."""
    return run_client_script([str(python), str(SCRIPT)], settings, printed, CLIENT_TIMEOUT)


def test_a_client_script_that_fails_is_told_without_the_values_of_its_settings(canary: str) -> None:
    printed: list[str] = []
    dies = "import os, sys; sys.exit('Traceback: ' + os.environ['PY_VALUE'])"

    with pytest.raises(pytest.fail.Exception) as failed:
        run_client_script([sys.executable, "-c", dies], {"PY_VALUE": canary}, printed, CLIENT_TIMEOUT)

    assert "[PY_VALUE]" in str(failed.value)
    assert (canary in str(failed.value)) is False
    assert (canary in "".join(printed)) is True  # what it printed is still there for the caller to search


@pytest.mark.timeout(INSTALL_TIMEOUT + CLIENT_TIMEOUT)
@pytest.mark.parametrize("transport", ["stdio", "streamable-http", "sse"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_the_python_sdk_1x_and_fastmcp_clients_read_every_tool_and_result_as_the_server_means_them(
    tmp_path: Path, canary: str, client: str, transport: str
) -> None:
    python = client_python(client)
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SECRETS_PER_USER=str(PAGED_KEYS))
    stored = run_program(env, [sys.executable, "-c", STORES_MANY, PAGED_USER, str(PAGED_KEYS)])
    assert stored.returncode == 0, stored.stderr
    printed: list[str] = []
    log = tmp_path / "server.log"
    settings = {"PY_CLIENT": client, "PY_TRANSPORT": transport, "PY_VALUE": canary}
    settings["PY_PAGED_USER"] = PAGED_USER
    values = [canary, env["MCP_SECRETS_MASTER_KEY"]]
    cancelled = tmp_path / "cancelled"  # where the downstream notes each call cancelled
    if transport == "stdio":
        server_env = {name: value for name, value in env.items() if name.startswith("MCP_SECRETS_")}
        settings |= {"PY_COMMAND": MCP_SECRETS_COMMAND, "PY_SERVER_ENV": json.dumps(server_env)}
        report = run_client(python, settings, printed)
    else:
        servers = tmp_path / "gateway.json"
        down = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_CANCEL_FILE": str(cancelled)}}
        servers.write_text(json.dumps({"mcpServers": {"down": down}}), encoding="utf-8")
        with serving(env, transport, log, "--servers", str(servers)) as deployment:
            settings |= {
                "PY_URL": deployment.endpoint,
                "PY_TOKEN": deployment.token("alice"),
                "PY_PAGED_TOKEN": deployment.token(PAGED_USER),
                "PY_NUMBER": str(10**11 + _random.randbelow(9 * 10**11)),  # an account id, say
            }
            values += [settings[name] for name in ("PY_TOKEN", "PY_PAGED_TOKEN", "PY_NUMBER")]
            report = run_client(python, settings, printed)

    # The client offers its latest revision, and the server takes it.
    assert report["answered"] == report["offered"] == "2025-11-25"
    assert {"tools", "resources", "prompts"} <= set(report["capabilities"])
    assert report["schemas"] == {
        f"{tool}.{which}": "compiled" for tool in SECRETS_TOOLS for which in ("inputSchema", "outputSchema")
    }
    assert_calls(report["calls"])
    assert_request(report, transport)
    if transport != "stdio":
        assert_gateway(report["gateway"], client, cancelled)
    if transport == "streamable-http" and client == "mcp":
        assert report["afterTermination"] == 404

    assert report["pages"] == [1000, 1000, PAGED_KEYS - 2000]
    listed = report["listed"]
    assert len(set(listed)) == PAGED_KEYS
    assert listed == sorted(listed, key=lambda name: tuple(name.split("/")))

    texts = [*printed, log.read_text() if log.exists() else ""]
    texts += [stdout_path(log).read_text()] if stdout_path(log).exists() else []
    for text in texts:
        leaked = [index for index, value in enumerate(values) if value in text]  # which, never the value
        assert not leaked


def assert_request(report: dict[str, Any], transport: str) -> None:
    request = report["request"]
    assert "threw" not in request["result"], request["result"]
    if transport == "stdio":
        assert request["result"]["structured"]["status"] == "use_terminal"
        assert request["asked"] == []
        return
    # Both declare URL mode: asked once, for a page of this server, filled; the elicitation said complete.
    assert request["asked"] == [{"mode": "url", "sameOrigin": True}]
    assert request["filled"] == [200]
    assert request["completed"] is True
    assert request["result"]["structured"]["status"] == "stored"
    assert request["stored"] == ["ENTERED"]
    assert request["progressed"] is True
    assert report["noElicitation"] == {"isError": False, "status": "link_sent", "hasUrl": True}


def assert_gateway(gateway: dict[str, Any], client: str, cancelled: Path) -> None:
    assert gateway["told"] is True
    assert gateway["offered"] is True
    # Its structured content, the number now a label, is withheld: a tool error with the redacted text.
    assert gateway["number"]["isError"] is True, gateway["number"]
    assert gateway["number"]["structured"] is None
    assert "[redacted TOKEN]" in gateway["number"]["text"]
    assert gateway["text"]["isError"] is False, gateway["text"]
    assert gateway["text"]["structured"]["plain"] == "my token is [redacted TOKEN]"
    if client == "mcp":
        # The service's own notifications/cancelled reached the downstream, and the next call ran.
        assert cancelled.read_text(encoding="utf-8").split() == ["hang"]
        assert gateway["afterCancel"]["isError"] is False, gateway["afterCancel"]


def test_the_library_reads_a_secret_beside_the_python_sdk_1x_client_as_the_readme_installs_it(
    tmp_path: Path, canary: str
) -> None:
    python = client_python("mcp")
    env = isolated_env(tmp_path)
    stored = run_program(env, [sys.executable, "-c", STORES_ONE, canary])
    assert stored.returncode == 0, stored.stderr
    # `pip install --no-deps mcp-secrets`: the package's own files, none of its requirements.
    read = run_program({**env, "PYTHONPATH": str(SERVER)}, [str(python), "-c", READS_BACK, canary])
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [CLIENTS["mcp"][0].split("==")[1], "True"]
    assert canary not in read.stdout + read.stderr
