"""The sockets ``serve`` takes before it makes anything: bound as uvicorn would bind them, and held."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mcp_secrets.listening import listening_sockets, named

BACKLOG = 16


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")


@contextmanager
def taken(host: str, port: int = 0) -> Iterator[list[socket.socket]]:
    sockets = listening_sockets(host, port, BACKLOG)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_the_port_is_held_once_taken_even_from_a_socket_that_asks_to_reuse_it() -> None:
    """Bound alone, it was not: two sockets that both reuse the address may share a port none listens on."""
    with taken("127.0.0.1") as (held,), socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as refused:
            other.bind(held.getsockname())

    assert refused.value.errno == errno.EADDRINUSE


def test_a_port_in_use_is_refused_as_in_use() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        with pytest.raises(OSError) as refused, taken("127.0.0.1", port):
            pass

    assert refused.value.errno == errno.EADDRINUSE


def test_a_host_name_not_found_is_an_os_error() -> None:
    with pytest.raises(OSError), taken("no-such-host.invalid"):
        pass


@needs_ipv6
def test_an_ipv6_address_is_served_on_ipv6_alone() -> None:
    """As uvicorn binds it: IPv4 at the same port is left to a socket of its own, or to others."""
    with taken("::") as (held,), socket.socket() as ipv4:
        ipv4.bind(("0.0.0.0", held.getsockname()[1]))  # noqa: S104 - beside the wildcard IPv6 socket

        assert held.family == socket.AF_INET6


@needs_ipv6
def test_every_interface_gets_a_socket_for_each_address_family() -> None:
    with taken("") as sockets:
        families = {sock.family for sock in sockets}
        said = named(sockets)

    assert families == {socket.AF_INET, socket.AF_INET6}
    assert "0.0.0.0 port " in said
    assert ":: port " in said


def test_the_addresses_are_named_as_a_person_reads_them() -> None:
    with taken("127.0.0.1") as sockets:
        port = sockets[0].getsockname()[1]

        assert named(sockets) == f"127.0.0.1 port {port}"
