#!/usr/bin/env python3
"""llm.consensus: ask several LLMs at once through betty-mcp's router, as the llm_consensus tool does
(same code). In an agent run served by betty-mcp this skill runs in the server instead, so its calls
count against the run's budgets."""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.kit.skillkit import SkillError, json_arg, run
from betty_mcp.kit.skillkit import parser as make_parser

parser = make_parser("Ask several LLMs at once, with stances, a second round and a judge.")
parser.add_argument("prompt")
parser.add_argument("--models", type=json_arg, help="JSON array of aliases or provider/model ids")
parser.add_argument("--stances", type=json_arg, help="JSON object: model -> for | against | neutral | words")
parser.add_argument("--system_prompt")
parser.add_argument("--judge")
parser.add_argument("--blind", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument("--rounds", type=int, choices=[1, 2], default=1)
parser.add_argument("--max_cost_usd", type=float)
parser.add_argument("--max_tokens", type=int)


def handle(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from betty_mcp.core.config import settings_from_env
    from betty_mcp.core.errors import BettyError
    from betty_mcp.services import Services

    arguments = {k: v for k, v in vars(args).items() if v is not None}
    services = Services(settings_from_env())

    async def ask() -> dict[str, Any]:
        try:
            return await services.consensus(arguments)
        finally:
            await services.aclose()  # ledger rows and the trace written before the process ends

    try:
        out = anyio.run(ask)
    except BettyError as exc:
        raise SkillError(str(exc), code=exc.code, **exc.details()) from None
    if out["status"] != "completed":
        raise SkillError(out["error"] or "the consensus failed", code="all_models_failed")
    out["consensus_status"] = out.pop("status")
    if out["judge"] is None:  # the manifest declares an object: absent rather than null
        del out["judge"]
    return out


if __name__ == "__main__":
    run(handle, parser)
