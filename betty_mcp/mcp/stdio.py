"""Stdio for the MCP server, read and written on the event loop.

The SDK's ``stdio_server`` wraps stdin/stdout in anyio's thread-backed files: every line read and
every write is a hop to a worker thread, about a millisecond per call. When stdin and stdout are
pipes or sockets (as hosts spawn servers), ``claim_stdio`` serves them with non-blocking reads
and writes on the loop instead. Like the SDK, it moves fd 0 to the null device and fd 1 to
stderr while serving, so stray output can never corrupt the protocol stream, and puts them back
afterwards. Anything else (a terminal, a regular file) gets the SDK's own streams.

    with claim_stdio() as streams:
        async with stdio_server(*streams) as (read, write): ...
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
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

    def __init__(self, fd: int, max_line: int = MAX_LINE_BYTES) -> None:
        self.fd = fd
        self.max_line = max_line
        self._buffer = bytearray()
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


class Writer:
    """``await write(text)`` then ``await flush()`` on a non-blocking file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = bytearray()

    async def write(self, text: str) -> None:
        self._pending += text.encode("utf-8")

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


@contextmanager
def claim_stdio() -> Iterator[tuple[Any, Any]]:
    """Yield (stdin, stdout) streams for ``stdio_server``: loop-native, or (None, None) for the SDK's."""
    if not (_pollable(0) and _pollable(1)):
        yield None, None
        return
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    for fd in (wire_in, wire_out):
        os.set_blocking(fd, False)
    try:
        yield LineReader(wire_in), Writer(wire_out)
    finally:
        for fd, std in ((wire_in, 0), (wire_out, 1)):
            os.set_blocking(fd, True)
            os.dup2(fd, std)
            os.close(fd)
