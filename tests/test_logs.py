"""The server's log: stderr only, and no library exception message that could quote a value."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_no_fragment_of, new_canary
from mcp_secrets import logs

LOG_BOTH = """
import logging, sys
from mcp_secrets.logs import configure_logging

configure_logging("DEBUG")
canary = sys.argv[1]
try:
    raise ValueError(f"input_value={canary!r}")  # as pydantic quotes what it failed to parse
except ValueError:
    logging.getLogger("mcp.client.stdio").exception("Failed to parse JSONRPC message from server")
try:
    raise KeyError("record github/TOKEN")
except KeyError:
    logging.getLogger("mcp_secrets.usage").exception("uses of secrets dropped")
"""


def run_script(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` from a file, as a library's module logs from one (the log reads its source)."""
    path = tmp_path / "logging_script.py"
    path.write_text(script, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=60, check=True
    )


def test_a_library_exception_is_logged_by_its_type_and_frames_never_its_message(tmp_path: Path) -> None:
    canary = new_canary()

    done = run_script(LOG_BOTH, tmp_path, canary)

    assert done.stdout == ""  # stdout belongs to the stdio protocol
    assert_no_fragment_of(canary, done.stderr)
    assert "ERROR mcp.client.stdio: Failed to parse JSONRPC message from server" in done.stderr
    assert f'File "{tmp_path / "logging_script.py"}", line 8, in <module>' in done.stderr
    assert "builtins.ValueError: (message not logged: it may quote data)" in done.stderr


def test_our_own_exceptions_keep_their_messages_which_name_records_never_values(tmp_path: Path) -> None:
    done = run_script(LOG_BOTH, tmp_path, new_canary())

    assert "ERROR mcp_secrets.usage: uses of secrets dropped" in done.stderr
    assert "KeyError: 'record github/TOKEN'" in done.stderr


def test_at_debug_the_http_libraries_that_log_headers_and_bodies_stay_at_info() -> None:
    script = (
        "import logging\n"
        "from mcp_secrets.logs import configure_logging\n"
        "configure_logging('DEBUG')\n"
        "for name in ('httpcore2', 'httpcore2.http11', 'mcp.client.streamable_http', 'uvicorn.error'):\n"
        "    print(name, logging.getLevelName(logging.getLogger(name).getEffectiveLevel()))\n"
        "print('httpx2', logging.getLevelName(logging.getLogger('httpx2').getEffectiveLevel()))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.split() == [
        "httpcore2", "INFO", "httpcore2.http11", "INFO", "mcp.client.streamable_http", "ERROR",
        "uvicorn.error", "INFO", "httpx2", "WARNING",
    ]  # fmt: skip


HANG_UP = """
import logging, sys
from starlette.requests import ClientDisconnect
from mcp_secrets.logs import configure_logging

configure_logging(sys.argv[1])
log = logging.getLogger("mcp.server.streamable_http")
for fault in (ClientDisconnect(), ConnectionResetError()):
    try:
        raise fault
    except Exception:
        log.exception("Error handling POST request")
"""


def test_a_client_hang_up_the_sdk_logs_as_an_error_is_one_info_line_and_other_errors_stay_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HANG_UP, "INFO"], capture_output=True, text=True, timeout=60, check=True
    )

    lines = [line.split(" ", 1)[1] for line in done.stderr.splitlines() if line.startswith("20")]
    assert lines == [
        "INFO mcp.server.streamable_http: a client went away before its request body was read",
        "ERROR mcp.server.streamable_http: Error handling POST request",
    ]
    assert done.stderr.count("Traceback") == 1
    assert "builtins.ConnectionResetError" in done.stderr


def test_a_client_hang_up_is_not_logged_at_all_above_info() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HANG_UP, "WARNING"], capture_output=True, text=True, timeout=60, check=True
    )

    assert "went away" not in done.stderr
    assert "ERROR mcp.server.streamable_http: Error handling POST request" in done.stderr
    assert "builtins.ConnectionResetError" in done.stderr


