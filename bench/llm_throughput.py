"""Throughput: 100 concurrent llm_query calls over streamable HTTP, against a fast local server.

Baseline: the same 100 calls made concurrently with `litellm.acompletion` in one process, in the
same run. Reports calls/s, errors (target: 0) and latency percentiles, and for comparison 100
concurrent trivial calls (`skills_list`) over the same connection.

    .venv/bin/python bench/llm_throughput.py [--concurrency 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import betty_command, median, percentile
from fast_llm_server_proc import fast_llm_server
from llm_overhead import write_config

from tests.conftest import free_port


async def through_http(
    url: str, n: int, tool: str = "llm_query", arguments: dict | None = None
) -> tuple[float, list[float], int]:
    from mcp.client import Client

    latencies: list[float] = []
    errors = 0

    async def one(client: Client) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            result = await client.call_tool(tool, {"prompt": "hi"} if arguments is None else arguments)
            errors += bool(result.is_error)
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - started)

    async with Client(url, read_timeout_seconds=120) as client:
        await client.call_tool(tool, {"prompt": "warm up"} if arguments is None else arguments)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one, client)
        return time.perf_counter() - started, latencies, errors


async def direct(base: str, n: int) -> tuple[float, int]:
    from betty_mcp.llm.litellm_adapter import load_litellm

    litellm = await load_litellm()
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            stream = await litellm.acompletion(
                model="openai/fast",
                api_base=base,
                api_key="x",
                stream=True,
                messages=[{"role": "user", "content": "hi"}],
                max_retries=0,
                num_retries=0,
            )
            _ = [c async for c in stream]
        except Exception:
            errors += 1

    await one()
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return time.perf_counter() - started, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    n = args.concurrency
    with fast_llm_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_config(ws, base_url)
        port = free_port()
        server = subprocess.Popen(
            betty_command(ws, "--http", "--port", str(port)),
            cwd=ws,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)
            url = f"http://127.0.0.1:{port}/mcp"
            elapsed, latencies, errors = anyio.run(through_http, url, n)
            trivial_elapsed, _, trivial_errors = anyio.run(through_http, url, n, "skills_list", {})
        finally:
            server.terminate()
            server.wait()
        base_elapsed, base_errors = anyio.run(direct, base_url + "/v1", n)
    print(
        json.dumps(
            {
                "benchmark": "llm_query_throughput_http",
                "concurrent_calls": n,
                "mcp_http_calls_per_s": round(n / elapsed, 1),
                "mcp_http_errors": errors,
                "mcp_latency_ms_p50": round(median(latencies) * 1000, 1),
                "mcp_latency_ms_p99": round(percentile(latencies, 99) * 1000, 1),
                "direct_litellm_calls_per_s": round(n / base_elapsed, 1),
                "direct_errors": base_errors,
                "ratio_throughput": round((n / elapsed) / (n / base_elapsed), 3),
                "trivial_skills_list_calls_per_s": round(n / trivial_elapsed, 1),
                "trivial_errors": trivial_errors,
                "target_errors": 0,
                "met": errors == 0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
