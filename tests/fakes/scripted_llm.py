"""A scripted, stdlib-only OpenAI-compatible (and Ollama) HTTP server for tests.

In-process::

    with ScriptedLLM() as llm:
        llm.script("gpt-x", Reply("hello"), ToolCalls([("api_validate", {"spec_path": "a.yaml"})]))
        llm.script("*", Error(429, retry_after=2))          # default queue for any model
        await litellm.acompletion(model="openai/gpt-x", api_base=llm.base_url + "/v1", api_key="sk-test")
        await litellm.acompletion(model="ollama_chat/llama3", api_base=llm.base_url)
        llm.requests[-1].body["messages"]

As a process (for tests that drive another process)::

    python -m tests.fakes.scripted_llm --port 0 [--script steps.json]   # prints "READY <port>"
    POST /_script  {"model": "gpt-x", "steps": [{"kind": "reply", "text": "hi"}]}
    GET  /_requests          POST /_reset

Steps: ``Reply``, ``ToolCalls``, ``Error``, ``ContextLengthError``, ``Slow``, ``Hang``, ``Disconnect``,
``Raw`` (dataclasses), or the same as dicts ``{"kind": "reply", ...}`` (``"type"`` also works;
a bare string is a ``Reply``). Each model has a FIFO queue; ``"*"`` is the queue for any model whose own
queue is empty; when both are empty the server answers ``default`` (``Reply("ok")``), or 404 for a model
never scripted when ``strict_models=True``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import select
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "ContextLengthError",
    "Disconnect",
    "Error",
    "Hang",
    "Raw",
    "RecordedRequest",
    "Reply",
    "ScriptedLLM",
    "Slow",
    "Step",
    "ToolCalls",
    "parse_step",
    "remote_requests",
    "remote_reset",
    "remote_script",
    "step_to_dict",
]


# --------------------------------------------------------------------------- steps


@dataclass
class Reply:
    """A text answer. Streams as several chunks with ``chunk_delay`` seconds between them.

    ``echo_auth`` puts the request's Authorization header into the answer, where the text says
    ``{auth}`` (else at its end): a provider echoing the key in a successful reply.
    """

    text: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    finish_reason: str = "stop"
    echo_auth: bool = False
    kind: str = field(default="reply", init=False, repr=False)


@dataclass
class ToolCalls:
    """Assistant tool calls: ``[(name, args_dict), ...]``; ids are ``call_<n>``, arguments JSON strings."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    arg_pieces: int = 3  # how many streamed chunks each call's arguments are split into
    kind: str = field(default="tool_calls", init=False, repr=False)

    def __post_init__(self) -> None:
        norm: list[tuple[str, dict[str, Any]]] = []
        for c in self.calls:
            if isinstance(c, dict):
                args = c.get("arguments", c.get("args", {}))
                norm.append((c["name"], json.loads(args) if isinstance(args, str) else dict(args)))
            else:
                name, args = c
                norm.append((name, json.loads(args) if isinstance(args, str) else dict(args)))
        self.calls = norm


@dataclass
class Error:
    """An OpenAI-style error reply; ``echo_auth`` puts the request's Authorization header into the message."""

    status: int = 500
    message: str | None = None
    retry_after: float | None = None
    echo_auth: bool = False
    type: str | None = None
    code: str | None = None
    param: str | None = None
    delay: float = 0.0
    kind: str = field(default="error", init=False, repr=False)


@dataclass
class ContextLengthError:
    """OpenAI's real 400 for an over-long prompt (``code: context_length_exceeded``)."""

    max_tokens: int = 8192
    tokens: int | None = None  # default: max_tokens + prompt word count
    delay: float = 0.0
    kind: str = field(default="context_length", init=False, repr=False)


@dataclass
class Slow:
    """Wait ``seconds`` before answering with ``then``."""

    seconds: float = 1.0
    then: Any = None  # a step; default Reply("ok")
    kind: str = field(default="slow", init=False, repr=False)


