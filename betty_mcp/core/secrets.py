"""Recognising secrets in the environment, and scrubbing them from any text that leaves us.

A variable is secret when its name looks secret (``SECRET_NAME``) or when it was registered as
one: ``register_secret_names`` (called with every configured ``api_key_env`` when the services are
built) makes a key in ``LLM_CREDS`` as secret as one in ``OPENAI_API_KEY``, for the whole process:
kept from handlers' environments, scrubbed from logs, traces, results and progress.

Hot paths (every tool result, every progress notification) scrub with ``known_secrets()``: the
values looked up once, longest first, then plain ``in`` checks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_NAME = re.compile(
    r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|_KEY$|^AUTH|_AUTH$|SESSION_?ID)",
    re.IGNORECASE,
)
MIN_SECRET_LENGTH = 6
REDACTED = "[REDACTED]"
# Loggers of the libraries under LiteLLM: at WARNING unless ``verbose`` (their INFO/DEBUG floods stderr).
THIRD_PARTY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore")

_registered: set[str] = set()  # names whose values are secrets whatever they look like
_values: set[str] = set()  # secrets that live in no variable (a database URL's password)
_known: list[str] | None = None  # known_secrets(), computed on first use


def register_secret_names(names: Iterable[str]) -> None:
    """Treat the values of these variables as secrets too, from now on, in this whole process."""
    global _known
    new = {n for n in names if n} - _registered
    if new:
        _registered.update(new)
        _known = None


def register_secret_value(value: str | None) -> None:
    """Scrub ``value`` from everything that leaves this process, from now on (a password in a URL)."""
    global _known
    if value and len(value) >= MIN_SECRET_LENGTH and value not in _values:
        _values.add(value)
        _known = None


def registered_secret_names() -> frozenset[str]:
    return frozenset(_registered)


def is_secret_name(name: str) -> bool:
    return name in _registered or bool(SECRET_NAME.search(name))


def known_secrets() -> list[str]:
    """The environment's secret values, looked up once (again after a registration or ``refresh``)."""
    global _known
    if _known is None:
        _known = secret_values()
    return _known


def known_secrets_and(*extra: str) -> list[str]:
    """``known_secrets()`` plus the values given (a key read from a file, say), longest first."""
    known = known_secrets()
    more = [v for v in extra if v and len(v) >= MIN_SECRET_LENGTH and v not in known]
    return sorted([*known, *more], key=len, reverse=True) if more else known


def refresh_known_secrets() -> list[str]:
    """Look the secret values up again (the environment changed)."""
    global _known
    _known = None
    return known_secrets()


def secret_values(environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Values of secret-looking variables, longest first so overlapping secrets scrub fully."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    values.update(v for v in extra if v and len(v) >= MIN_SECRET_LENGTH)
    values.update(_values)
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def contains_secret(value: Any, secrets: list[str]) -> bool:
    """Whether any string in ``value`` (JSON-like; keys too) contains one of ``secrets``: no copies."""
    if isinstance(value, str):
        # A plain loop: twice as fast as any() over a generator, and this runs on every string of a result.
        for secret in secrets:  # noqa: SIM110
            if secret in value:
                return True
        return False
    if isinstance(value, dict):
        for key, item in value.items():
            if contains_secret(key, secrets) or contains_secret(item, secrets):
                return True
        return False
    if isinstance(value, list | tuple):
        for item in value:
            if contains_secret(item, secrets):
                return True
    return False


def scrub_data(value: Any, secrets: list[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with every string in it, keys too, scrubbed.

    One pass of ``in`` checks, and ``value`` itself back when no secret occurs in it (the usual case).
    """
    if not secrets or not contains_secret(value, secrets):
        return value
    return _scrub_all(value, secrets)


def _scrub_all(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {_scrub_all(k, secrets): _scrub_all(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_all(v, secrets) for v in value]
    return value


def without_secrets(
    environ: Mapping[str, str], keep: Iterable[str] = (), extra_names: Iterable[str] = ()
) -> dict[str, str]:
    """A copy of ``environ`` minus secret variables (by name, registered, or in ``extra_names``), except
    those named in ``keep``."""
    kept, extra = set(keep), set(extra_names)
    return {k: v for k, v in environ.items() if k in kept or (k not in extra and not is_secret_name(k))}


class ScrubbingFormatter(logging.Formatter):
    """Formats log lines (tracebacks included) with every known secret replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def log_to_stderr(level: str, *, verbose: bool = False) -> None:
    """The process's logging: stderr only (stdout may be the MCP wire), secrets scrubbed.

    LiteLLM's and its HTTP client's loggers stay at WARNING unless ``verbose``, whatever ``level``;
    with ``verbose`` they log at ``level`` too.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    root = logging.getLogger().level
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(root if verbose else max(root, logging.WARNING))


# The variable a provider's key is read from when its ``api_key_env`` names none.
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def key_env_names(llm_router: Mapping[str, Any] | None) -> list[str]:
    """Every variable a configured provider reads its key from (their values are secrets), read from the
    ``llm_router`` block as written: no validation needed, so start-up pays nothing for it."""
    providers = (llm_router or {}).get("providers")
    names = set()
    for name, provider in providers.items() if isinstance(providers, Mapping) else []:
        if isinstance(provider, Mapping):
            names.add(provider.get("api_key_env") or DEFAULT_KEY_ENV.get(provider.get("type") or name))
    return sorted(n for n in names if isinstance(n, str) and n)
