"""Start a local HTTP server process on a free port for the length of a ``with`` block:
bench/fast_llm_server.py (``fast_llm_server``), or any command given its port (``served``)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served(command: Callable[[int], list[str]]) -> Iterator[str]:
    """Run ``command(port)`` for a free port of 127.0.0.1, wait until it listens, yield its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(command(port))
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def fast_llm_server() -> contextlib.AbstractContextManager[str]:
    script = str(Path(__file__).with_name("fast_llm_server.py"))
    return served(lambda port: [sys.executable, script, str(port)])
