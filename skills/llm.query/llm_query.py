#!/usr/bin/env python3
"""llm.query: ask an LLM through betty-mcp's router, as the llm_query tool does (same code)."""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.skillkit import SkillError, run
from betty_mcp.skillkit import parser as make_parser

parser = make_parser("Ask any configured LLM, with routing, fallbacks and cost accounting.")
parser.add_argument("prompt")
parser.add_argument("--model")
parser.add_argument("--system_prompt")
parser.add_argument("--temperature", type=float)
parser.add_argument("--max_tokens", type=int)
parser.add_argument("--complexity", choices=["simple", "medium", "complex"])


def handle(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from betty_mcp.app import BettyApp
    from betty_mcp.config import settings_from_env
    from betty_mcp.tools import CallContext

    app = BettyApp(settings_from_env())
    arguments = {k: v for k, v in vars(args).items() if v is not None}
    result = anyio.run(app.tool("llm_query").call, arguments, CallContext())
    if result.is_error:
        errors = (result.structured or {}).get("errors") or [{"message": result.text}]
        raise SkillError(errors[0]["message"], code=errors[0].get("code", "llm_failed"))
    return result.structured or {}


if __name__ == "__main__":
    run(handle, parser)
