"""(c) Memory: the server's resident set size once start-up is done (all bundled skills loaded).

Baseline: the bare low-level SDK server, measured in the same run. Target: betty-mcp < 120 MB.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INITIALIZE, ROOT, StdioPeer, betty_command


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def settled_rss(
    command: list[str], cwd: Path, *, call_a_skill: bool = False
) -> tuple[float, int, float | None]:
    """RSS after start-up; with ``call_a_skill``, also the zygote's once the first skill call started it."""
    peer = StdioPeer(command, cwd)
    peer.request(INITIALIZE)
    peer.notify("notifications/initialized")
    tools = len(peer.call("tools/list", {})["result"]["tools"])
    time.sleep(1.0)  # let background start-up work (the file watcher) settle
    rss = rss_mb(peer.proc.pid)
    zygote = None
    if call_a_skill:
        peer.call("tools/call", {"name": "registry_query", "arguments": {"name": "x"}})
        time.sleep(3.0)  # the zygote does its imports
        zygote = sum(rss_mb(c) for c in children(peer.proc.pid))
    peer.close()
    return rss, tools, zygote


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        bare, _, _ = settled_rss([sys.executable, str(ROOT / "bench" / "bare_server.py")], workspace)
        betty, tools, zygote = settled_rss(betty_command(workspace), workspace, call_a_skill=True)
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "betty_tools": tools,
                "bare_sdk_rss_mb": round(bare, 1),
                "betty_rss_mb": round(betty, 1),
                "zygote_rss_mb_after_first_skill_call": round(zygote or 0, 1),
                "ratio": round(betty / bare, 3),
                "target_mb": 120,
                "met": betty < 120,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
