"""The server's log: stderr only, and no library exception message that could quote a value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import assert_no_fragment_of, new_canary

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


def run_logging(canary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOG_BOTH, canary], capture_output=True, text=True, timeout=60, check=True
    )


def test_a_library_exception_is_logged_by_its_type_and_frames_never_its_message() -> None:
    canary = new_canary()

    done = run_logging(canary)

    assert done.stdout == ""  # stdout belongs to the stdio protocol
    assert_no_fragment_of(canary, done.stderr)
    assert "ERROR mcp.client.stdio: Failed to parse JSONRPC message from server" in done.stderr
    assert 'File "<string>", line 8, in <module>' in done.stderr
    assert "builtins.ValueError: (message not logged: it may quote data)" in done.stderr


def test_our_own_exceptions_keep_their_messages_which_name_records_never_values() -> None:
    done = run_logging(new_canary())

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

    lines = [line.split(" ", 2)[2] for line in done.stderr.splitlines() if line.startswith("20")]
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
logging.getLogger("mcp.client.streamable_http").error(f"Unexpected content type: text/plain; token={canary}")
logging.getLogger("mcp.client.sse").error(f"Endpoint origin does not match connection origin: /{canary}")
logging.getLogger("mcp.client.stdio").warning(
    "MCP server process %d is still alive after the kill escalation; abandoning it", 4242
)
try:
    raise ValueError(canary)
except ValueError:
    logging.getLogger("mcp.client.stdio").exception("Failed to parse JSONRPC message from server")
"""


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_what_a_downstream_sent_is_withheld_from_the_sdk_client_sides_log_lines(level: str) -> None:
    canary = new_canary()

    done = subprocess.run(
        [sys.executable, "-c", DOWNSTREAM_TEXT, canary, level],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert_no_fragment_of(canary, done.stderr)
    lines = [line.split(" ", 2)[2] for line in done.stderr.splitlines() if line[:4].isdigit()]
    assert lines == [
        "WARNING client: dropping tool '…': invalid x-mcp-header (…)",
        "ERROR mcp.client.streamable_http: Unexpected content type: …",
        "ERROR mcp.client.sse: Endpoint origin does not match connection origin: …",
        (
            "WARNING mcp.client.stdio: MCP server process 4242 is still alive after the kill escalation; "
            "abandoning it"
        ),
        "ERROR mcp.client.stdio: Failed to parse JSONRPC message from server",
    ]
