"""The gateway's own overhead, side by side with claude-code-router, against one scripted upstream.

The same Anthropic Messages request goes (1) through ``betty-mcp gateway`` and (2) through
claude-code-router 2.0.0 (npm ``@musistudio/claude-code-router``, pinned in tests/node), both in front of
one stdlib OpenAI-compatible upstream that answers at once; (3) the equivalent OpenAI request goes
direct to that upstream. Rounds are interleaved; overhead = p50(through) - p50(direct), for a
non-streaming answer (whole body) and a streaming one (time to the last byte). Then 50 concurrent
streams through the gateway (errors counted) and the gateway's RSS after start and after the load.

    .venv/bin/python bench/gateway_overhead.py [--rounds 400] [--concurrent 50] [--no-ccr]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CCR = ROOT / "tests" / "node" / "node_modules" / ".bin" / "ccr"

MESSAGES_REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "system": "You answer in one word.",
    "messages": [{"role": "user", "content": "ping"}],
}
OPENAI_REQUEST = {
    "model": "fast",
    "max_tokens": 64,
    "messages": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "ping"},
    ],
}


# -- the upstream: stdlib, one write per answer, no Nagle ----------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fast",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
STREAM = (
    b"".join(
        b"data: " + json.dumps(c).encode() + b"\n\n"
        for c in (
            _chunk({"role": "assistant", "content": "pong"}),
            _chunk({}, "stop"),
            {**_chunk({}), "choices": [], "usage": USAGE},
        )
    )
    + b"data: [DONE]\n\n"
)
WHOLE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "fast",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
    }
).encode()


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        stream = bool(body.get("stream"))
        payload = STREAM if stream else WHOLE
        kind = b"text/event-stream" if stream else b"application/json"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (kind, len(payload))
        self.wfile.write(head + payload)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 50 streams connect at once
    daemon_threads = True


def start_upstream() -> tuple[ThreadingHTTPServer, str]:
    server = _Server(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# -- the two routers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, headers: dict[str, str], proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            r = httpx.post(url + "/v1/messages", json=MESSAGES_REQUEST, headers=headers, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {seconds} s")


def start_gateway(upstream: str, scratch: Path) -> tuple[subprocess.Popen, str]:
    workspace = scratch / "gateway"
    workspace.mkdir()
    router = {
        "default_model": "bench/fast",
        "providers": {"bench": {"type": "openai_compatible", "endpoint": upstream, "models": ["fast"]}},
        "embedded_fallback": False,
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "betty_mcp", "gateway", "--port", str(port), "--workspace", str(workspace)],
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, {}, proc)
    return proc, url


def start_ccr(upstream: str, scratch: Path) -> tuple[subprocess.Popen, str]:
    home = scratch / "ccr-home"
    (home / ".claude-code-router").mkdir(parents=True)
    port = free_port()
    config = {
        "LOG": False,
        "HOST": "127.0.0.1",
        "PORT": port,
        "APIKEY": "bench-key",
        "API_TIMEOUT_MS": 60000,
        "Providers": [
            {
                "name": "bench",
                "api_base_url": upstream + "/v1/chat/completions",
                "api_key": "none",
                "models": ["fast"],
            }
        ],
        "Router": {"default": "bench,fast"},
    }
    (home / ".claude-code-router" / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(home), "CI": "true"}
    proc = subprocess.Popen(
        [str(CCR), "start"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, {"x-api-key": "bench-key"}, proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def listening_pid(port: int) -> int | None:
    """The process listening on ``port`` (``ccr start`` may hand the server to a child)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- measuring ---------------------------------------------------------------------------------------


def timed(client: httpx.Client, url: str, payload: dict[str, Any], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=payload, headers=headers) as r:
        for _ in r.iter_raw():
            pass
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code}")
    return (time.perf_counter() - started) * 1000


