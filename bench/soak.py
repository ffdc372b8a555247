"""Soak: N minutes of mixed calls over streamable HTTP against one server; does anything grow or leak?

One ``betty-mcp serve --http`` (fixture skills, ``llm_router`` pointing at the scripted
OpenAI-compatible server of ``tests/fakes/scripted_llm.py``, both on 127.0.0.1) gets, from a few
concurrent workers on two MCP sessions (the 2025-11-25 handshake and 2026-07-28):

- fast skill calls (``test_echo``, ``test_logs``), failing ones (``test_crash``), timeouts
  (``test_hang``: 1.5 s, with a child process), cancelled calls (``test_sleep`` 10 s, abandoned after
  0.2-1 s), and ``llm_query``.

After a 30 s warm-up and again at the end, with the load paused and in-flight calls finished, it
reads the server's RSS (and that of its descendants: the zygote), open fds, threads, its child
processes, and orphans: processes carrying this run's mark (an environment variable given to the
server, inherited by every handler) that are no longer below the server. Targets: no growth beyond
10% between the two readings, zero orphans, zero unexpected errors. Every loop is bounded in count
and in time; it stops by itself.

    .venv/bin/python bench/soak.py [--minutes 10] [--workers 6] [--warmup 30]

Exit status 0 when every target is met. Not a test: run it by hand (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, median, percentile

sys.path.insert(0, str(ROOT))
from tests.conftest import FIXTURE_SKILLS, free_port

MARK = "BETTY_SOAK_MARK"  # every process the server starts inherits it: how orphans are found
CALL_TIMEOUT = 60.0  # no single call may take longer (the longest is a 1.5 s timeout)
GROWTH_LIMIT = 0.10
MAX_CALLS_PER_WORKER = 1_000_000  # a bound on every loop besides the clock
# name, weight: what each worker picks from
MIX = [
    ("echo", 30),
    ("logs", 10),
    ("crash", 10),
    ("hang", 3),
    ("cancel", 7),
    ("llm", 30),
    ("skills_list", 5),
]
EXPECTED_ERROR = {"crash", "hang"}  # isError is their right answer


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _marked(mark: str) -> list[int]:
    needle = f"{MARK}={mark}".encode()
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}


def _socket_kinds(pid: int) -> dict[str, str]:
    """Socket inode -> "tcp <state> to :<port>" or "unix", from the process's network namespace."""
    kinds: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                state = TCP_STATES.get(cols[3], cols[3])
                kinds[cols[9]] = f"tcp {state}" + (f" to :{remote_port}" if remote_port else "")
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/unix") as f:
        for line in list(f)[1:]:
            kinds[line.split()[6]] = "unix"
    return kinds


