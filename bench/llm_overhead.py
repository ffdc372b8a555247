"""llm_query overhead: p50 through MCP stdio vs `litellm.acompletion` called directly, same local server.

The provider is bench/fast_llm_server.py on 127.0.0.1 (instant streamed replies), so the
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
from fast_llm_server_proc import fast_llm_server


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
    """``litellm.acompletion`` with exactly the parameters betty-mcp sends (same LiteLLM client cache)."""
    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.litellm_adapter import _kwargs, load_litellm
    from betty_mcp.llm.models import ModelCatalog
    from betty_mcp.llm.types import ChatRequest

    litellm = await load_litellm()
    config = LlmRouterConfig.model_validate({"providers": {"bench": {"endpoint": base, "models": ["fast"]}}})
    request = ChatRequest([{"role": "user", "content": "hi"}])
    kwargs = _kwargs(ModelCatalog(config).resolve("bench/fast"), request)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        stream = await litellm.acompletion(**kwargs)
        chunks = [chunk async for chunk in stream]
        litellm.stream_chunk_builder(chunks, messages=request.messages)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with fast_llm_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_config(ws, base_url)
        peer = StdioPeer(betty_command(ws), ws)
        peer.request(INITIALIZE)
        peer.notify("notifications/initialized")
        through_mcp, direct = [], []
        for _ in range(10):  # warm both paths (imports, connection pools)
            peer.call("tools/call", {"name": "llm_query", "arguments": {"prompt": "hi"}})
        # Alternating halves; each direct half runs in one event loop (LiteLLM keeps clients per loop)
        # and drops its first 10 calls as warm-up.
        for _ in range(2):
            for _ in range(args.calls // 2):
                started = time.perf_counter()
                reply = peer.call("tools/call", {"name": "llm_query", "arguments": {"prompt": "hi"}})
                through_mcp.append(time.perf_counter() - started)
                assert reply["result"]["structuredContent"]["response"] == "pong", reply
            direct += anyio.run(direct_calls, base_url, args.calls // 2 + 10)[10:]
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
