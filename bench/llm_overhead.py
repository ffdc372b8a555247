"""llm_query overhead: p50 through MCP stdio vs `litellm.acompletion` called directly, same local server.

The provider is the scripted OpenAI-compatible server on 127.0.0.1 (instant replies), so the
difference is betty-mcp's own cost: MCP framing, routing, budgets, the ledger write, progress.
Both sides stream, as llm_query does. Target: at most +3 ms at p50.

    .venv/bin/python bench/llm_overhead.py [--calls 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import INITIALIZE, StdioPeer, betty_command, median, percentile

from tests.fakes.scripted_llm import Reply, ScriptedLLM


def write_config(ws: Path, base_url: str) -> None:
    (ws / "betty.yaml").write_text(
        yaml.safe_dump(
            {
                "llm_router": {
                    "default_model": "bench/fast",
                    "embedded_fallback": False,
                    "providers": {"bench": {"endpoint": base_url, "models": ["fast"]}},
                }
            }
        )
    )


async def direct_calls(base: str, n: int) -> list[float]:
    from betty_mcp.llm.litellm_adapter import load_litellm

    litellm = await load_litellm()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        stream = await litellm.acompletion(
            model="openai/fast",
            api_base=base,
            api_key="x",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
            timeout=30,
        )
        chunks = [chunk async for chunk in stream]
        litellm.stream_chunk_builder(chunks, messages=[{"role": "user", "content": "hi"}])
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with ScriptedLLM(default=Reply("pong")) as llm, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_config(ws, llm.base_url)
        peer = StdioPeer(betty_command(ws), ws)
        peer.request(INITIALIZE)
        peer.notify("notifications/initialized")
        through_mcp, direct = [], []
        for _ in range(10):  # warm both paths (imports, connection pools)
            peer.call("tools/call", {"name": "llm_query", "arguments": {"prompt": "hi"}})
        anyio.run(direct_calls, llm.openai_base, 10)
        for _ in range(args.calls // 10):
            for _ in range(10):
                started = time.perf_counter()
                reply = peer.call("tools/call", {"name": "llm_query", "arguments": {"prompt": "hi"}})
                through_mcp.append(time.perf_counter() - started)
                assert reply["result"]["structuredContent"]["response"] == "pong", reply
            direct += anyio.run(direct_calls, llm.openai_base, 10)
        peer.close()
    added = (median(through_mcp) - median(direct)) * 1000
    print(
        json.dumps(
            {
                "benchmark": "llm_query_overhead",
                "calls": len(through_mcp),
                "direct_litellm_ms_p50": round(median(direct) * 1000, 2),
                "mcp_llm_query_ms_p50": round(median(through_mcp) * 1000, 2),
                "mcp_llm_query_ms_p99": round(percentile(through_mcp, 99) * 1000, 2),
                "added_ms_p50": round(added, 2),
                "ratio_p50": round(median(through_mcp) / median(direct), 3),
                "target_added_ms": 3.0,
                "met": added <= 3.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    main()
