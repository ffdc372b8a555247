"""p50 of each bundled skill called through MCP over stdio, on real inputs.

Baseline: `python -c pass` spawned the same number of times in the same run (the floor every
subprocess-based skill call pays). Each skill's figure is its p50 and its ratio to that floor.

    .venv/bin/python bench/skills_p50.py [--calls 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INITIALIZE, ROOT, StdioPeer, betty_command, median

OPENAPI = ROOT / "tests" / "data" / "openapi"  # the suite's real OpenAPI documents (see their SOURCE.md)


def prepare(ws: Path) -> None:
    for name in ("petstore.yaml", "petstore-expanded.yaml"):
        shutil.copy(OPENAPI / name, ws / name)
    shutil.copytree(ROOT / "agents" / "api.analyzer", ws / "agents" / "api.analyzer")
    (ws / "skills").mkdir()
    (ws / "wf.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "check",
                "fail_fast": True,
                "steps": [
                    {"id": "validate", "skill": "api.validate", "args": {"spec_path": "petstore.yaml"}},
                    {
                        "id": "compare",
                        "skill": "api.compatibility",
                        "args": {"old_spec_path": "petstore.yaml", "new_spec_path": "petstore-expanded.yaml"},
                    },
                ],
            }
        )
    )


def cases(i: int) -> list[tuple[str, dict]]:
    return [
        ("api_validate", {"spec_path": "petstore.yaml"}),
        (
            "api_define",
            {"service_name": "orders", "resources": ["order", "customer"], "output_dir": f"api/{i}"},
        ),
        ("api_compatibility", {"old_spec_path": "petstore.yaml", "new_spec_path": "petstore-expanded.yaml"}),
        (
            "skill_create",
            {"name": f"demo.bench{i}", "description": "A benchmark skill.", "target_dir": "skills"},
        ),
        ("skill_define", {"manifest_path": f"skills/demo.bench{i}/skill.yaml"}),
        ("agent_define", {"manifest_path": "agents/api.analyzer/agent.yaml", "dry_run": True}),
        ("registry_update", {"manifest_path": f"skills/demo.bench{i}/skill.yaml"}),
        ("registry_query", {"name": "demo"}),
        ("policy_enforce", {"manifest_path": f"skills/demo.bench{i}/skill.yaml"}),
        ("workflow_validate", {"workflow_path": "wf.yaml"}),
        ("workflow_run", {"workflow_path": "wf.yaml"}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    floor: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        prepare(ws)
        peer = StdioPeer(betty_command(ws, "--skills-dir", str(ws / "skills")), ws)
        peer.request(INITIALIZE)
        peer.notify("notifications/initialized")
        peer.call("tools/call", {"name": "registry_query", "arguments": {"name": "warm"}})
        time.sleep(3)  # the zygote (started by the first call) finishes its imports: measure the steady state
        for i in range(args.calls):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor.append(time.perf_counter() - started)
            for tool, arguments in cases(i):
                started = time.perf_counter()
                reply = peer.call("tools/call", {"name": tool, "arguments": arguments})
                times.setdefault(tool, []).append(time.perf_counter() - started)
                result = reply.get("result", {})
                if tool not in ("api_validate", "workflow_run") and result.get(
                    "isError"
                ):  # petstore has findings
                    raise SystemExit(f"{tool} failed: {json.dumps(result)[:500]}")
        peer.close()
    base = median(floor)
    print(
        json.dumps(
            {
                "benchmark": "skills_p50_through_mcp",
                "calls_per_skill": args.calls,
                "python_startup_ms_p50": round(base * 1000, 1),
                "skills": {
                    t: {
                        "p50_ms": round(median(v) * 1000, 1),
                        "ratio_to_python_startup": round(median(v) / base, 2),
                    }
                    for t, v in times.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