# A server whose descriptors run out: asyncio's accept() fails for each connection waiting, and logs each.
ACCEPT_FAILURES = """
import asyncio, logging, os, resource, sys
from mcp_secrets.logs import configure_logging

configure_logging("INFO")


async def main() -> None:
    held = []
    server = await asyncio.start_server(lambda _, writer: held.append(writer), "127.0.0.1", 0, backlog=64)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))  # asyncio tries to accept again each second meanwhile
    print(len(held), flush=True)


asyncio.run(main())
"""


def test_a_failed_accept_for_want_of_descriptors_is_one_line_not_one_traceback_per_connection() -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", ACCEPT_FAILURES, "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    with contextlib.ExitStack() as connections:
        for _ in range(40):
            connections.enter_context(socket.create_connection(("127.0.0.1", port)))
        stdout, stderr = server.communicate(timeout=60)

    assert int(stdout) < 40  # the descriptors did run out
    lines = [line.split(" ", 1)[1] for line in stderr.splitlines() if line.startswith("20")]
    failed = "new connections wait: accept() failed (Too many open files); logged at most once a minute"
    assert lines == [f"ERROR asyncio: {failed}"]
    assert "Traceback" not in stderr


# As the SDK's client side logs what a downstream server sent (mcp/client/session.py, streamable_http.py,
# sse.py): the gateway's connections run on it, and a downstream holds its user's secrets.
DOWNSTREAM_TEXT = """
import logging, sys
from mcp_secrets.logs import configure_logging

configure_logging(sys.argv[2])
canary = sys.argv[1]
logging.getLogger("client").warning(
    "dropping tool %r: invalid x-mcp-header (%s)", "leak", f"x-mcp-header 'bad {canary}' is not a token"
)
logging.getLogger("client").debug("dropped %r: not defined at %s", f"notifications/{canary}", "2026-07-28")
content_type, location = f"text/plain; token={canary}", f"https://api.example.com/{canary}/mcp"
logging.getLogger("mcp.client.streamable_http").error(f"Unexpected content type: {content_type}")
logging.getLogger("mcp.client.streamable_http").error(f"Redirect to {location} not followed: use that URL")
logging.getLogger("mcp.client.sse").error(f"Endpoint origin does not match connection origin: {location}")
logging.getLogger("mcp.client.stdio").warning(
    "MCP server process %d is still alive after the kill escalation; abandoning it", 4242
)
logging.getLogger("client").warning(f"Tool {canary} not listed by server, cannot validate its output")
logging.getLogger("client").warning(f"{canary} was not listed")
logging.getLogger("client").warning("dropped %(method)s", {"method": f"notifications/{canary}"})
logging.getLogger("client").warning("Unexpected message: %s", {f"k{canary}": 1})
try:
    raise ValueError(canary)
except ValueError:
    logging.getLogger("mcp.client.stdio").exception("Failed to parse JSONRPC message from server")
"""


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_what_a_downstream_sent_is_withheld_from_the_sdk_client_sides_log_lines(
    tmp_path: Path, level: str
) -> None:
    canary = new_canary()

    done = run_script(DOWNSTREAM_TEXT, tmp_path, canary, level)

    assert_no_fragment_of(canary, done.stderr)
    lines = [line.split(" ", 1)[1] for line in done.stderr.splitlines() if line[:4].isdigit()]
    assert lines == [
        "WARNING client: dropping tool '…': invalid x-mcp-header (…)",
        "ERROR mcp.client.streamable_http: Unexpected content type: …",
        "ERROR mcp.client.streamable_http: Redirect to …",
        "ERROR mcp.client.sse: Endpoint origin does not match connection origin: …",
        (
            "WARNING mcp.client.stdio: MCP server process 4242 is still alive after the kill escalation; "
            "abandoning it"
        ),
        "WARNING client: Tool …",
        "WARNING client: …",
        "WARNING client: dropped …",
        "WARNING client: Unexpected message: …",
        # A constant of its module's source, kept; its frames and the exception's type follow.
        "ERROR mcp.client.stdio: Failed to parse JSONRPC message from server",
    ]
    assert "Logging error" not in done.stderr


# A run of separators, then the entry path: a match may start at the run's first slash, never inside it.
SEPARATOR_RUNS = ["/", "%2F", "%2f", "/.", "/%2e", "%2f.", "%2F%2E"]


