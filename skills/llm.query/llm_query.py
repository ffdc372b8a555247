#!/usr/bin/env python3
"""llm.query: ask an LLM through betty-mcp's router, as the llm_query tool does (same code)."""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.kit.skillkit import SkillError, run
from betty_mcp.kit.skillkit import parser as make_parser

parser = make_parser("Ask any configured LLM, with routing, fallbacks and cost accounting.")
parser.add_argument("prompt")
parser.add_argument("--model")
parser.add_argument("--system_prompt")
parser.add_argument("--temperature", type=float)
parser.add_argument("--max_tokens", type=int)
parser.add_argument("--complexity", choices=["simple", "medium", "complex"])


def handle(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from betty_mcp.core.config import settings_from_env
    from betty_mcp.core.errors import BettyError
    from betty_mcp.services import Services

    arguments = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return anyio.run(Services(settings_from_env()).query_llm, arguments)
    except BettyError as exc:
        raise SkillError(str(exc), code=exc.code) from None


if __name__ == "__main__":
    run(handle, parser)