@dataclass
class Hang:
    """Never answer, until the client disconnects, the server shuts down, or ``seconds`` (if set) pass,
    after which the connection is closed without a reply."""

    seconds: float | None = None
    kind: str = field(default="hang", init=False, repr=False)


@dataclass
class Disconnect:
    """Close the connection without sending any reply."""

    delay: float = 0.0
    kind: str = field(default="disconnect", init=False, repr=False)


@dataclass
class Raw:
    """Send exactly this status / body / headers (e.g. malformed JSON)."""

    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0
    kind: str = field(default="raw", init=False, repr=False)


Step = Reply | ToolCalls | Error | ContextLengthError | Slow | Hang | Disconnect | Raw

_KINDS: dict[str, type] = {
    "reply": Reply,
    "text": Reply,
    "tool_calls": ToolCalls,
    "tools": ToolCalls,
    "error": Error,
    "context_length": ContextLengthError,
    "context_length_error": ContextLengthError,
    "slow": Slow,
    "hang": Hang,
    "disconnect": Disconnect,
    "raw": Raw,
}


def parse_step(obj: Any) -> Step:
    """A step from a dataclass, a dict (``{"kind": ...}``), or a bare string (a ``Reply``)."""
    if isinstance(obj, Reply | ToolCalls | Error | ContextLengthError | Hang | Disconnect | Raw):
        return obj
    if isinstance(obj, Slow):
        return obj if isinstance(obj.then, _STEP_TYPES) else Slow(obj.seconds, parse_step(obj.then or "ok"))
    if isinstance(obj, str):
        return Reply(obj)
    if not isinstance(obj, dict):
        raise TypeError(f"not a step: {obj!r}")
    d = dict(obj)
    kind = str(d.pop("kind", None) or d.pop("type", None) or ("text" if "text" in d else "")).lower()
    if kind not in _KINDS:
        raise ValueError(f"unknown step kind {kind!r} in {obj!r}")
    cls = _KINDS[kind]
    if cls is Slow:
        return Slow(float(d.get("seconds", 1.0)), parse_step(d.get("then") or "ok"))
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} for step {kind!r}")
    return cls(**d)


_STEP_TYPES = (Reply, ToolCalls, Error, ContextLengthError, Slow, Hang, Disconnect, Raw)


def step_to_dict(step: Any) -> dict[str, Any]:
    """The JSON form of a step (what ``POST /_script`` accepts)."""
    step = parse_step(step)
    out: dict[str, Any] = {"kind": step.kind}
    for f in dataclasses.fields(step):
        if not f.init:
            continue
        value = getattr(step, f.name)
        if isinstance(step, Slow) and f.name == "then":
            value = step_to_dict(value)
        elif isinstance(step, ToolCalls) and f.name == "calls":
            value = [{"name": n, "arguments": a} for n, a in value]
        out[f.name] = value
    return out


# --------------------------------------------------------------------------- recording


