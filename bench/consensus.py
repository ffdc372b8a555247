"""llm_consensus: wall time of a fan-out to N models of 1 s each (N = 2, 3, 5) against 1 s, and the
fan-out's overhead over one llm_query, both through MCP stdio.

The provider is a minimal streaming OpenAI-compatible endpoint (uvicorn, in its own process, started
by this script with ``--serve``): models named ``slow*`` answer after 1 s, the others at once. So the
figures are betty-mcp's own: planning and the cost pre-check, the background run and its wait, the
trace, one routed LiteLLM call per model, the ledger rows, progress notifications.

    .venv/bin/python bench/consensus.py [--rounds 5] [--calls 100]

Targets: N models of 1 s in at most 1.1 s (ratio to 1 s); overhead over llm_query reported (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import INITIALIZE, StdioPeer, betty_command, median, percentile
from fast_llm_server_proc import served

SLOW_SECONDS = 1.0
SLOW_MODELS = [f"slow{i}" for i in range(1, 6)]
FAST_MODELS = ["fast1", "fast2", "fast3"]


# -- the provider ------------------------------------------------------------------------------


def serve(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        if str(body.get("model", "")).startswith("slow"):
            await asyncio.sleep(SLOW_SECONDS)

        async def events():
            yield chunk({"role": "assistant", "content": "pong"})
            yield chunk({}, finish="stop")
            yield chunk({}, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def provider() -> contextlib.AbstractContextManager[str]:
    """This script's own ``--serve`` endpoint, in its own process."""
    return served(lambda port: [sys.executable, __file__, "--serve", str(port)])


# -- the measurements --------------------------------------------------------------------------


def write_config(ws: Path, base_url: str) -> None:
    models = [
        {"name": m, "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
        for m in SLOW_MODELS + FAST_MODELS
    ]
    (ws / "betty.yaml").write_text(
        yaml.safe_dump(
            {
                "llm_router": {
                    "default_model": "bench/fast1",
                    "embedded_fallback": False,
                    "providers": {"bench": {"endpoint": base_url, "models": models}},
                }
            }
        )
    )


def timed(peer: StdioPeer, tool: str, arguments: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    reply = peer.call("tools/call", {"name": tool, "arguments": arguments})
    elapsed = time.perf_counter() - started
    result = reply["result"]
    assert not result.get("isError"), result
    return elapsed, result["structuredContent"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fan-outs per N (the median is kept)")
    parser.add_argument("--calls", type=int, default=100, help="calls each for the overhead figure")
    args = parser.parse_args()
    report: dict = {"benchmark": "llm_consensus"}
    with provider() as base_url, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        write_config(ws, base_url)
        peer = StdioPeer(betty_command(ws), ws)
        peer.request(INITIALIZE)
        peer.notify("notifications/initialized")
        for _ in range(10):  # warm both paths (imports, connection pools)
            timed(peer, "llm_query", {"prompt": "hi"})
            timed(peer, "llm_consensus", {"prompt": "hi", "models": [f"bench/{m}" for m in FAST_MODELS]})

        # (1) N models of 1 s each, against 1 s (and against one llm_query of the same 1 s model).
        single = [
            timed(peer, "llm_query", {"prompt": "hi", "model": "bench/slow1"})[0] for _ in range(args.rounds)
        ]
        walls = {}
        for n in (2, 3, 5):
            models = [f"bench/{m}" for m in SLOW_MODELS[:n]]
            runs = []
            for _ in range(args.rounds):
                elapsed, out = timed(peer, "llm_consensus", {"prompt": "hi", "models": models})
                assert out["totals"]["answered"] == n, out
                runs.append(elapsed)
            walls[n] = runs
        report["one_second_models"] = {
            "llm_query_one_model_s_p50": round(median(single), 3),
            **{
                f"n{n}": {
                    "wall_s_p50": round(median(runs), 3),
                    "wall_s_max": round(max(runs), 3),
                    "ratio_to_1s": round(median(runs) / SLOW_SECONDS, 3),
                    "ratio_to_llm_query": round(median(runs) / median(single), 3),
                }
                for n, runs in walls.items()
            },
            "target_ratio_to_1s": 1.1,
            "met": all(median(runs) / SLOW_SECONDS <= 1.1 for runs in walls.values()),
        }

        # (2) Overhead over llm_query: instant models, interleaved, p50.
        query, one, three = [], [], []
        for _ in range(args.calls):
            query.append(timed(peer, "llm_query", {"prompt": "hi", "model": "bench/fast1"})[0])
            one.append(timed(peer, "llm_consensus", {"prompt": "hi", "models": ["bench/fast1"]})[0])
            three.append(
                timed(peer, "llm_consensus", {"prompt": "hi", "models": [f"bench/{m}" for m in FAST_MODELS]})[
                    0
                ]
            )
        peer.close()
    report["overhead_over_llm_query"] = {
        "calls": args.calls,
        "llm_query_ms_p50": round(median(query) * 1000, 2),
        "consensus_1_model_ms_p50": round(median(one) * 1000, 2),
        "consensus_1_model_ms_p99": round(percentile(one, 99) * 1000, 2),
        "consensus_3_models_ms_p50": round(median(three) * 1000, 2),
        "added_ms_p50_1_model": round((median(one) - median(query)) * 1000, 2),
        "added_ms_p50_3_models": round((median(three) - median(query)) * 1000, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main()
