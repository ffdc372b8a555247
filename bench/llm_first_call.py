"""The first llm_query after start-up, against warm ones: LiteLLM's import (seconds) is paid in the
background once the client is served, so a first call made 5 s or more after start-up costs what
the next ones do. Target: first / warm p50 <= 1.2, with start-up unchanged.

Each round spawns the server over stdio on a workspace whose provider is bench/fast_llm_server.py,
initializes, lists tools, waits --wait seconds, then times one llm_query and --calls more, then
waits --wait seconds again and times one more: a warm call after the same idle time (by then the
provider may have closed the idle connection, as uvicorn does after 5 s). Also reported:
spawn -> initialize with the provider configured, against the same without it.

    .venv/bin/python bench/llm_first_call.py [--rounds 5] [--wait 5] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INITIALIZE, StdioPeer, betty_command, median, time_to_initialize
from fast_llm_server_proc import fast_llm_server
from llm_overhead import write_config


def timed_call(peer: StdioPeer) -> float:
    started = time.perf_counter()
    reply = peer.call("tools/call", {"name": "llm_query", "arguments": {"prompt": "hi"}})
    elapsed = time.perf_counter() - started
    assert not reply["result"].get("isError"), reply
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    firsts, warms, idles, with_llm, without_llm = [], [], [], [], []
    with fast_llm_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        configured, plain = Path(tmp, "llm"), Path(tmp, "plain")
        for ws in (configured, plain):
            ws.mkdir()
        write_config(configured, base_url)
        for _ in range(args.rounds):
            with_llm.append(time_to_initialize(betty_command(configured), configured))
            without_llm.append(time_to_initialize(betty_command(plain), plain))
            peer = StdioPeer(betty_command(configured), configured)
            peer.request(INITIALIZE)
            peer.notify("notifications/initialized")
            peer.call("tools/list", {})
            time.sleep(args.wait)
            firsts.append(timed_call(peer))
            warms.extend(timed_call(peer) for _ in range(args.calls))
            time.sleep(args.wait)
            idles.append(timed_call(peer))
            peer.close()
    ratio = median(firsts) / median(warms)
    print(
        json.dumps(
            {
                "benchmark": "llm_first_call",
                "rounds": args.rounds,
                "wait_s": args.wait,
                "first_call_ms_p50": round(median(firsts) * 1000, 1),
                "warm_call_ms_p50": round(median(warms) * 1000, 1),
                "idle_warm_call_ms_p50": round(median(idles) * 1000, 1),
                "idle_warm_ratio": round(median(idles) / median(warms), 3),
                "first_vs_idle_warm_ratio": round(median(firsts) / median(idles), 3),
                "ratio": round(ratio, 3),
                "target": 1.2,
                "met": ratio <= 1.2,
                "initialize_ms_p50_with_provider": round(median(with_llm) * 1000, 1),
                "initialize_ms_p50_without": round(median(without_llm) * 1000, 1),
                "initialize_ratio": round(median(with_llm) / median(without_llm), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
