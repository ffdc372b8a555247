"""Running the gateway for tests: in this process (a uvicorn thread) or as ``betty-mcp gateway``.

with in_process_gateway(workspace) as url: httpx.post(url + "/v1/messages", json=...)
with gateway_process(workspace, env=ENV) as (url, proc): ...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes.scripted_llm import ScriptedLLM

SECRET = "sk-scripted-gateway-secret-0123456789"
ENV = {"SCRIPTED_API_KEY": SECRET}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_router(llm: ScriptedLLM, **extra: Any) -> dict[str, Any]:
    """An llm_router block: scripted/main (falls back to scripted/backup), small, agentmodel, thinker."""
    return {
        "default_model": "scripted/main",
        "providers": {
            "scripted": {
                "type": "openai_compatible",
                "endpoint": llm.base_url,
                "api_key_env": "SCRIPTED_API_KEY",
                "models": [
                    {
                        "name": "main",
                        "input_cost_per_mtok": 2.0,
                        "output_cost_per_mtok": 6.0,
                        "fallbacks": ["scripted/backup"],
                    },
                    {"name": "backup", "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0},
                    "small",
                    "agentmodel",
                    "thinker",
                ],
            }
        },
        "routing_rules": [
            {"request_class": "background", "preferred_provider": "scripted", "preferred_model": "small"},
            {"request_class": "think", "preferred_provider": "scripted", "preferred_model": "thinker"},
            {"agent_pattern": "api.*", "preferred_provider": "scripted", "preferred_model": "agentmodel"},
        ],
        "embedded_fallback": False,
        **extra,
    }


def write_gateway_config(workspace: Path, llm: ScriptedLLM, **extra: Any) -> Path:
    path = workspace / "betty.yaml"
    path.write_text(yaml.safe_dump({"llm_router": gateway_router(llm, **extra)}))
    return path


@contextmanager
def in_process_gateway(
    workspace: Path,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Iterator[str]:
    """The gateway app served by uvicorn in a thread of this process; yields its base URL."""
    import anyio
    import uvicorn

    from betty_mcp.core.config import load_settings
    from betty_mcp.gateway.server import gateway_app
    from betty_mcp.services import Services

    port = free_port()
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace))
    app = gateway_app(services, host=host, port=port, token=token, allowed_hosts=allowed_hosts)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="on", http="h11"
        )
    )
    thread = threading.Thread(target=lambda: anyio.run(server.serve), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def gateway_process(
    workspace: Path, *args: str, env: dict[str, str] | None = None, stderr: Any = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m betty_mcp gateway`` on a free port, ready (``/health`` answers); yields (url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "betty_mcp",
            "gateway",
            "--port",
            str(port),
            "--workspace",
            str(workspace),
            *args,
        ],
        cwd=workspace,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    token = args[args.index("--token") + 1] if "--token" in args else None
    headers = {"x-api-key": token} if token else {}
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"betty-mcp gateway exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("betty-mcp gateway did not become ready in 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
