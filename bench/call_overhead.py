"""(b) Call overhead: `tools/call` on a trivial skill over stdio vs spawning its handler directly.

Both sides run the same `python noop.py VALUE`, interleaved in one run; the ratio of p50s
(and p99s) is betty-mcp's per-call cost on top of the process spawn. Target: p50 ratio <= 1.1.

    .venv/bin/python bench/call_overhead.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SKILLS, INITIALIZE, StdioPeer, betty_command, median, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--cold", action="store_true", help="no zygote: every call spawns a fresh interpreter"
    )
    args = parser.parse_args()
    handler = BENCH_SKILLS / "bench.noop" / "noop.py"
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        if args.cold:
            (workspace / "betty.yaml").write_text("limits:\n  fork_server: false\n")
        peer = StdioPeer(betty_command(workspace, "--skills-dir", str(BENCH_SKILLS)), workspace)
        peer.request(INITIALIZE)
        peer.notify("notifications/initialized")
        direct, through_mcp = [], []
        for i in range(args.calls + 10):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, str(handler), f"v{i}"], capture_output=True, cwd=workspace)
            direct_s = time.perf_counter() - started
            assert out.returncode == 0
            started = time.perf_counter()
            reply = peer.call("tools/call", {"name": "bench_noop", "arguments": {"value": f"v{i}"}})
            mcp_s = time.perf_counter() - started
            assert reply["result"]["structuredContent"]["value"] == f"v{i}", reply
            if i == 9:
                time.sleep(3)  # let the zygote finish its imports: measure the steady state
            if i >= 10:  # warm-up calls are not counted
                direct.append(direct_s)
                through_mcp.append(mcp_s)
        peer.close()
    p50_ratio = median(through_mcp) / median(direct)
    print(
        json.dumps(
            {
                "benchmark": "call_overhead" + (" (cold: no zygote)" if args.cold else ""),
                "calls": args.calls,
                "direct_ms_p50": round(median(direct) * 1000, 2),
                "direct_ms_p99": round(percentile(direct, 99) * 1000, 2),
                "mcp_ms_p50": round(median(through_mcp) * 1000, 2),
                "mcp_ms_p99": round(percentile(through_mcp, 99) * 1000, 2),
                "p50_ratio": round(p50_ratio, 3),
                "p99_ratio": round(percentile(through_mcp, 99) / percentile(direct, 99), 3),
                "added_ms_p50": round((median(through_mcp) - median(direct)) * 1000, 2),
                "target": 1.1,
                "met": p50_ratio <= 1.1,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
