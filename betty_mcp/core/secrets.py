"""Recognising secrets in the environment, and scrubbing them from any text that leaves us."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping

SECRET_NAME = re.compile(
    r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|_KEY$|^AUTH|_AUTH$|SESSION_?ID)",
    re.IGNORECASE,
)
MIN_SECRET_LENGTH = 6
REDACTED = "[REDACTED]"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Values of secret-looking variables, longest first so overlapping secrets scrub fully."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    values.update(v for v in extra if v and len(v) >= MIN_SECRET_LENGTH)
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def without_secrets(environ: Mapping[str, str], keep: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``environ`` minus secret-looking variables, except those named in ``keep``."""
    kept = set(keep)
    return {k: v for k, v in environ.items() if k in kept or not is_secret_name(k)}


class ScrubbingFormatter(logging.Formatter):
    """Formats log lines (tracebacks included) with every known secret replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def log_to_stderr(level: str) -> None:
    """The process's logging: stderr only (stdout may be the MCP wire), secrets scrubbed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
