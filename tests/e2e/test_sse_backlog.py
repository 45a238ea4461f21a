"""Against a real legacy-SSE ``serve``: the requests a user has waiting for their answers are bounded.

Each post is answered 202 at once and its answer waits for the stream: without a bound, a client that
stops reading its stream and goes on posting has the server hold every answer, as much memory as it
likes, until the stream is cut off.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx2
import pytest

from conftest import text_of
from e2e.conftest import INITIALIZE, Deployment, _module_server, create_token, legacy_sse_stream

pytestmark = pytest.mark.anyio

MOST_WAITING = 100  # the server's bound, per user
POSTS = 5000  # enough to fill any buffer between the server and a client that reads nothing
REFUSED = "too many requests of this user waiting for their answers (at most 100)"
WARNED = "refused requests of alice on legacy SSE: 100 of that user's are waiting for their answers"


@pytest.fixture(scope="module")
def sse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _module_server(tmp_path_factory, "sse", usernames=("alice", "bob", "carol", "dave", "erin"))


def _port(deployment: Deployment) -> int:
    assert deployment.base_url is not None
    return int(deployment.base_url.rsplit(":", 1)[1])


def _message(request_id: int | None, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = params
    return message


def _initialized(http: httpx2.Client, path: str, capabilities: dict[str, Any] | None = None) -> None:
    initialize = {**INITIALIZE, "params": {**INITIALIZE["params"], "capabilities": capabilities or {}}}
    assert http.post(path, json=initialize).status_code == 202
    assert http.post(path, json=_message(None, "notifications/initialized")).status_code == 202


def _posting(deployment: Deployment, username: str) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {deployment.token(username)}"}
    return httpx2.Client(base_url=deployment.base_url or "", headers=headers, trust_env=False, timeout=30)


def _drained(stream: socket.socket) -> threading.Thread:
    """Read ``stream`` to its end in a thread, as a client that reads its stream does."""

    def drain() -> None:
        stream.settimeout(None)
        try:
            while stream.recv(65536):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader


def test_requests_to_a_stream_nobody_reads_are_refused_past_the_bound_until_it_ends(sse: Deployment) -> None:
    with ExitStack() as held, _posting(sse, "alice") as http:
        stream, path = legacy_sse_stream(
            sse.token("alice"), "127.0.0.1", _port(sse), held, receive_buffer=4096
        )
        _initialized(http, path)
        answers = []
        for n in range(POSTS):
            answers.append(http.post(path, json=_message(10 + n, "tools/list")))
            if answers[-1].status_code == 429:
                break
        statuses = [answer.status_code for answer in answers]
        refused = answers[-1]
        still = {http.post(path, json=_message(POSTS + n, "tools/list")).status_code for n in range(20)}
        # The same user's other requests wait on that stream's answers: refused too, while it lasts.
        with _posting(sse, "alice") as elsewhere:
            _, other_path = legacy_sse_stream(sse.token("alice"), "127.0.0.1", _port(sse), held)
            other_initialize = elsewhere.post(other_path, json=INITIALIZE)
        # Another user is not held back.
        with _posting(sse, "bob") as bob:
            bob_stream, bob_path = legacy_sse_stream(sse.token("bob"), "127.0.0.1", _port(sse), held)
            _drained(bob_stream)
            _initialized(bob, bob_path)
            bob_statuses = {
                bob.post(bob_path, json=_message(10 + n, "tools/list")).status_code for n in range(300)
            }
        stream.close()  # its answers go with it
        after = _retried_until_accepted(http, sse, held)

    assert statuses[-1] == 429
    assert len(statuses) > MOST_WAITING  # at least as many were taken first
    assert still == {429}
    assert refused.text.startswith(REFUSED)
    assert other_initialize.status_code == 429
    assert bob_statuses == {202}
    assert after == 202
    assert sse.log().count(WARNED) == 1  # one warning a minute, not one per refusal


def test_cancelling_requests_to_a_stream_nobody_reads_does_not_lift_the_bound(sse: Deployment) -> None:
    # Answered before the cancel came, a request's answer still waits for the stream: a cancel then
    # frees nothing, and must not count the request off while the stream is not being read.
    with ExitStack() as held, _posting(sse, "carol") as http:
        _, path = legacy_sse_stream(sse.token("carol"), "127.0.0.1", _port(sse), held, receive_buffer=4096)
        _initialized(http, path)
        statuses = []
        for n in range(POSTS):
            statuses.append(http.post(path, json=_message(10 + n, "tools/list")).status_code)
            cancel = _message(None, "notifications/cancelled", {"requestId": 10 + n})
            assert http.post(path, json=cancel).status_code == 202  # a cancel always passes
            if statuses[-1] == 429:
                break

    assert statuses[-1] == 429


def _filled(http: httpx2.Client, path: str, first_id: int = 10) -> list[int]:
    """Post requests to an unread stream until the bound refuses one; the ids it took."""
    taken = []
    for n in range(POSTS):
        if http.post(path, json=_message(first_id + n, "tools/list")).status_code == 429:
            return taken
        taken.append(first_id + n)
    raise AssertionError("the bound never refused a request")


def _read_answers(stream: socket.socket, request_ids: list[int]) -> None:
    """Read ``stream`` until the answers to ``request_ids`` have gone by, with room to read them at speed.

    Through the 4 KiB receive buffer a stalled stream was given, its answers came 2 KB at a time, about
    200 ms apart (TCP's zero-window probes): a hundred answers would take about a minute.
    """
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    answers = {b'"id":%d,"result"' % request_id for request_id in request_ids}
    received = b""
    while not all(answer in received for answer in answers):
        chunk = stream.recv(65536)
        assert chunk, "the SSE stream ended before the answers it owed"
        received += chunk


def test_cancels_posted_with_another_token_of_the_same_user_change_nothing(sse: Deployment) -> None:
    # The SDK takes a session's posts from the credential that opened it only: another token of the same
    # user is answered 404, and its cancels must not count that session's requests off either, or they
    # could be posted without end while the SDK went on with every one.
    other = create_token(sse.env, "dave")
    capabilities = {"elicitation": {"url": {}}}  # request_secret then waits on the user
    with ExitStack() as held, _posting(sse, "dave") as http, _posting(sse, "dave") as elsewhere:
        elsewhere.headers["Authorization"] = f"Bearer {other}"
        stream, path = legacy_sse_stream(sse.token("dave"), "127.0.0.1", _port(sse), held)
        _drained(stream)
        _initialized(http, path, capabilities)
        calls = [
            _message(1000 + n, "tools/call", {"name": "request_secret", "arguments": _names(n)})
            for n in range(MOST_WAITING)
        ]
        taken = {http.post(path, json=call).status_code for call in calls}
        cancels = {
            elsewhere.post(
                path, json=_message(None, "notifications/cancelled", {"requestId": 1000 + n})
            ).status_code
            for n in range(MOST_WAITING)
        }
        after = http.post(path, json=_message(5000, "tools/list"))

    assert taken == {202}
    assert cancels == {404}
    assert after.status_code == 429


def test_a_second_request_with_the_id_of_one_waiting_is_refused(sse: Deployment) -> None:
    # The SDK would let it take the first one's place, and a cancel of that id stop only one of them.
    with ExitStack() as held, _posting(sse, "erin") as http:
        _, path = legacy_sse_stream(sse.token("erin"), "127.0.0.1", _port(sse), held)  # never read
        _initialized(http, path, {"elicitation": {"url": {}}})
        call = _message(7, "tools/call", {"name": "request_secret", "arguments": _names(7)})
        first, second = http.post(path, json=call), http.post(path, json=call)

    assert first.status_code == 202
    assert second.status_code == 409
    assert "each request needs an id of its own" in second.text


def test_requests_cancelled_while_the_stream_stalled_count_off_once_it_flows(sse: Deployment) -> None:
    # Cancelled in time, they are never answered: counted until the stream ends, a client that cancels
    # now and then as a large answer goes out would be refused at last, for as long as it stays.
    capabilities = {"elicitation": {"url": {}}}  # request_secret then waits on the user, until cancelled
    waiting = [
        _message(1000 + n, "tools/call", {"name": "request_secret", "arguments": _names(n)}) for n in range(3)
    ]
    with ExitStack() as held, _posting(sse, "alice") as http:
        stream, path = legacy_sse_stream(
            sse.token("alice"), "127.0.0.1", _port(sse), held, receive_buffer=4096
        )
        _initialized(http, path, capabilities)
        assert {http.post(path, json=call).status_code for call in waiting} == {202}
        taken = _filled(http, path, first_id=100)  # the stream stalls: nothing of it is read
        for call in waiting:
            cancel = _message(None, "notifications/cancelled", {"requestId": call["id"]})
            assert http.post(path, json=cancel).status_code == 202
        _read_answers(stream, taken)  # the stream flows again
        _drained(stream)
        time.sleep(6)  # for longer than the grace
        more = [
            _message(10_000 + n, "tools/call", {"name": "request_secret", "arguments": _names(100 + n)})
            for n in range(MOST_WAITING - 2)
        ]
        statuses = {http.post(path, json=call).status_code for call in more}

    assert statuses == {202}  # 98 waiting, not 101: the three cancelled no longer count


def _retried_until_accepted(http: httpx2.Client, deployment: Deployment, held: ExitStack) -> int:
    """A new stream's first request, once the server has seen the old stream go (it may take a moment)."""
    for _ in range(200):
        _, path = legacy_sse_stream(deployment.token("alice"), "127.0.0.1", _port(deployment), held)
        status = http.post(path, json=INITIALIZE).status_code
        if status != 429:
            return status
        time.sleep(0.05)
    return status


def test_answered_and_cancelled_requests_stop_counting(sse: Deployment) -> None:
    # Requests whose answers the client reads, then requests it cancels, which are never answered: each
    # more than the bound. Were either still counted, the last request would be refused.
    capabilities = {"elicitation": {"url": {}}}  # request_secret then waits on the user, until cancelled
    with ExitStack() as held, _posting(sse, "bob") as http:
        stream, path = legacy_sse_stream(sse.token("bob"), "127.0.0.1", _port(sse), held)
        _drained(stream)
        _initialized(http, path, capabilities)
        answered = {http.post(path, json=_message(10 + n, "tools/list")).status_code for n in range(150)}
        cancelled = set()
        for n in range(150):
            call = _message(1000 + n, "tools/call", {"name": "request_secret", "arguments": _names(n)})
            cancel = _message(None, "notifications/cancelled", {"requestId": 1000 + n})
            cancelled |= {http.post(path, json=call).status_code, http.post(path, json=cancel).status_code}
        last = http.post(path, json=_message(5000, "tools/list"))

    assert answered == {202}
    assert cancelled == {202}
    assert last.status_code == 202


def _names(n: int) -> dict[str, str]:
    return {"server": "backlog", "key": f"KEY_{n}"}


def test_a_request_the_sdk_refuses_is_not_counted(sse: Deployment) -> None:
    # A request the SDK answers 400 for its content type is never handled: nothing of it waits.
    plain = {"Content-Type": "text/plain"}
    with ExitStack() as held, _posting(sse, "bob") as http:
        stream, path = legacy_sse_stream(sse.token("bob"), "127.0.0.1", _port(sse), held)
        _drained(stream)
        _initialized(http, path)
        refused = {
            http.post(path, content=json.dumps(_message(10 + n, "tools/list")), headers=plain).status_code
            for n in range(150)
        }
        last = http.post(path, json=_message(5000, "tools/list"))

    assert refused == {400}
    assert last.status_code == 202


async def test_a_legacy_sse_client_works_as_before(sse: Deployment) -> None:
    async with sse.connect("alice") as client:
        for n in range(MOST_WAITING + 20):
            await client.call_tool("set_secret", {"server": "backlog", "key": f"K{n}", "value": "v"})
        listed = await client.call_tool("list_secret_keys", {"server": "backlog"})

    assert f"K{MOST_WAITING + 19}" in text_of(listed)
