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