class _Headers(dict):
    """A plain dict (JSON-serialisable) whose keys are lower-case and looked up case-insensitively."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((str(k).lower(), v) for k, v in dict(items).items())

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    path: str
    method: str
    model: str | None
    body: Any
    headers: dict[str, str]
    time: float  # time.monotonic() when the request arrived
    step: str | None = None  # kind of the step that answered it
    client_gone_at: float | None = None  # time.monotonic() when the client hung up before the answer

    @property
    def messages(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("messages") or [] if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("tools") or [] if isinstance(self.body, dict) else []

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method,
            "model": self.model,
            "body": self.body,
            "headers": dict(self.headers),
            "time": self.time,
            "step": self.step,
            "client_gone_at": self.client_gone_at,
        }


# --------------------------------------------------------------------------- helpers


def _words(text: str | None) -> int:
    return len((text or "").split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_words(body: dict[str, Any]) -> int:
    if "messages" in body:
        n = sum(_words(_content_text(m.get("content"))) for m in body.get("messages") or [])
    else:
        prompt = body.get("prompt")
        n = _words(" ".join(prompt) if isinstance(prompt, list) else str(prompt or ""))
    return max(n, 1)


def _split_text(text: str, parts: int = 4) -> list[str]:
    """Split into roughly ``parts`` pieces that join back exactly (word boundaries when possible)."""
    if not text:
        return [""]
    words = text.split(" ")
    if len(words) >= 2:
        size = max(1, -(-len(words) // parts))
        pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
        return [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access."),
    408: ("timeout", None, "Request timed out."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class _Aborted(Exception):
    """The client went away or the server is shutting down: drop the connection."""


class _ClientGone(_Aborted):
    """The client closed its connection before the answer (it cancelled the call)."""


# --------------------------------------------------------------------------- HTTP handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            sys.stderr.write("scripted_llm: " + (format % args) + "\n")

    # ---- plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, seconds: float | None) -> None:
        """Sleep ``seconds`` (forever if None); raise ``_Aborted`` on client disconnect or server stop."""
        stop = self.server.owner._stop
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if stop.is_set():
                raise _Aborted
            if self._client_gone():
                raise _ClientGone
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return
            stop.wait(left)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- routing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        raw = self._read_body() if method != "GET" else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = raw.decode(errors="replace")
        owner = self.server.owner
        try:
            if path.startswith("/_"):
                self._control(method, path, body)
                return
            route = {
                ("GET", "/v1/models"): self._models,
                ("GET", "/models"): self._models,
                ("POST", "/v1/chat/completions"): self._chat,
                ("POST", "/chat/completions"): self._chat,
                ("POST", "/v1/completions"): self._completions,
                ("POST", "/completions"): self._completions,
                ("POST", "/api/chat"): self._ollama_chat,
                ("GET", "/api/tags"): self._ollama_tags,
            }.get((method, path))
            if route is None:
                self._send_json(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
                return
            model = body.get("model") if isinstance(body, dict) else None
            rec = RecordedRequest(
                path=path,
                method=method,
                model=model,
                body=body,
                headers=_Headers(self.headers.items()),
                time=time.monotonic(),
            )
            owner._record(rec)
            route(rec)
        except _ClientGone:
            owner._hung_up(rec)
            self._drop()
        except _Aborted:
            self._drop()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    # ---- control API

    def _control(self, method: str, path: str, body: Any) -> None:
        owner = self.server.owner
        if method == "POST" and path == "/_script":
            items = body if isinstance(body, list) else [body]
            queued = 0
            for item in items:
                if "default" in item:
                    owner.default = parse_step(item["default"])
                if "steps" in item:
                    owner.script(item.get("model", "*"), *item["steps"])
                    queued += len(item["steps"])
            self._send_json(200, {"ok": True, "queued": queued})
        elif method == "GET" and path == "/_requests":
            self._send_json(200, [r.to_json() for r in owner.requests])
        elif method == "POST" and path == "/_reset":
            owner.reset()
            self._send_json(200, {"ok": True})
        elif method == "GET" and path == "/_status":
            self._send_json(200, {"pending": owner.pending(), "requests": len(owner.requests)})
        else:
            self._send_json(404, {"error": {"message": f"no control route {method} {path}"}})

    # ---- endpoints

    def _models(self, rec: RecordedRequest) -> None:
        owner = self.server.owner
        data = [
            {"id": m, "object": "model", "created": owner.created, "owned_by": "scripted-llm"}
            for m in owner.model_names()
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _ollama_tags(self, rec: RecordedRequest) -> None:
        owner = self.server.owner
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1000,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "scripted", "parameter_size": "1B"},
            }
            for m in owner.model_names()
        ]
        self._send_json(200, {"models": models})

    def _resolve(self, rec: RecordedRequest) -> Step:
        """Take the next step for this request and run the generic ones (delays, errors, hangs)."""
        owner = self.server.owner
        step = owner._next_step(rec.model)
        rec.step = step.kind
        while isinstance(step, Slow):
            self._wait(step.seconds)
            step = parse_step(step.then or "ok")
        delay = getattr(step, "delay", 0.0)
        if delay:
            self._wait(delay)
        if isinstance(step, Hang):
            self._wait(step.seconds)
            raise _Aborted
        if isinstance(step, Disconnect):
            raise _Aborted
        return step

    def _send_error_step(self, step: Step, rec: RecordedRequest, ollama: bool) -> bool:
        """Send error/raw steps; True when it answered."""
        if isinstance(step, Raw):
            payload = step.body.encode()
            self.send_response(step.status)
            self.send_header("Content-Type", step.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in step.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            return True
        if isinstance(step, ContextLengthError):
            tokens = step.tokens if step.tokens is not None else step.max_tokens + _prompt_words(rec.body)
            message = (
                f"This model's maximum context length is {step.max_tokens} tokens. However, your messages "
                f"resulted in {tokens} tokens. Please reduce the length of the messages."
            )
            err = {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
            self._send_json(400, {"error": message} if ollama else {"error": err})
            return True
        if isinstance(step, Error):
            etype, ecode, emsg = _ERROR_DEFAULTS.get(
                step.status,
                ("server_error" if step.status >= 500 else "invalid_request_error", None, "Error."),
            )
            message = step.message or emsg
            if step.echo_auth:
                message += f" (Authorization: {self.headers.get('Authorization', '')})"
            headers = {}
            if step.retry_after is not None:
                ra = step.retry_after
                headers["Retry-After"] = str(int(ra) if float(ra).is_integer() else ra)
            err = {
                "message": message,
                "type": step.type or etype,
                "param": step.param,
                "code": step.code or ecode,
            }
            self._send_json(step.status, {"error": message} if ollama else {"error": err}, headers)
            return True
        return False

    def _text(self, step: Reply | ToolCalls) -> str | None:
        if not (isinstance(step, Reply) and step.echo_auth):
            return step.text
        auth = self.headers.get("Authorization", "")
        return step.text.replace("{auth}", auth) if "{auth}" in step.text else f"{step.text} {auth}"

    def _usage(self, step: Reply | ToolCalls, rec: RecordedRequest) -> tuple[int, int]:
        prompt = step.prompt_tokens if step.prompt_tokens is not None else _prompt_words(rec.body)
        if step.completion_tokens is not None:
            completion = step.completion_tokens
        elif isinstance(step, Reply):
            completion = max(_words(step.text), 1)
        else:
            completion = max(sum(_words(json.dumps(a)) + 1 for _, a in step.calls) + _words(step.text), 1)
        return prompt, completion

    # ---- OpenAI chat

    def _chat(self, rec: RecordedRequest) -> None:
        body = rec.body if isinstance(rec.body, dict) else {}
        step = self._resolve(rec)
        if self._send_error_step(step, rec, ollama=False):
            return
        assert isinstance(step, Reply | ToolCalls)
        owner = self.server.owner
        cid = f"chatcmpl-{owner._next_id()}"
        model = rec.model or "scripted"
        prompt, completion = self._usage(step, rec)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        calls = []
        if isinstance(step, ToolCalls):
            calls = [
                {
                    "id": f"call_{owner._next_call()}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                for name, args in step.calls
            ]
        finish = "tool_calls" if calls else (step.finish_reason if isinstance(step, Reply) else "stop")
        text = self._text(step)

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            self._send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": owner.created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                    "system_fingerprint": None,
                },
            )
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": owner.created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return c

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if text:
            events += [chunk({"content": piece}) for piece in _split_text(text)]
        for i, call in enumerate(calls):
            args = call["function"]["arguments"]
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            events += [
                chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                for piece in _split_text(args, getattr(step, "arg_pieces", 3))
            ]
        events.append(chunk({}, finish))
        if include_usage:
            last = chunk({})
            last["choices"] = []
            last["usage"] = usage
            events.append(last)
        self._stream_sse(events, step.chunk_delay)

    def _stream_sse(self, events: list[dict[str, Any]], chunk_delay: float) -> None:
        self._start_stream("text/event-stream; charset=utf-8")
        for i, ev in enumerate(events):
            if i and chunk_delay:
                self._wait(chunk_delay)
            self._chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()

    # ---- OpenAI legacy completions

    def _completions(self, rec: RecordedRequest) -> None:
        body = rec.body if isinstance(rec.body, dict) else {}
        step = self._resolve(rec)
        if self._send_error_step(step, rec, ollama=False):
            return
        assert isinstance(step, Reply | ToolCalls)
        owner = self.server.owner
        cid = f"cmpl-{owner._next_id()}"
        text = self._text(step) or ""
        prompt, completion = self._usage(step, rec)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

        def obj(t: str, finish: str | None, with_usage: bool = True) -> dict[str, Any]:
            o: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": owner.created,
                "model": rec.model,
                "choices": [{"text": t, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
            if with_usage:
                o["usage"] = usage
            return o

        if not body.get("stream"):
            self._send_json(200, obj(text, "stop"))
            return
        events = [obj(p, None, False) for p in _split_text(text)] + [obj("", "stop", False)]
        if (body.get("stream_options") or {}).get("include_usage"):
            last = obj("", None)
            last["choices"] = []
            events.append(last)
        self._stream_sse(events, step.chunk_delay)

    # ---- Ollama

    def _ollama_chat(self, rec: RecordedRequest) -> None:
        body = rec.body if isinstance(rec.body, dict) else {}
        step = self._resolve(rec)
        if self._send_error_step(step, rec, ollama=True):
            return
        assert isinstance(step, Reply | ToolCalls)
        model = rec.model or "scripted"
        prompt, completion = self._usage(step, rec)
        text = self._text(step) or ""
        calls = []
        if isinstance(step, ToolCalls):
            calls = [
                {"function": {"index": i, "name": n, "arguments": a}} for i, (n, a) in enumerate(step.calls)
            ]
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(self.server.owner.created))
        stats = {
            "total_duration": 1_000_000 * (prompt + completion),
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 1_000_000 * prompt,
            "eval_count": completion,
            "eval_duration": 1_000_000 * completion,
        }
        done_reason = step.finish_reason if isinstance(step, Reply) else "stop"
        stream = body.get("stream", True)  # Ollama streams unless told not to
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            self._send_json(
                200,
                {
                    "model": model,
                    "created_at": created_at,
                    "message": message,
                    "done_reason": done_reason,
                    "done": True,
                    **stats,
                },
            )
            return
        lines: list[dict[str, Any]] = [
            {
                "model": model,
                "created_at": created_at,
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            for piece in (_split_text(text) if text else [])
        ]
        if calls:
            lines.append(
                {
                    "model": model,
                    "created_at": created_at,
                    "message": {"role": "assistant", "content": "", "tool_calls": calls},
                    "done": False,
                }
            )
        lines.append(
            {
                "model": model,
                "created_at": created_at,
                "message": {"role": "assistant", "content": ""},
                "done_reason": done_reason,
                "done": True,
                **stats,
            }
        )
        self._start_stream("application/x-ndjson")
        for i, line in enumerate(lines):
            if i and step.chunk_delay:
                self._wait(step.chunk_delay)
            self._chunk(json.dumps(line).encode() + b"\n")
        self._end_stream()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: ScriptedLLM

    def __init__(self, addr: tuple[str, int], owner: ScriptedLLM) -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()


# --------------------------------------------------------------------------- public object


class ScriptedLLM:
    """A scripted LLM server on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default: Any = None,
        strict_models: bool = False,
        models: list[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.default: Step = parse_step(default if default is not None else Reply("ok"))
        self.strict_models = strict_models
        self.verbose = verbose
        self.created = int(time.time())
        self._models = list(models or [])
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Step]] = {}
        self._scripted: set[str] = set()
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition(self._lock)
        self._ids = 0
        self._calls = 0
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> ScriptedLLM:
        self._stop.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="scripted-llm",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.base_url + "/v1"

    # ---- scripting

    def script(self, model: str, *steps: Any) -> ScriptedLLM:
        """Queue ``steps`` (FIFO) for ``model`` (``"*"``: any model whose own queue is empty)."""
        parsed = [parse_step(s) for s in steps]
        with self._lock:
            self._queues.setdefault(model, deque()).extend(parsed)
            self._scripted.add(model)
        return self

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {m: len(q) for m, q in self._queues.items() if q}

    def reset(self) -> None:
        """Forget all queues and recorded requests (keeps ``default``)."""
        with self._lock:
            self._queues.clear()
            self._scripted.clear()
            self._requests.clear()
            self._ids = 0
            self._calls = 0

    def model_names(self) -> list[str]:
        with self._lock:
            names = list(self._models) + sorted(
                m for m in self._scripted if m != "*" and m not in self._models
            )
        return names or ["scripted"]

    # ---- recording

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests have arrived (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._requests)} of {n} requests after {timeout} s")
                self._cond.wait(left)
            return list(self._requests)

    def wait_for_hang_ups(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were hung up on by the client before their answer
        (a cancelled call); TimeoutError otherwise. Returns those requests."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                gone = [r for r in self._requests if r.client_gone_at is not None]
                if len(gone) >= n:
                    return gone
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(gone)} of {n} requests hung up on after {timeout} s")
                self._cond.wait(left)

    # ---- internals used by the handler

    def _record(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    def _hung_up(self, rec: RecordedRequest) -> None:
        with self._cond:
            rec.client_gone_at = time.monotonic()
            self._cond.notify_all()

    def _next_step(self, model: str | None) -> Step:
        with self._lock:
            for key in (model, "*"):
                q = self._queues.get(key) if key is not None else None
                if q:
                    return q.popleft()
            known = model in self._scripted or model in self._models or "*" in self._scripted
        if self.strict_models and not known:
            return Error(404, message=f"The model `{model}` does not exist or you do not have access to it.")
        return self.default

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _next_call(self) -> int:
        with self._lock:
            self._calls += 1
            return self._calls


# --------------------------------------------------------------------------- remote control helpers


def _http(method: str, url: str, payload: Any = None, timeout: float = 5.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def remote_script(base_url: str, model: str, *steps: Any) -> Any:
    """Queue steps on a standalone server (``POST /_script``)."""
    return _http("POST", base_url + "/_script", {"model": model, "steps": [step_to_dict(s) for s in steps]})


def remote_requests(base_url: str) -> list[dict[str, Any]]:
    return _http("GET", base_url + "/_requests")


def remote_reset(base_url: str) -> Any:
    return _http("POST", base_url + "/_reset", {})


# --------------------------------------------------------------------------- standalone


def _load_script_file(llm: ScriptedLLM, path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    items: list[dict[str, Any]]
    if isinstance(data, list):
        items = data
    elif "steps" in data or "default" in data:
        items = [data]
    else:  # {"model": [steps], ...}
        items = [{"model": m, "steps": s} for m, s in data.items()]
    for item in items:
        if "default" in item:
            llm.default = parse_step(item["default"])
        if "steps" in item:
            llm.script(item.get("model", "*"), *item["steps"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.scripted_llm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed in READY)")
    parser.add_argument("--script", help="JSON: {model: [steps]} or {model, steps} or a list of those")
    parser.add_argument("--strict-models", action="store_true", help="404 for models never scripted")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    llm = ScriptedLLM(args.host, args.port, strict_models=args.strict_models, verbose=args.verbose)
    if args.script:
        _load_script_file(llm, args.script)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with llm:
        print(f"READY {llm.port}", flush=True)
        while not done.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
