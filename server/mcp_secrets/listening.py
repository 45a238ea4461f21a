"""The sockets ``serve`` listens on over HTTP, taken before the start makes anything it shows only once.

Bound as uvicorn binds them when it is given a host and a port (asyncio's ``create_server``): one socket
for each address the host name has, IPv6 ones for IPv6 alone, and on POSIX the address reused at once
after a restart. One difference: among a name's several addresses, one this machine lacks (``localhost``'s
``::1`` without IPv6) is skipped, where asyncio failed the whole start.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Sockets bound to ``host`` (a name or an address; empty for every interface) at ``port``, listening.

    Listening, not only bound: on Linux two sockets that both ask to reuse the address may be bound to
    the same port as long as neither listens, and the port is only held once one does.

    Raises:
        OSError: the host name did not resolve, or an address could not be bound (a port in use).
        UnicodeError: the host name cannot be encoded to be looked up (a label over 63 characters).

    """
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    infos = list(dict.fromkeys(found))  # the same address can come twice
    sockets: list[socket.socket] = []
    try:
        for info in infos:
            sock = _bound(info, several=len(infos) > 1)
            if sock is not None:
                sockets.append(sock)
                sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"no address of {host or 'this machine'} could be bound")
    return sockets


_AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _bound(info: _AddressInfo, *, several: bool) -> socket.socket | None:
    """A socket bound to the address of ``info``; None for one this machine lacks, among ``several``."""
    family, kind, proto, _, address = info
    try:
        sock = socket.socket(family, kind, proto)
    except OSError:  # a family this machine has no support for
        return None
    try:
        if os.name == "posix" and sys.platform != "cygwin":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            # Linux lets an IPv6 socket take IPv4 too: the IPv4 address, if any, has a socket of its own.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if several and exc.errno == errno.EADDRNOTAVAIL:  # localhost's ::1 on a machine without IPv6
            return None
        where = f" on {address[0]}" if several else ""  # which of the host name's addresses
        raise OSError(exc.errno, f"{exc.strerror or exc}{where}") from None
    return sock


def named(sockets: list[socket.socket]) -> str:
    """The addresses of ``sockets``, as a person reads them: ``127.0.0.1 port 8000 and ::1 port 8000``."""
    return " and ".join("{} port {}".format(*sock.getsockname()[:2]) for sock in sockets)
