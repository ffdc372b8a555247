"""Shared pieces of the benchmarks: raw JSON-RPC over a child's stdio, and percentiles."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_SKILLS = ROOT / "bench" / "skills"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}


def betty_command(workspace: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "betty_mcp",
        "serve",
        "--workspace",
        str(workspace),
        "--log-level",
        "error",
        *extra,
    ]


class StdioPeer:
    """A child process spoken to in newline-delimited JSON-RPC, as MCP's stdio transport does."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        self._next_id = 1

    def request(self, message: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        while True:
            reply = json.loads(self.proc.stdout.readline())
            if reply.get("id") == message.get("id"):
                return reply

    def call(self, method: str, params: dict) -> dict:
        self._next_id += 1
        return self.request({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})

    def notify(self, method: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def time_to_initialize(command: list[str], cwd: Path) -> float:
    return time_to_ready(command, cwd)[0]


def time_to_ready(command: list[str], cwd: Path, linger: float = 0.0) -> tuple[float, float, float]:
    """Seconds from spawn to ``initialize`` answered, and to the first ``tools/list`` answered; and the
    server's CPU seconds by then. ``linger``: seconds the server is left running afterwards."""
    started = time.perf_counter()
    peer = StdioPeer(command, cwd)
    peer.request(INITIALIZE)
    initialized = time.perf_counter() - started
    peer.notify("notifications/initialized")
    peer.call("tools/list", {})
    listed = time.perf_counter() - started
    cpu = cpu_seconds(peer.proc.pid)
    time.sleep(linger)
    peer.close()
    return initialized, listed, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
