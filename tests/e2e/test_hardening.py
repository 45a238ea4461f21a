"""A process of the same OS user cannot read the running server's environment, where its master key may be.

The server marks itself not dumpable (``mcp_secrets.hardening``). Root can still
read anything, so when the tests run as root the reading side runs as root without
capabilities (``setpriv``), which is what makes root an ordinary user here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import as_an_ordinary_process
from e2e.conftest import CLI_TIMEOUT, INITIALIZE, MCP_SECRETS, isolated_env
from mcp_secrets.crypto import generate_master_key

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")

# Starts the server and a plain Python process with the same environment, waits until each is up,
# then says whether each one's /proc/<pid>/environ could be read and held the master key.
PROBE = """
import json, subprocess, sys

serve, env, key = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
plain = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]
seen = {}
for name, command, first in (("serve", serve, sys.argv[4]), ("plain", plain, "")):
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    process.stdin.write(first + "\\n")
    process.stdin.flush()
    process.stdout.readline()  # the initialize response, or "ready": the process is past its start
    try:
        with open(f"/proc/{process.pid}/environ", "rb") as environ:
            seen[name] = "holds the key" if key.encode() in environ.read() else "read, without the key"
    except PermissionError:
        seen[name] = "refused"
    process.stdin.close()
    process.wait(30)
print(json.dumps(seen))
"""


def test_the_master_key_in_the_servers_environment_is_out_of_reach_of_the_users_other_processes(
    tmp_path: Path,
) -> None:
    key = generate_master_key()
    env = isolated_env(tmp_path, MCP_SECRETS_MASTER_KEY=key)
    serve = [*MCP_SECRETS, "serve"]

    done = subprocess.run(
        [
            *as_an_ordinary_process(),
            sys.executable,
            "-c",
            PROBE,
            json.dumps(serve),
            json.dumps(env),
            key,
            json.dumps(INITIALIZE),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    # The plain process shows the check can see a key; the server's environment stays closed.
    assert json.loads(done.stdout) == {"serve": "refused", "plain": "holds the key"}
    assert key not in done.stdout + done.stderr


def test_every_cli_command_runs_not_dumpable() -> None:
    script = (
        "from mcp_secrets import cli\n"
        "from mcp_secrets.hardening import is_inspectable\n"
        "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(is_inspectable())\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True
    )

    assert done.stdout.splitlines()[-1] == "False"


# Put first on the path of a started `mcp-secrets`: it watches every import, and notes each module of a
# library imported while the process could still be read by another (its environment holds the key).
WATCH_IMPORTS = """
import atexit, ctypes, os, sys

LIBRARIES = {"anyio", "cryptography", "httpx", "mcp", "pydantic", "pydantic_settings", "pymongo", "starlette"}
prctl = ctypes.CDLL(None).prctl
seen = []

def watch(event, args):
    if event == "import" and args[0].partition(".")[0] in LIBRARIES and prctl(3, 0, 0, 0, 0) != 0:
        seen.append(args[0])

sys.addaudithook(watch)
atexit.register(lambda: open(os.environ["WATCH_REPORT"], "w").write("\\n".join(seen)))
"""


@pytest.mark.parametrize("command", [["mcp-secrets"], MCP_SECRETS], ids=["console-script", "python-m"])
def test_a_started_process_is_closed_before_it_imports_any_library(
    tmp_path: Path, command: list[str]
) -> None:
    # The imports are most of a start (about 0.7 s): until the process is closed, another process of its
    # user can read its environment, MCP_SECRETS_MASTER_KEY included. Closed first, that window is the
    # interpreter's own start.
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(WATCH_IMPORTS, encoding="utf-8")
    report = tmp_path / "report"
    if command == ["mcp-secrets"]:
        command = [str(Path(sys.executable).with_name("mcp-secrets"))]
    env = isolated_env(tmp_path, PYTHONPATH=str(watch), WATCH_REPORT=str(report))

    done = subprocess.run(
        [*command, "--version"], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert report.read_text(encoding="utf-8").split() == []
