"""The examples run as documented, against a real server and store."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from conftest import isolated_env
from mcp_secrets.gateway import load_gateway_config

from .conftest import Deployment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
README = EXAMPLES.parent / "README.md"


def _run_example(
    name: str, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_claude_desktop_config_runs_serve_over_stdio() -> None:
    config = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())

    server = config["mcpServers"]["mcp-secrets"]
    assert server["command"] == "mcp-secrets"
    assert server["args"] == ["serve"]


def test_gateway_example_is_a_valid_gateway_configuration() -> None:
    config = load_gateway_config(EXAMPLES / "gateway.json")

    assert config.servers["github"].required == {"GITHUB_TOKEN"}
    assert config.servers["brave-search"].required == {"BRAVE_API_KEY"}


def test_library_example_fetches_key_names_without_printing_values(env: dict[str, str], canary: str) -> None:
    stored = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", "set", "github", "GITHUB_TOKEN", "--user", "alice"],
        input=canary + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert stored.returncode == 0, stored.stderr

    done = _run_example("get_secrets.py", env, "alice", "github")

    assert done.returncode == 0, done.stderr
    assert "1 secret(s) for alice on github: GITHUB_TOKEN" in done.stdout
    assert canary not in done.stdout + done.stderr


def test_library_example_without_its_arguments_prints_its_usage(env: dict[str, str]) -> None:
    done = _run_example("get_secrets.py", env)

    assert done.returncode == 2
    assert done.stderr == "usage: python examples/get_secrets.py USERNAME SERVER\n"


def test_library_example_without_a_master_key_says_so_in_one_line(env: dict[str, str]) -> None:
    without_key = {name: value for name, value in env.items() if name != "MCP_SECRETS_MASTER_KEY"}

    done = _run_example("get_secrets.py", without_key, "alice", "github")

    assert done.returncode == 1
    assert done.stderr.startswith("error: no master key is configured"), done.stderr
    assert "Traceback" not in done.stderr


def test_http_client_example_stores_lists_and_deletes_with_a_token(
    streamable_http_deployment: Deployment, canary: str
) -> None:
    env = {
        **streamable_http_deployment.env,
        "MCP_SECRETS_URL": streamable_http_deployment.endpoint,
        "MCP_SECRETS_TOKEN": streamable_http_deployment.token("carol"),
    }

    done = _run_example("http_client.py", env, stdin=canary + "\n")

    assert done.returncode == 0, done.stderr
    assert "Secret API_KEY for server example created" in done.stdout
    assert "example/API_KEY" in done.stdout
    assert "deleted" in done.stdout
    assert canary not in done.stdout + done.stderr + streamable_http_deployment.log()


def test_http_client_example_waits_while_another_process_holds_the_store(
    start_server: Callable[..., AbstractContextManager[Deployment]], tmp_path: Path, canary: str
) -> None:
    """It gave up after httpx's 5 s default, with a traceback, where the SDK's own client waits minutes."""
    env = isolated_env(tmp_path, MCP_SECRETS_SQLITE_BUSY_TIMEOUT="600")
    with start_server(env, "streamable-http", tmp_path / "server.log") as deployment:
        example_env = {
            **deployment.env,
            "MCP_SECRETS_URL": deployment.endpoint,
            "MCP_SECRETS_TOKEN": deployment.token("carol"),
        }
        # Another process writing (`mcp-secrets rotate`, a backup): set_secret waits for its lock.
        holder = sqlite3.connect(deployment.data_dir / "secrets.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
                example = subprocess.Popen(
                    [sys.executable, str(EXAMPLES / "http_client.py")],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    text=True,
                    env=example_env,
                )
            assert example.stdin is not None
            example.stdin.write(canary + "\n")
            example.stdin.close()
            # Once the session is initialised, set_secret follows at once, and waits for the lock.
            while '"POST /mcp HTTP/1.1" 200' not in deployment.log() and example.poll() is None:
                time.sleep(0.1)
            time.sleep(6)  # longer than httpx's default read timeout
        finally:
            holder.execute("COMMIT")
            holder.close()
        example.wait(timeout=60)
        stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()

        assert example.returncode == 0, stderr
        assert "Secret API_KEY for server example created" in stdout
        assert (canary in stdout + stderr + deployment.log()) is False


def test_the_readme_shows_the_server_block_of_the_nginx_example_that_test_nginx_runs() -> None:
    example = (EXAMPLES / "nginx.conf").read_text(encoding="utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)

    assert example[example.index("server {") :] in blocks
