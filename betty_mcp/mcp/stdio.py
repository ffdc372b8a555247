"""Stdio for the MCP server, read and written on the event loop.

The SDK's ``stdio_server`` wraps stdin/stdout in anyio's thread-backed files: every line read and
every write is a hop to a worker thread, about a millisecond per call. When stdin and stdout are
pipes or sockets (as hosts spawn servers), ``claim_stdio`` serves them with non-blocking reads
and writes on the loop instead. Like the SDK, it moves fd 0 to the null device and fd 1 to
stderr while serving, so stray output can never corrupt the protocol stream, and puts them back
afterwards. Anything else (a terminal, a regular file) gets the SDK's own streams.

Before any of that, ``answer_initialize_early`` answers the host's ``initialize`` without waiting
for the SDK to load (see ``handshake``); ``claim_stdio`` then replays that request to the SDK and
drops the SDK's answer to it.

    early = answer_initialize_early()
    with claim_stdio(early) as streams:
        async with stdio_server(*streams) as (read, write): ...
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio

CHUNK = 65536
MAX_LINE_BYTES = 64 * 1024 * 1024
OVERSIZED = "(a message over the size limit was dropped)\n"


class LineReader:
    """``async for line in reader``: the lines of a non-blocking file descriptor, decoded as UTF-8.

    Linear in the input (each byte is searched for a newline once), and bounded: a line longer than
    ``max_line`` bytes is dropped whole and replaced by a line that is not JSON, which the SDK
    rejects like any malformed message, so the server never holds more than ``max_line`` of it.
    """

    def __init__(self, fd: int, max_line: int = MAX_LINE_BYTES, already_read: bytes = b"") -> None:
        self.fd = fd
        self.max_line = max_line
        self._buffer = bytearray(already_read)
        self._scanned = 0  # bytes of the buffer already searched for a newline
        self._dropping = False  # inside an oversized line: discard up to its newline

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                if self._dropping:
                    self._dropping = False
                    return OVERSIZED
                return line.decode("utf-8", errors="replace") + "\n"
            if self._dropping or len(self._buffer) > self.max_line:
                self._dropping = True  # keep nothing of this line: only look for its end
                self._buffer.clear()
            self._scanned = len(self._buffer)
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                if self._dropping:
                    self._dropping = False
                    return OVERSIZED
                if not self._buffer:
                    raise StopAsyncIteration
                line = bytes(self._buffer)
                self._buffer.clear()
                return line.decode("utf-8", errors="replace")
            self._buffer += chunk


class Gate:
    """``async for line in gate``: the reader's lines that are JSON-RPC messages; the others answered here.

    The SDK drops a line it cannot validate, and a client that sent it with an id would wait forever.
    Such a line gets an error response with its id (-32700 for no JSON, -32600 otherwise), a request
    whose id is neither a string nor an integer one with id null, and a batch (not part of MCP) one.
    """

    def __init__(self, reader: LineReader, writer: Writer) -> None:
        self.reader = reader
        self.writer = writer

    def __aiter__(self) -> Gate:
        return self

    async def __anext__(self) -> str:
        async for line in self.reader:
            refusal = _refusal(line)
            if refusal is None:
                return line
            await self.writer.write(json.dumps(refusal) + "\n")
            await self.writer.flush()
        raise StopAsyncIteration


def _refusal(line: str) -> dict[str, Any] | None:
    """The error response a line deserves instead of being served, or None for a message to serve."""
    from mcp_types import jsonrpc_message_adapter

    try:
        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
    except Exception as exc:
        return _error_for(line, exc)
    if getattr(message, "method", None) is not None and _has_bad_id(line):
        return _error(None, -32600, "Invalid Request: an id must be a string or an integer")
    return None


def _has_bad_id(line: str) -> bool:
    if '"id"' not in line:  # a notification: no id to check (the common case costs nothing more)
        return False
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return False
    request_id = data.get("id") if isinstance(data, dict) else None
    return "id" in data and (isinstance(request_id, bool) or not isinstance(request_id, str | int))


def _error_for(line: str, exc: Exception) -> dict[str, Any] | None:
    if not line.strip():
        return None  # a blank line: nothing was asked
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return _error(None, -32700, "Parse error: not a JSON document (or nested too deeply)")
    if isinstance(data, list):
        return _error(None, -32600, "Invalid Request: batches are not supported; send one message a line")
    request_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        request_id = None
    first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return _error(request_id, -32600, f"Invalid Request: {first}")


def _error(request_id: str | int | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class Writer:
    """``await write(text)`` then ``await flush()`` on a non-blocking file descriptor.

    With ``answered`` set, the SDK's response to that request id is dropped: it was answered early.
    """

    def __init__(self, fd: int, answered: str | int | None = None) -> None:
        self.fd = fd
        self._pending = bytearray()
        self._answered = answered

    async def write(self, text: str) -> None:
        if self._answered is not None and self._is_answer_to_early(text):
            self._answered = None
            return
        self._pending += text.encode("utf-8")

    def _is_answer_to_early(self, text: str) -> bool:
        try:
            message = json.loads(text)
        except ValueError:
            return False
        return isinstance(message, dict) and message.get("id") == self._answered and "method" not in message

    async def flush(self) -> None:
        while self._pending:
            try:
                written = os.write(self.fd, self._pending)
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
                continue
            del self._pending[:written]


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@dataclass(frozen=True)
class EarlyStart:
    """What ``answer_initialize_early`` read from stdin, and the id of the request it answered (if any)."""

    read: bytes = b""
    answered: str | int | None = None


EARLY_READ_LIMIT = 1024 * 1024  # an initialize request is a few hundred bytes


def answer_initialize_early() -> EarlyStart:
    """Over pipes, read the first message and answer it now if it is ``initialize`` (blocking I/O,
    before the event loop starts). Everything read is handed on, through ``claim_stdio``."""
    if not (_pollable(0) and _pollable(1)):
        return EarlyStart()
    read = bytearray()
    while b"\n" not in read and len(read) < EARLY_READ_LIMIT:
        chunk = os.read(0, CHUNK)
        if not chunk:
            return EarlyStart(bytes(read))
        read += chunk
    line = read.split(b"\n", 1)[0]
    from betty_mcp.mcp.handshake import early_answer

    answer = early_answer(bytes(line)) if b"\n" in read else None
    if answer is None:
        return EarlyStart(bytes(read))
    request_id, response = answer
    view = memoryview(response)
    while view:
        view = view[os.write(1, view) :]
    return EarlyStart(bytes(read), request_id)


@contextmanager
def claim_stdio(early: EarlyStart | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield (stdin, stdout) streams for ``stdio_server``: loop-native, or (None, None) for the SDK's."""
    if not (_pollable(0) and _pollable(1)):
        yield None, None
        return
    early = early or EarlyStart()
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    for fd in (wire_in, wire_out):
        os.set_blocking(fd, False)
    writer = Writer(wire_out, answered=early.answered)
    try:
        yield Gate(LineReader(wire_in, already_read=early.read), writer), writer
    finally:
        for fd, std in ((wire_in, 0), (wire_out, 1)):
            os.set_blocking(fd, True)
            os.dup2(fd, std)
            os.close(fd)
