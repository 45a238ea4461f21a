"""A stand-in for a MongoDB server on a local port: pymongo's own client talks to it over the wire protocol.

It answers the handshake as a standalone server (or with ``hello``: ``MONGOS_HELLO`` for a sharded
cluster's router, ``PRIMARY_HELLO`` for a replica set's primary reached with ``directConnection=true``)
and every other command with what ``answer`` returns, so a test can give pymongo the server's real error
replies (a refused login, a missing privilege, a write concern not met), or none: ``DROP`` closes the
connection instead, as a server that fails, or a network that breaks, once a command has reached it.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import bson

Document = dict[str, Any]
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
HELLO: Document = {
    "ok": 1,
    "isWritablePrimary": True,
    "ismaster": True,
    "maxWireVersion": 21,
    "minWireVersion": 0,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000,
    "maxWriteBatchSize": 100_000,
    "saslSupportedMechs": ["SCRAM-SHA-256"],
}
MONGOS_HELLO: Document = {**HELLO, "msg": "isdbgrid"}  # how a mongos says what it is
PRIMARY_HELLO: Document = {**HELLO, "setName": "rs0"}  # a member of a replica set, writable: its primary
# The ``writeConcernError`` of a write the server made but could not have replicated as asked (``w``) within
# ``wtimeoutMS``.
WTIMEOUT: Document = {
    "code": 64,
    "codeName": "WriteConcernFailed",
    "errmsg": "waiting for replication timed out",
    "errInfo": {"wtimeout": True},
}
# What ``answer`` returns for a command it leaves unanswered: its connection is closed.
DROP: Document = {}


def _first_document(data: bytes) -> Document:
    return bson.decode(data[: struct.unpack("<i", data[:4])[0]])


def _command(body: bytes) -> Document:
    """An OP_MSG's command, with the documents of its sections of kind 1 (an insert's) under their names."""
    command = _first_document(body[5:])
    at = 5 + struct.unpack("<i", body[5:9])[0]
    while at < len(body) and body[at] == 1:  # kind 1: size, a name, then documents to the section's end
        end = at + 1 + struct.unpack("<i", body[at + 1 : at + 5])[0]
        name_end = body.index(b"\0", at + 5)
        name = body[at + 5 : name_end].decode()
        documents, at = [], name_end + 1
        while at < end:
            documents.append(_first_document(body[at:end]))
            at += struct.unpack("<i", body[at : at + 4])[0]
        command[name] = documents
    return command


def _serve_connection(
    connection: socket.socket, answer: Callable[[Document], Document], hello: Document
) -> None:
    with connection:
        while True:
            header = connection.recv(16, socket.MSG_WAITALL)
            if len(header) < 16:
                return
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            body = connection.recv(length - 16, socket.MSG_WAITALL)
            if opcode == OP_QUERY:  # the handshake: flags, collection name, skip and limit, then the command
                after_name = body.index(b"\0", 4) + 1 + 8
                answered = _reply(_first_document(body[after_name:]), answer, hello)
                prefix, opcode = struct.pack("<iqii", 0, 0, 0, 1), OP_REPLY
            elif opcode == OP_MSG:  # flags, then a section of kind 0: the command
                answered = _reply(_command(body), answer, hello)
                prefix = struct.pack("<IB", 0, 0)
            else:
                return
            if answered is DROP:
                return
            reply = prefix + bson.encode(answered)
            connection.sendall(struct.pack("<iiii", 16 + len(reply), 0, request_id, opcode) + reply)


def _reply(command: Document, answer: Callable[[Document], Document], hello: Document) -> Document:
    name = next(iter(command)).lower()
    return hello if name in {"hello", "ismaster"} else answer(command)


@contextmanager
def mongo_wire_server(answer: Callable[[Document], Document], hello: Document = HELLO) -> Iterator[int]:
    """Serve on a free port, answering each command after the handshake with ``answer``; yield the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=_serve_connection, args=(connection, answer, hello), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
        listener.close()
        thread.join()


def server_holding(documents: dict[str, list[Document]]) -> Callable[[Document], Document]:
    """A server whose collections hold ``documents``: a find answers those equal to its filter's strings."""

    def answer(command: Document) -> Document:
        name, collection = next(iter(command.items()))
        if name in {"find", "listIndexes"}:
            wanted = {
                field: value for field, value in command.get("filter", {}).items() if isinstance(value, str)
            }
            held = documents.get(collection, []) if name == "find" else []
            batch = [document for document in held if all(document.get(f) == v for f, v in wanted.items())]
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        return {"ok": 1, "n": 0}

    return answer


# The commands that change a collection: a server that has received one may have made it.
WRITES = frozenset({"insert", "update", "delete", "findAndModify"})


def server_losing_writes(
    received: list[str], documents: dict[str, list[Document]] | None = None
) -> Callable[[Document], Document]:
    """A server that receives each write (``received`` names it: "insert api_tokens") and loses its connection
    before it answers, as one that fails or a network that breaks then; it answers reads as
    ``server_holding(documents)``."""
    holding = server_holding(documents or {})

    def answer(command: Document) -> Document:
        name, collection = next(iter(command.items()))
        if name in WRITES:
            received.append(f"{name} {collection}")
            return DROP
        return holding(command)

    return answer


def duplicate_key(collection: str, index: str, key_value: Document) -> Document:
    """The error of a write a unique index refuses, as MongoDB 6 and 7 send it: the index's keys, and the
    duplicate values both in ``keyValue`` and in its message."""
    shown = ", ".join(f'{field}: "{value}"' for field, value in key_value.items())
    return {
        "code": 11000,
        "errmsg": f"E11000 duplicate key error collection: db.{collection} index: {index} "
        f"dup key: {{ {shown} }}",
        "keyPattern": dict.fromkeys(key_value, 1),
        "keyValue": key_value,
    }


def server_refusing_duplicates(
    refused: str, error: Document, documents: dict[str, list[Document]] | None = None
) -> Callable[[Document], Document]:
    """A server that refuses each write ``refused`` names ("insert audit_events") with ``error``, as a unique
    index of its collection does, and makes every other; it answers reads as ``server_holding(documents)``."""
    holding = server_holding(documents or {})

    def answer(command: Document) -> Document:
        name, collection = next(iter(command.items()))
        if f"{name} {collection}" != refused:
            return {"ok": 1, "n": 1, "nModified": 1} if name in WRITES else holding(command)
        if name == "findAndModify":  # a command's error, not a write error
            return {"ok": 0, "codeName": "DuplicateKey", **error}
        # An ordered write stops at its first error; an unordered one has every document refused.
        refusals = len(command.get("documents", [None])) if command.get("ordered") is False else 1
        counts = {"n": 0, "nModified": 0} if name == "update" else {"n": 0}
        return {"ok": 1, **counts, "writeErrors": [{"index": at, **error} for at in range(refusals)]}

    return answer
