"""The loop-native stdio reader: linear in its input, bounded per line."""

from __future__ import annotations

import os
import threading
import time

import anyio
import pytest

from betty_mcp.mcp.stdio import OVERSIZED, LineReader

pytestmark = pytest.mark.anyio


async def read_all(data: bytes, max_line: int) -> list[str]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        return [line async for line in LineReader(read_fd, max_line=max_line)]
    finally:
        writer.join()
        os.close(read_fd)


async def test_lines_and_a_last_line_without_newline() -> None:
    assert await read_all(b'{"a": 1}\n{"b": 2}\ntail', 1024) == ['{"a": 1}\n', '{"b": 2}\n', "tail"]


async def test_an_oversized_line_is_dropped_and_reading_goes_on() -> None:
    lines = await read_all(b"x" * 100_000 + b"\nnext\n", max_line=10_000)
    assert lines == [OVERSIZED, "next\n"]


async def test_a_long_line_is_read_in_linear_time() -> None:
    started = time.monotonic()
    lines = await read_all(b"y" * 30_000_000 + b"\n", max_line=64_000_000)
    assert len(lines[0]) == 30_000_001
    assert time.monotonic() - started < 5, "reading must not rescan the buffer for every chunk"


async def test_the_reader_never_holds_more_than_the_limit() -> None:
    with anyio.fail_after(30):
        lines = await read_all(b"z" * 20_000_000, max_line=1_000_000)
    assert lines == [OVERSIZED]