@pytest.mark.parametrize("run", SEPARATOR_RUNS)
def test_an_entry_path_is_matched_from_the_start_of_its_run_of_slashes_only(run: str) -> None:
    """Tried at every slash of a run, each try read the rest of it: a path of 15,000 slashes, which
    anyone can send, held the event loop for 16 s. Matched from a run's start only, it reads it once."""
    separators = run * 50 + "/"
    text = f"GET {separators}secrets/entry/TOKEN HTTP/1.1"
    start = len("GET ")

    found = logs._ENTRY_TOKEN.search(text)

    assert found is not None
    assert found.start() == start
    assert logs._redacted(text) == f"GET {separators}secrets/entry/… HTTP/1.1"
    inside = [pos for pos in range(start + 1, start + len(separators)) if logs._ENTRY_TOKEN.match(text, pos)]
    assert inside == []


def test_a_jwt_is_matched_from_the_start_of_its_run_of_token_characters_only() -> None:
    """As an entry path's slashes: tried at each "eyJ" of a long run, each try read the rest of it."""
    text = "GET /mcp?access_token=" + "eyJ" * 50 + ".payload.signature HTTP/1.1"
    start = text.index("eyJ")

    assert logs._redacted(text) == "GET /mcp?access_token=… HTTP/1.1"
    inside = [pos for pos in range(start + 1, text.index(" HTTP")) if logs._JWT.match(text, pos)]
    assert inside == []


@pytest.mark.parametrize(
    "url",
    [
        "/mcp?access_token={jwt}",
        "/mcp?authorization=Bearer%20{jwt}",  # after the escape of a character no token holds
        "/cb?next=%2Fmcp%3Faccess_token%3D{jwt}",
        "/mcp?access_token={escaped}",  # its dots as %2E
    ],
)
def test_a_jwt_in_a_url_is_kept_out_of_the_log_after_a_separator_or_its_escape(url: str) -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYXJvbCJ9.c2lnbmF0dXJl"
    text = "GET " + url.format(jwt=jwt, escaped=jwt.replace(".", "%2E")) + " HTTP/1.1"

    shown = logs._redacted(text)

    assert "c2lnbmF0dXJl" not in shown
    assert shown.endswith("… HTTP/1.1")


def test_say_without_a_stderr_writes_nothing_to_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Started with stderr closed (2>&-), Python's stderr is None, and print() would fall back to stdout:
    # a script's output, or on stdio the MCP protocol's channel.
    monkeypatch.setattr(sys, "stderr", None)

    logs.say("mcp-secrets 0.1.0: serving stdio")

    assert capsys.readouterr().out == ""


class _Unwritable:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def write(self, _text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error

    def isatty(self) -> bool:
        raise self.error

    def fileno(self) -> int:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [BrokenPipeError(32, "Broken pipe"), OSError(28, "No space left on device"), ValueError("closed")],
)
def test_say_to_a_stderr_that_cannot_be_written_drops_the_message_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(sys, "stderr", _Unwritable(error))

    logs.say("a message for nobody")
    logs.say("\r[###] 1/2 records", end="")

    assert not logs.stderr_is_a_terminal()


LOG_AT_A_KNOWN_TIME = """
import logging
from mcp_secrets.logs import configure_logging

configure_logging("INFO")
record = logging.LogRecord("mcp_secrets.web", logging.INFO, __file__, 1, "listening", None, None)
record.created, record.msecs = 1_800_000_000.25, 250.0  # 2027-01-15 08:00:00.250 UTC
print(logging.getLogger().handlers[0].format(record))
"""


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
def test_log_lines_carry_their_time_in_utc_whatever_the_machines_time_zone(zone: str, tmp_path: Path) -> None:
    # In local time, a line would say nothing of its zone, and the hour a daylight saving change repeats
    # would repeat in the log.
    path = tmp_path / "logging_script.py"
    path.write_text(LOG_AT_A_KNOWN_TIME, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "TZ": zone}

    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=True, env=env
    )

    assert done.stdout == "2027-01-15T08:00:00.250Z INFO mcp_secrets.web: listening\n"
