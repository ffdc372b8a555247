"""A team service on PostgreSQL against the single-user default (SQLite), in one run:

(a) llm_query throughput over streamable HTTP: 1 instance on SQLite (the baseline), 1 instance and 3
    instances on one PostgreSQL database, the same calls against the same fast local upstream;
(b) the budget check's latency (the reservation, the only database round trip on a call's path), p50
    and p99, on each backend, with a daily budget configured; SQLite is the baseline;
(c) start-up without a database_url: no database driver imported (python -X importtime).

    .venv/bin/python bench/team_service.py [--calls 150] [--checks 500]

Needs PostgreSQL ($BETTY_TEST_POSTGRES, default root@127.0.0.1:5432); each part uses a throw-away
database of its own. Every figure is a ratio against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import anyio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import betty_command, median, percentile
from fast_llm_server_proc import fast_llm_server

from tests.conftest import free_port
from tests.postgres import scratch_database


def write_config(ws: Path, base_url: str, budget: float | None = None) -> None:
    router: dict = {
        "default_model": "bench/fast",
        "embedded_fallback": False,
        "providers": {"bench": {"endpoint": base_url, "models": ["fast"]}},
    }
    if budget is not None:
        router["limits"] = {"budgets": {"per_day_usd": budget}}
    (ws / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))


def start_instance(ws: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BETTY_MCP_DATABASE_URL"}
    if database_url:
        env["BETTY_MCP_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        betty_command(ws, "--http", "--port", str(port)),
        cwd=ws,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}/mcp"


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def throughput(urls: list[str], n: int) -> dict[str, float]:
    """``n`` concurrent llm_query calls spread evenly over ``urls`` (after one warm-up call each)."""
    from mcp.client import Client

    latencies: list[float] = []
    errors = 0

    async def one(client: Client) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            result = await client.call_tool("llm_query", {"prompt": "hi"})
            errors += bool(result.is_error)
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - started)

    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(u, read_timeout_seconds=120)) for u in urls]
        for client in clients:
            await client.call_tool("llm_query", {"prompt": "warm up"})
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, clients[i % len(clients)])
        elapsed = time.perf_counter() - started
    return {
        "calls_per_s": round(n / elapsed, 1),
        "errors": errors,
        "p50_ms": round(median(latencies) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
    }


def part_throughput(base_url: str, n: int) -> dict:
    found = {}
    for name, instances, postgres in (
        ("sqlite_1", 1, False),
        ("postgres_1", 1, True),
        ("postgres_3", 3, True),
    ):
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            url = stack.enter_context(scratch_database()) if postgres else None
            procs, urls = [], []
            for i in range(instances):
                ws = Path(tmp) / f"i{i}"
                ws.mkdir()
                write_config(ws, base_url)
                proc, mcp_url = start_instance(ws, url)
                procs.append(proc)
                urls.append(mcp_url)
            try:
                for url in urls:
                    wait_for_port(int(url.rsplit(":", 1)[1].split("/")[0]))
                found[name] = anyio.run(throughput, urls, n)
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait()
    base = found["sqlite_1"]["calls_per_s"]
    for name in ("postgres_1", "postgres_3"):
        found[name]["ratio_vs_sqlite_1"] = round(found[name]["calls_per_s"] / base, 3)
    return found


async def check_latency(store: object, n: int) -> dict[str, float]:
    from betty_mcp.llm.ledger import Budgets, UsageRecord, reserve

    budgets = Budgets(per_day_usd=1e9)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        held = await reserve(store, budgets, cost_usd=0.001, tokens=10)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
        store.settle(UsageRecord(caller="bench", model="m", provider="p", cost_usd=0.001), held)  # type: ignore[attr-defined]
    await store.aclose()  # type: ignore[attr-defined]
    return {"p50_ms": round(median(times) * 1000, 3), "p99_ms": round(percentile(times, 99) * 1000, 3)}


def part_budget_check(n: int) -> dict:
    from betty_mcp.store import SqliteStore
    from betty_mcp.store.postgres import PostgresStore

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = anyio.run(check_latency, SqliteStore(Path(tmp) / "usage.sqlite", Path(tmp) / "runs"), n)
    with scratch_database() as url:
        postgres = anyio.run(check_latency, PostgresStore(url), n)
    postgres["p50_ratio_vs_sqlite"] = round(postgres["p50_ms"] / sqlite["p50_ms"], 2)
    postgres["p99_ratio_vs_sqlite"] = round(postgres["p99_ms"] / sqlite["p99_ms"], 2)
    return {"sqlite": sqlite, "postgresql": postgres}


def part_startup() -> dict:
    """What ``serve`` imports before it answers, with no database_url: no driver among it."""
    code = "import betty_mcp.cli.serve, betty_mcp.services, betty_mcp.mcp.transports, betty_mcp.store"
    env = {k: v for k, v in os.environ.items() if k != "BETTY_MCP_DATABASE_URL"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    drivers = [line for line in out.stderr.splitlines() if "psycopg" in line or "procrastinate" in line]
    return {"driver_modules_imported": len(drivers), "met": not drivers, "see_also": "bench/startup.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--checks", type=int, default=500)
    args = parser.parse_args()
    with fast_llm_server() as base_url:
        report = {
            "benchmark": "team_service",
            "llm_query_throughput": part_throughput(base_url, args.calls),
            "budget_check_latency": part_budget_check(args.checks),
            "startup_without_database_url": part_startup(),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
