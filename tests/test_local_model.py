"""End to end with a real model: the embedded Gemma in-process, and the same GGUF behind llama_cpp.server.

It is a small base model: these tests check structure (an answer exists, tokens are counted, the
result names the model), not wording.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, stdio_client

pytestmark = pytest.mark.anyio


async def test_llm_query_works_offline_with_the_embedded_model(workspace: Path) -> None:
    async with stdio_client(workspace) as client:
        result = await client.call_tool("llm_query", {"prompt": "The capital of France is", "max_tokens": 12})
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["model_used"] == "embedded/gemma-3-270m" and out["embedded"] is True
    assert "embedded demo model" in out["note"]
    assert out["tokens_used"]["completion"] > 0 and out["cost_usd"] == 0.0
    assert isinstance(out["response"], str) and out["response"].strip()


FACTS = [
    ("The capital of France is", "paris"),
    ("What is 2+2?", "4"),
    ("What is the largest planet in the solar system?", "jupiter"),
]


async def test_the_embedded_model_answers_factual_questions_briefly_and_fast(workspace: Path) -> None:
    """A base model prompted as a completion (Question/Answer, its first line) answers short questions
    sensibly; through a chat template it echoed the template's markers for 256 tokens (18 s)."""
    async with stdio_client(workspace) as client:
        outs = []
        for prompt, _ in FACTS:
            result = await client.call_tool("llm_query", {"prompt": prompt})
            assert not result.is_error, result.content[0].text
            outs.append(result.structured_content)
        with_context = await client.call_tool(
            "llm_query", {"prompt": FACTS[0][0], "system_prompt": "Answer in a few words."}
        )
    answers = [out["response"] for out in outs]
    assert sum(word in answer.lower() for answer, (_, word) in zip(answers, FACTS, strict=True)) >= 2, answers
    for out in [*outs, with_context.structured_content]:
        assert out["model_used"] == "embedded/gemma-3-270m"
        assert 0 < len(out["response"]) <= 120 and "[INST]" not in out["response"], out["response"]
        assert out["tokens_used"]["completion"] <= 64
        assert out["latency_ms"] < 8000, "one short line, not 256 tokens"
    cli = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "query", "The capital of France is"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and 0 < len(cli.stdout.strip()) <= 120, cli.stdout + cli.stderr


@contextmanager
def start_local_server(folder: Path) -> Iterator[str]:
    """``betty-mcp local serve`` on a free port; yields its base URL once /v1/models answers."""
    port = free_port()
    log = (folder / f"local-server-{port}.log").open("w+")  # a pipe nobody reads would fill up
    proc = subprocess.Popen(
        [sys.executable, "-m", "betty_mcp", "local", "serve", "--port", str(port), "--threads", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=1) as reply:
                    assert json.load(reply)["data"][0]["id"] == "gemma-3-270m"
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("betty-mcp local serve did not come up in 90 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_local_server(tmp_path_factory.mktemp("local")) as base:
        yield base


async def test_llm_query_reaches_a_real_local_model_server(workspace: Path, local_server: str) -> None:
    (workspace / "betty.yaml").write_text(
        yaml.safe_dump(
            {
                "llm_router": {
                    "default_provider": "local",
                    "embedded_fallback": False,
                    "providers": {"local": {"endpoint": local_server, "models": ["gemma-3-270m"]}},
                }
            }
        )
    )
    async with stdio_client(workspace) as client:
        result = await client.call_tool("llm_query", {"prompt": "Paris is in", "max_tokens": 12})
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert (out["model_used"], out["provider"], out["embedded"]) == ("local/gemma-3-270m", "local", False)
    assert out["tokens_used"]["prompt"] > 0 and out["tokens_used"]["completion"] > 0
    assert out["fallbacks"] == []
