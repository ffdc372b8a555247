"""Secrets: recognised by name, kept from skills, scrubbed from text and log lines."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from betty_mcp.core.secrets import (
    REDACTED,
    ScrubbingFormatter,
    is_secret_name,
    scrub,
    secret_values,
    without_secrets,
)


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "MY_PRIVATE_KEY",
        "SLACK_AUTH",
    ],
)
def test_secret_names_are_recognised(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "PYTHONPATH", "LANG", "BETTY_WORKSPACE"])
def test_ordinary_names_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_scrub_replaces_every_known_value_longest_first() -> None:
    env = {"A_API_KEY": "sk-abcdef", "B_TOKEN": "sk-abcdef-longer", "PATH": "/usr/bin"}
    secrets = secret_values(env)
    assert scrub("key sk-abcdef-longer and sk-abcdef on /usr/bin", secrets) == (
        f"key {REDACTED} and {REDACTED} on /usr/bin"
    )
    assert without_secrets(env, keep=["B_TOKEN"]) == {"B_TOKEN": "sk-abcdef-longer", "PATH": "/usr/bin"}


def test_log_lines_and_tracebacks_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_API_KEY", "sk-live-0123456789")
    try:
        raise RuntimeError("provider said: bad key sk-live-0123456789")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "calling with %s", ("sk-live-0123456789",), sys.exc_info()
        )
    text = ScrubbingFormatter("%(message)s").format(record)
    assert "sk-live-0123456789" not in text and text.count(REDACTED) >= 2 and "RuntimeError" in text


def test_the_server_logs_to_stderr_with_secrets_scrubbed(tmp_path) -> None:
    code = (
        "import logging; from betty_mcp.core.secrets import log_to_stderr; log_to_stderr('info');"
        "logging.getLogger('t').warning('token is %s', 'ghp_secretvalue123')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "GITHUB_TOKEN": "ghp_secretvalue123"},
        check=True,
    )
    assert out.stdout == "" and "ghp_secretvalue123" not in out.stderr and REDACTED in out.stderr
