"""(a) Start-up: spawn until `initialize` is answered over stdio, all bundled skills loaded.

Baseline: a bare low-level SDK server with one trivial tool, measured in the same run,
alternating with betty-mcp so machine noise hits both alike. Target: ratio <= 1.0. Also
reported: spawn until the first `tools/list` is answered (initialize is answered before the
SDK loads; the list needs it), against the same bare server.

    .venv/bin/python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, StdioPeer, betty_command, median, time_to_ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        bare = [sys.executable, str(ROOT / "bench" / "bare_server.py")]
        betty = betty_command(workspace)
        peer = StdioPeer(betty, workspace)  # check the bundled skills are really loaded
        peer.request(
            {
                **json.loads('{"jsonrpc":"2.0","id":0,"method":"initialize"}'),
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "0"},
                },
            }
        )
        peer.notify("notifications/initialized")
        tools = peer.call("tools/list", {})["result"]["tools"]
        peer.close()
        for command in (bare, betty):  # warm the file cache
            time_to_ready(command, workspace)
        bare_times, betty_times = [], []
        for _ in range(args.runs):
            bare_times.append(time_to_ready(bare, workspace))
            betty_times.append(time_to_ready(betty, workspace))
    ratio = median(t[0] for t in betty_times) / median(t[0] for t in bare_times)
    list_ratio = median(t[1] for t in betty_times) / median(t[1] for t in bare_times)
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "runs": args.runs,
                "betty_tools": len(tools),
                "bare_sdk_ms_p50": round(median(t[0] for t in bare_times) * 1000, 1),
                "betty_ms_p50": round(median(t[0] for t in betty_times) * 1000, 1),
                "ratio": round(ratio, 3),
                "target": 1.0,
                "met": ratio <= 1.0,
                "to_first_tools_list_bare_ms_p50": round(median(t[1] for t in bare_times) * 1000, 1),
                "to_first_tools_list_betty_ms_p50": round(median(t[1] for t in betty_times) * 1000, 1),
                "to_first_tools_list_ratio": round(list_ratio, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
