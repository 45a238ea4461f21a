"""The SDK's stdio client transport, reading no message of a downstream server past a bound.

The SDK's ``stdio_client`` keeps a line of the server's stdout whole however long it grows, copying
it at each read: a downstream that prints without end, or answers with one huge message, fills the
gateway's memory and holds its event loop, for every user. Here a line is read up to
``MAX_MESSAGE_BYTES``; at a longer one the connection ends, as if the downstream had closed its
stdout. Spawning, parsing and shutdown are the SDK's own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TextIO

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client._transport import TransportStreams
from mcp.client.stdio import (
    _WRITER_FLUSH_TIMEOUT,
    StdioServerParameters,
    _aclose_all,
    _create_platform_compatible_process,
    _drain_stdout,
    _get_executable_command,
    _parse_line,
    _stop_server_process,
    get_default_environment,
)
from mcp.os.win32.utilities import ServerProcess
from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

# A message of a downstream server, read at most: four times what the SDK takes as an HTTP request body,
# for a tool's image or file; a connection may hold one such line at a time.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


async def _lines(stdout: ByteReceiveStream) -> AsyncIterator[bytes | None]:
    """Each line of ``stdout`` without its end; None, and no more, for one over ``MAX_MESSAGE_BYTES``.

    What follows the last line end is dropped at the end of the stream, as the SDK does.
    """
    pending: list[bytes] = []
    size = 0
    async for chunk in stdout:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if size + end - start > MAX_MESSAGE_BYTES:
                yield None
                return
            yield b"".join([*pending, chunk[start:end]])
            pending.clear()
            size = 0
            start = end + 1
        size += len(chunk) - start
        if size > MAX_MESSAGE_BYTES:
            yield None
            return
        if start < len(chunk):
            pending.append(chunk[start:])


async def _relay_stdout(
    process: ServerProcess,
    reader: MemoryObjectSendStream[SessionMessage | Exception],
    server: StdioServerParameters,
    name: str,
    shutting_down: Callable[[], bool],
    *,
    over_bound: Callable[[], None],
) -> None:
    """The SDK's reader of the server's stdout, a line at a time, up to the bound."""
    assert process.stdout, "Opened process is missing stdout"  # noqa: S101 - as in the SDK
    try:
        async with reader:
            try:
                async for line in _lines(process.stdout):
                    if line is None:
                        # Nothing of the message: it may hold an injected value.
                        logger.warning(
                            "downstream server %s sent a message over %d bytes: its connection is closed",
                            name,
                            MAX_MESSAGE_BYTES,
                        )
                        over_bound()
                        # Ended now, not after the drain below: the session is to see it before the
                        # downstream stops writing.
                        await reader.aclose()
                        return
                    text = line.decode(server.encoding, server.encoding_error_handler)
                    try:
                        await reader.send(_parse_line(text))
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return  # the session is gone; only the drain below remains
            finally:
                await _drain_stdout(process)
    except anyio.ClosedResourceError:
        pass  # our own shutdown closed the stdout stream under the read
    except (anyio.BrokenResourceError, ConnectionError):
        if not shutting_down():
            logger.exception("Reading from the MCP server's stdout failed mid-session")


async def _relay_stdin(
    process: ServerProcess,
    writer: MemoryObjectReceiveStream[SessionMessage],
    reader: MemoryObjectSendStream[SessionMessage | Exception],
    server: StdioServerParameters,
    done: anyio.Event,
) -> None:
    """The SDK's writer of the server's stdin."""
    assert process.stdin, "Opened process is missing stdin"  # noqa: S101 - as in the SDK
    try:
        async with writer:
            async for session_message in writer:
                json = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send(
                    (json + "\n").encode(encoding=server.encoding, errors=server.encoding_error_handler)
                )
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        # The server may still be alive: the session is to see the connection end, not wait.
        await reader.aclose()
    finally:
        done.set()


@asynccontextmanager
async def stdio_client(
    server: StdioServerParameters,
    errlog: TextIO,
    *,
    name: str,
    over_bound: Callable[[], None] = lambda: None,
) -> AsyncGenerator[TransportStreams, None]:
    """The SDK's ``stdio_client``, ending the connection at a message over the bound; ``name`` names it.

    ``over_bound`` is called then, before the connection ends: a call that fails on it can say why.
    """
    command = await _get_executable_command(server.command)
    process = await _create_platform_compatible_process(
        command=command,
        args=server.args,
        env=get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )

    # As in the SDK: no awaits until the task group is entered, or a cancellation would leak the process.
    read_stream_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_stream_reader = anyio.create_memory_object_stream[SessionMessage](0)

    shutting_down = False
    writer_done = anyio.Event()

    async def shutdown() -> None:
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT) as flush_scope:
            await writer_done.wait()
        if flush_scope.cancelled_caught:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        await _stop_server_process(process)
        await _aclose_all(read_stream, write_stream, read_stream_writer, write_stream_reader)
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        relay_stdout = functools.partial(_relay_stdout, over_bound=over_bound)
        tg.start_soon(relay_stdout, process, read_stream_writer, server, name, lambda: shutting_down)
        tg.start_soon(_relay_stdin, process, write_stream_reader, read_stream_writer, server, writer_done)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            # Every wait of the shutdown is bounded; shielded, so that no process outlives a cancelled caller.
            with anyio.CancelScope(shield=True):
                await shutdown()
            tg.cancel_scope.cancel()
    await anyio.lowlevel.cancel_shielded_checkpoint()
