"""Agent runtime: overhead per step (excluding model and skill time), and concurrency.

The model is an in-process fake behind the same backend interface as real ones (it answers at
once), the skills are real subprocesses. Per-step overhead = (run wall time - time inside skill
calls - time inside model calls) / steps, against the skill call itself as the baseline. The
concurrency figure: two 1-second skills requested in one turn, against 1 s.

    .venv/bin/python bench/agent_overhead.py [--turns 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from betty_mcp.agent import AgentRuntime, RunLimits  # noqa: E402
from betty_mcp.core.config import load_settings  # noqa: E402
from betty_mcp.core.llm_config import LlmRouterConfig  # noqa: E402
from betty_mcp.llm.service import LlmService  # noqa: E402
from betty_mcp.llm.types import Completion, ToolCall  # noqa: E402
from betty_mcp.services import Services  # noqa: E402
from betty_mcp.store import open_store  # noqa: E402
from tests.fakes.fake_backend import FakeBackend  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "skills"
ROUTER = {
    "default_model": "fake/model",
    "embedded_fallback": False,
    "providers": {
        "fake": {"endpoint": "http://127.0.0.1:9", "models": [{"name": "model", "supports_tools": True}]}
    },
}


def build(ws: Path, skills: list[str], turns: list[Completion]) -> tuple[AgentRuntime, FakeBackend]:
    agents = ws / "agents" / "bench.agent"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "bench.agent",
                "version": "0.1.0",
                "description": "bench",
                "capabilities": ["bench"],
                "skills_available": skills,
                "reasoning_mode": "iterative",
                "status": "active",
                "error_handling": {"max_retries": 3, "timeout_seconds": 600},
            }
        )
    )
    settings = load_settings(
        None,
        workspace=ws,
        skills_dirs=[FIXTURES, ROOT / "bench" / "skills"],
        agents_dirs=[ws / "agents"],
        bundled=False,
    )
    backend = FakeBackend({"fake/model": turns})
    llm = LlmService(
        LlmRouterConfig.model_validate(ROUTER),
        open_store(settings),
        backends={"litellm": backend, "embedded": backend},
    )
    return Services(settings, llm=llm).agent_runtime(), backend


def call(name: str, args: dict, i: int) -> Completion:
    return Completion(
        "", tool_calls=[ToolCall(f"c{i}", name, json.dumps(args))], prompt_tokens=1, completion_tokens=1
    )


async def per_step(turns: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = [call("bench_noop", {"value": f"v{i}"}, i) for i in range(turns)] + [Completion("done")]
        runtime, _ = build(Path(tmp), ["bench.noop"], script)
        started = time.perf_counter()
        result = await runtime.run("bench.agent", "bench", limits=RunLimits(max_steps=turns + 2))
        wall = (time.perf_counter() - started) * 1000
    assert result.status == "completed", result.error
    inside = sum(s.ms for s in result.steps)
    skill_ms = [s.ms for s in result.steps if s.kind == "skill"]
    overhead = (wall - inside) / len(result.steps)
    return {
        "steps": len(result.steps),
        "run_wall_ms": round(wall, 1),
        "overhead_ms_per_step": round(overhead, 3),
        "skill_call_ms_mean": round(sum(skill_ms) / len(skill_ms), 2),
        "overhead_ratio_to_skill_call": round(overhead / (sum(skill_ms) / len(skill_ms)), 4),
    }


async def concurrency() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        turn = Completion(
            "",
            tool_calls=[
                ToolCall("a", "test_sleep", '{"seconds": 1}'),
                ToolCall("b", "test_sleep", '{"seconds": 1}'),
            ],
        )
        runtime, _ = build(Path(tmp), ["test.sleep"], [turn, Completion("done")])
        started = time.perf_counter()
        result = await runtime.run("bench.agent", "sleep twice")
        wall = time.perf_counter() - started
    assert result.status == "completed", result.error
    return {"two_1s_skills_in_one_turn_s": round(wall, 3), "ratio_to_1s": round(wall / 1.0, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    print(
        json.dumps(
            {"benchmark": "agent_runtime", **anyio.run(per_step, args.turns), **anyio.run(concurrency)},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