def _fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by what they point to (socket kind, pipe, pidfd, a file under a folder...)."""
    kinds: dict[str, int] = {}
    sockets = _socket_kinds(pid)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kind = "socket " + sockets.get(target[8:-1], "other")
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("anon_inode:"):
            kind = target
        else:
            kind = "file " + os.path.dirname(target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


@dataclass
class Reading:
    rss_kb: int
    tree_rss_kb: int
    fds: int
    fd_kinds: dict[str, int]
    threads: int
    children: int
    descendants: int
    orphans: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_mb": round(self.rss_kb / 1024, 1),
            "rss_with_descendants_mb": round(self.tree_rss_kb / 1024, 1),
            "open_fds": self.fds,
            "open_fds_by_kind": self.fd_kinds,
            "threads": self.threads,
            "child_processes": self.children,
            "descendant_processes": self.descendants,
            "orphans": len(self.orphans),
            "orphan_pids": self.orphans[:20],
        }


def read_server(pid: int, mark: str) -> Reading:
    below = _descendants(pid)
    tree_rss = _status_field(pid, "VmRSS")
    for child in below:
        with contextlib.suppress(OSError):  # it ended meanwhile
            tree_rss += _status_field(child, "VmRSS")
    children = [p for p in below if (_stat(p) or ("", 0))[1] == pid]
    orphans = []
    for other in _marked(mark):
        stat = _stat(other)
        if other == pid or other in below or stat is None or stat[0] == "Z":
            continue
        orphans.append(other)
    return Reading(
        rss_kb=_status_field(pid, "VmRSS"),
        tree_rss_kb=tree_rss,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        fd_kinds=_fd_kinds(pid),
        threads=_status_field(pid, "Threads"),
        children=len(children),
        descendants=len(below),
        orphans=orphans,
    )


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Tally:
    calls: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def record(self, kind: str, seconds: float, problem: str | None) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.latencies.setdefault(kind, []).append(seconds)
        if problem is not None:
            self.unexpected[kind] = self.unexpected.get(kind, 0) + 1
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {problem[:300]}")

    def total(self) -> int:
        return sum(self.calls.values())

    def errors(self) -> int:
        return sum(self.unexpected.values())


async def one_call(client: Any, kind: str, rng: random.Random) -> str | None:
    """Run one call of ``kind``; None when it behaved as it should, else what went wrong."""
    if kind == "echo":
        result = await client.call_tool("test_echo", {"message": f"soak {rng.random()}", "times": 2})
        return None if not result.is_error else result.content[0].text
    if kind == "logs":
        result = await client.call_tool("test_logs", {"name": "soak"})
        return None if not result.is_error else result.content[0].text
    if kind == "crash":
        result = await client.call_tool("test_crash", {})
        return None if result.is_error and "boom" in result.content[0].text else "test_crash did not fail"
    if kind == "hang":
        result = await client.call_tool("test_hang", {})
        return None if result.is_error and "timed out" in result.content[0].text else result.content[0].text
    if kind == "cancel":
        with anyio.move_on_after(rng.uniform(0.2, 1.0)) as scope:
            await client.call_tool("test_sleep", {"seconds": 10})
        return None if scope.cancelled_caught else "test_sleep 10 s answered before it was cancelled"
    if kind == "llm":
        result = await client.call_tool("llm_query", {"prompt": f"say ok {rng.randint(0, 10**6)}"})
        text = result.content[0].text
        return None if not result.is_error and "ok" in text else text
    if kind == "skills_list":
        result = await client.call_tool("skills_list", {"query": "test"})
        return None if not result.is_error else result.content[0].text
    raise ValueError(kind)


async def worker(client: Any, tally: Tally, until: float, rng: random.Random, stop: anyio.Event) -> None:
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    for _ in range(MAX_CALLS_PER_WORKER):
        if time.monotonic() >= until or stop.is_set():
            return
        kind = rng.choices(kinds, weights)[0]
        started = time.monotonic()
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                problem = await one_call(client, kind, rng)
        except TimeoutError:
            problem = f"no answer in {CALL_TIMEOUT:g}s"
        except Exception as exc:  # a broken session, a transport error: count it, go on
            problem = f"{type(exc).__name__}: {exc}"
        tally.record(kind, time.monotonic() - started, problem)


async def load(url: str, seconds: float, workers: int, tally: Tally, seed: int) -> float:
    """``workers`` workers on two sessions for ``seconds``; returns the time taken, in-flight calls done."""
    from mcp.client import Client

    stop = anyio.Event()
    started = time.monotonic()
    until = started + seconds
    async with (
        Client(url, mode="legacy", read_timeout_seconds=CALL_TIMEOUT) as legacy,
        Client(url, mode="auto", read_timeout_seconds=CALL_TIMEOUT) as modern,
    ):
        with anyio.fail_after(seconds + CALL_TIMEOUT + 30):
            async with anyio.create_task_group() as tg:
                for i in range(workers):
                    client = legacy if i % 2 == 0 else modern
                    tg.start_soon(worker, client, tally, until, random.Random(seed + i), stop)
    return time.monotonic() - started


# -- set-up ------------------------------------------------------------------------------------


def start_scripted_llm() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.scripted_llm", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "READY":
        proc.kill()
        raise SystemExit(f"the scripted LLM server did not start: {line}")
    return proc, int(line[1])


def write_config(workspace: Path, llm_port: int) -> Path:
    config = workspace / "betty.yaml"
    router = {
        "default_model": "scripted/main",
        "embedded_fallback": False,
        "providers": {
            "scripted": {
                "type": "openai_compatible",
                "endpoint": f"http://127.0.0.1:{llm_port}",
                "models": [{"name": "main", "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0}],
            }
        },
    }
    config.write_text(yaml.safe_dump({"llm_router": router}))
    return config


def wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the server did not listen on {port} in {seconds:g}s")


def settle(pid: int, seconds: float = 3.0) -> None:
    """Let killed handlers be reaped and the zygote go idle before reading."""
    time.sleep(seconds)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_descendants(pid)) > 1:  # the zygote alone, when idle
        time.sleep(0.2)


def growth(before: float, after: float) -> float:
    return (after - before) / before if before else 0.0


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 1),
        "calls": tally.total(),
        "calls_per_s": round(tally.total() / seconds, 2) if seconds else 0,
        "unexpected_errors": tally.errors(),
        "by_kind": {
            kind: {
                "calls": count,
                "unexpected_errors": tally.unexpected.get(kind, 0),
                "p50_ms": round(median(tally.latencies[kind]) * 1000, 1),
                "p95_ms": round(percentile(tally.latencies[kind], 95) * 1000, 1),
            }
            for kind, count in sorted(tally.calls.items())
        },
        "error_examples": tally.examples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the measured phase")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the first reading")
    parser.add_argument("--workers", type=int, default=6, help="concurrent callers (over two sessions)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    mark = uuid.uuid4().hex
    report: dict[str, Any] = {"benchmark": "soak_http", "minutes": args.minutes, "workers": args.workers}
    llm, llm_port = start_scripted_llm()
    try:
        with tempfile.TemporaryDirectory(prefix="betty-soak-") as tmp:
            workspace = Path(tmp)
            config = write_config(workspace, llm_port)
            port = free_port()
            stderr = (workspace / "server.stderr").open("wb")
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "betty_mcp",
                    "serve",
                    "--http",
                    "--port",
                    str(port),
                    "--workspace",
                    str(workspace),
                    "--skills-dir",
                    str(FIXTURE_SKILLS),
                    "--config",
                    str(config),
                    "--log-level",
                    "error",
                ],
                cwd=workspace,
                env={**os.environ, MARK: mark},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                wait_listening(port, server)
                url = f"http://127.0.0.1:{port}/mcp"
                warm = Tally()
                print(f"warm-up: {args.warmup:g}s of load...", file=sys.stderr, flush=True)
                warm_seconds = anyio.run(load, url, args.warmup, args.workers, warm, args.seed)
                settle(server.pid)
                start = read_server(server.pid, mark)
                print(f"start: {json.dumps(start.as_dict())}", file=sys.stderr, flush=True)
                measured = Tally()
                print(f"soak: {args.minutes:g} min of load...", file=sys.stderr, flush=True)
                seconds = anyio.run(load, url, args.minutes * 60, args.workers, measured, args.seed + 1000)
                settle(server.pid)
                end = read_server(server.pid, mark)
                alive = server.poll() is None
            finally:
                server.terminate()
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
                stderr.close()
            time.sleep(1)
            after_exit = [p for p in _marked(mark) if (_stat(p) or ("Z", 0))[0] != "Z"]
            server_log_tail = (workspace / "server.stderr").read_text(errors="replace")[-2000:]
    finally:
        llm.terminate()
        llm.wait(timeout=10)
    growths = {
        "rss": growth(start.rss_kb, end.rss_kb),
        "rss_with_descendants": growth(start.tree_rss_kb, end.tree_rss_kb),
        "open_fds": growth(start.fds, end.fds),
        "threads": growth(start.threads, end.threads),
    }
    targets = {
        **{f"{name}_growth_at_most_10pct": value <= GROWTH_LIMIT for name, value in growths.items()},
        "zero_orphans": not end.orphans and not after_exit,
        "zero_unexpected_errors": measured.errors() == 0,
        "server_alive_at_the_end": alive,
    }
    report.update(
        {
            "warmup": summary(warm, warm_seconds),
            "start": start.as_dict(),
            "end": end.as_dict(),
            "growth_pct": {name: round(value * 100, 1) for name, value in growths.items()},
            "marked_processes_left_after_server_exit": after_exit[:20],
            "load": summary(measured, seconds),
            "targets": targets,
            "met": all(targets.values()),
        }
    )
    if not report["met"]:
        report["server_stderr_tail"] = server_log_tail
    print(json.dumps(report, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