def measure(targets: dict[str, tuple[str, dict[str, Any], dict[str, str]]], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stream in (False, True):
        samples: dict[str, list[float]] = {name: [] for name in targets}
        with httpx.Client(timeout=30) as client:
            for url, payload, headers in targets.values():  # warm connections and caches
                for _ in range(30):
                    timed(client, url, {**payload, "stream": stream}, headers)
            for _ in range(rounds):
                for name, (url, payload, headers) in targets.items():
                    samples[name].append(timed(client, url, {**payload, "stream": stream}, headers))
        p50 = {name: statistics.median(s) for name, s in samples.items()}
        key = "streaming_time_to_last_byte" if stream else "non_streaming"
        results[key] = {
            "p50_ms": {name: round(v, 3) for name, v in p50.items()},
            "p90_ms": {name: round(sorted(s)[int(len(s) * 0.9)], 3) for name, s in samples.items()},
            "overhead_p50_ms": {
                name: round(v - p50["direct"], 3) for name, v in p50.items() if name != "direct"
            },
        }
    return results


async def concurrent_streams(url: str, n: int) -> dict[str, Any]:
    errors: list[str] = []

    async def one(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        try:
            async with client.stream(
                "POST", url + "/v1/messages", json={**MESSAGES_REQUEST, "stream": True}
            ) as r:
                text = (await r.aread()).decode()
                if r.status_code != 200 or "message_stop" not in text:
                    errors.append(f"{r.status_code}: {text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
        return (time.perf_counter() - started) * 1000

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        times = await asyncio.gather(*(one(client) for _ in range(n)))
        wall = (time.perf_counter() - started) * 1000
    return {
        "streams": n,
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_ms": round(wall, 1),
        "p50_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--no-ccr", action="store_true", help="leave claude-code-router out")
    args = parser.parse_args()

    upstream, upstream_url = start_upstream()
    scratch = Path(tempfile.mkdtemp(prefix="betty-gw-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        gateway, gateway_url = start_gateway(upstream_url, scratch)
        procs.append(gateway)
        rss_start = rss_mib(gateway.pid)
        targets = {
            "direct": (upstream_url + "/v1/chat/completions", OPENAI_REQUEST, {}),
            "betty_gateway": (gateway_url + "/v1/messages", MESSAGES_REQUEST, {}),
        }
        ccr_version = None
        if not args.no_ccr:
            if not CCR.exists():
                raise SystemExit("claude-code-router is not installed: cd tests/node && npm ci")
            ccr, ccr_url = start_ccr(upstream_url, scratch)
            procs.append(ccr)
            targets["claude_code_router"] = (
                ccr_url + "/v1/messages",
                MESSAGES_REQUEST,
                {"x-api-key": "bench-key"},
            )
            ccr_version = json.loads((CCR.resolve().parent.parent / "package.json").read_text())["version"]
        latency = measure(targets, args.rounds)
        load = asyncio.run(concurrent_streams(gateway_url, args.concurrent))
        rss_after = rss_mib(gateway.pid)
        gw = latency["non_streaming"]["overhead_p50_ms"]["betty_gateway"]
        gs = latency["streaming_time_to_last_byte"]["overhead_p50_ms"]["betty_gateway"]
        report: dict[str, Any] = {
            "rounds": args.rounds,
            "claude_code_router_version": ccr_version,
            **latency,
            "concurrent": load,
            "gateway_rss_mib": {"after_start": round(rss_start, 1), "after_load": round(rss_after, 1)},
        }
        if ccr_version:
            cn = latency["non_streaming"]["overhead_p50_ms"]["claude_code_router"]
            cs = latency["streaming_time_to_last_byte"]["overhead_p50_ms"]["claude_code_router"]
            report["target_met"] = {
                "non_streaming": gw <= cn,
                "streaming": gs <= cs,
                "zero_errors": not load["errors"],
            }
        print(json.dumps(report, indent=2))
    finally:
        for proc in procs:
            stop(proc)
        if not args.no_ccr and CCR.exists():
            home = scratch / "ccr-home"
            subprocess.run(
                [str(CCR), "stop"], env={**os.environ, "HOME": str(home)}, capture_output=True, timeout=30
            )
        upstream.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
