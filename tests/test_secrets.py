"""Secrets: recognised by name, kept from skills, scrubbed from text and log lines."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from betty_mcp.core.secrets import (
    REDACTED,
    ScrubbingFormatter,
    is_secret_name,
    known_secrets,
    register_secret_names,
    registered_secret_names,
    scrub,
    scrub_data,
    secret_values,
    without_secrets,
)
from tests.conftest import stdio_client


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


# -- keys in variables whose names do not look secret (api_key_env: LLM_CREDS) -----------------


def test_registered_names_are_secrets_whatever_they_look_like(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIN_CREDS_FOR_TEST", "plain-creds-value-42")
    assert not is_secret_name("PLAIN_CREDS_FOR_TEST")
    before = known_secrets()
    register_secret_names(["PLAIN_CREDS_FOR_TEST", ""])
    assert is_secret_name("PLAIN_CREDS_FOR_TEST") and "PLAIN_CREDS_FOR_TEST" in registered_secret_names()
    env = {"PLAIN_CREDS_FOR_TEST": "plain-creds-value-42", "PATH": "/usr/bin"}
    assert without_secrets(env) == {"PATH": "/usr/bin"}
    assert without_secrets(env, keep=["PLAIN_CREDS_FOR_TEST"]) == env
    assert without_secrets({"OTHER_CREDS": "x", "PATH": "/usr/bin"}, extra_names=["OTHER_CREDS"]) == {
        "PATH": "/usr/bin"
    }
    assert "plain-creds-value-42" in secret_values()
    assert "plain-creds-value-42" in known_secrets() and known_secrets() is known_secrets()
    assert "plain-creds-value-42" not in before, "the registration refreshed the looked-up values"
    assert scrub("key: plain-creds-value-42") == f"key: {REDACTED}"


def test_scrub_data_scrubs_every_string_and_copies_nothing_clean() -> None:
    key = "sk-nested-0123456789"
    secrets = [key]
    clean = {"a": ["x", {"b": 1}], "c": None}
    assert scrub_data(clean, secrets) is clean
    dirty = {"a": ["x", {"b": f"key {key}"}], key: (1, key)}
    assert scrub_data(dirty, secrets) == {"a": ["x", {"b": f"key {REDACTED}"}], REDACTED: [1, REDACTED]}
    assert scrub_data("no secret", []) == "no secret"


def test_a_stream_sink_never_shows_a_key_not_even_part_of_one() -> None:
    """Progress messages show the end of what was streamed so far: a key split across chunks must not
    show there in part either."""
    from betty_mcp.llm.types import StreamSink

    key = "sk-streamed-key-0123456789"
    text = "before the key " + key + " and after it, " + key + " twice"
    sink = StreamSink()
    sink.start("m", ["short-one", key])
    for char in text:
        sink.append(char)
        assert all(key[i : i + 6] not in sink.text for i in range(len(key) - 5)), sink.text
    whole = scrub(text, [key])
    assert whole.startswith(sink.text) and len(sink.text) >= len(whole) - len(key), "held back: the end only"
    assert sink.text.startswith("before the key [REDACTED] and after it,")
    plain = StreamSink()
    plain.start("m", [])
    plain.append(key)
    assert plain.text == key, "no secrets known: the text as received"


def test_litellm_logs_stay_at_warning_unless_verbose(tmp_path: Path) -> None:
    code = (
        "import logging, sys; from betty_mcp.core.secrets import log_to_stderr;"
        "log_to_stderr('debug', verbose=sys.argv[1] == 'verbose');"
        "logging.getLogger('LiteLLM').info('litellm-info');"
        "logging.getLogger('httpx').debug('httpx-debug');"
        "logging.getLogger('LiteLLM').warning('litellm-warning');"
        "logging.getLogger('betty').debug('own-debug')"
    )

    def stderr(mode: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, cwd=tmp_path, check=True
        ).stderr

    quiet, verbose = stderr("quiet"), stderr("verbose")
    assert "own-debug" in quiet and "litellm-warning" in quiet
    assert "litellm-info" not in quiet and "httpx-debug" not in quiet
    assert "litellm-info" in verbose and "httpx-debug" in verbose


CREDS = "llm-creds-value-0123456789"
CREDS_HANDLER = """import json, os
print(json.dumps({"ok": True, "sees": "LLM_CREDS" in os.environ, "echo": os.environ.get("LLM_CREDS")}))
"""


def write_creds_skill(skills_dir: Path, name: str, env: list[str]) -> None:
    folder = skills_dir / name
    folder.mkdir(parents=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": "Says whether it sees LLM_CREDS (test).",
        "status": "active",
        "entrypoints": [{"handler": "creds.py"}],
        **({"mcp": {"env": env}} if env else {}),
    }
    (folder / "skill.yaml").write_text(yaml.safe_dump(manifest))
    (folder / "creds.py").write_text(CREDS_HANDLER)


@pytest.mark.anyio
async def test_a_key_in_a_plainly_named_variable_is_kept_from_handlers_and_scrubbed(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    skills = tmp_path / "skills"
    write_creds_skill(skills, "creds.plain", [])
    write_creds_skill(skills, "creds.declared", ["LLM_CREDS"])
    router = {
        "providers": {
            "private": {"endpoint": "http://127.0.0.1:9", "api_key_env": "LLM_CREDS", "models": ["m"]}
        }
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))
    async with stdio_client(workspace, "--skills-dir", str(skills), env={"LLM_CREDS": CREDS}) as client:
        plain = await client.call_tool("creds_plain", {})
        declared = await client.call_tool("creds_declared", {})
    assert not plain.is_error and plain.structured_content["sees"] is False
    assert not declared.is_error and declared.structured_content["sees"] is True, "declared in mcp.env"
    assert declared.structured_content["echo"] == REDACTED, "and what it prints of it is scrubbed"
    assert CREDS not in declared.content[0].text


def test_the_database_url_reaches_only_skills_that_call_llms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared database's URL carries its password: a third-party handler never sees it; the bundled
    LLM skills get it (their calls count in the shared ledger and budgets)."""
    from betty_mcp.core.config import DATABASE_URL_ENV, SETTINGS_ENV, Settings, load_settings
    from betty_mcp.run.invocation import Invocations
    from betty_mcp.services import Services
    from tests.conftest import FIXTURE_SKILLS

    url = "postgresql://team:pw-db-0123456789@127.0.0.1/betty"
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(workspace=tmp_path, skills_dirs=[FIXTURE_SKILLS])
    skills = Services(settings).catalog.skills
    invocations = Invocations(settings)
    plain = invocations.env(skills["test.env"])
    assert not [name for name, value in plain.items() if "pw-db" in value]
    assert Settings.model_validate_json(plain[SETTINGS_ENV]).database_url is None
    for name in ("llm.query", "llm.consensus"):
        given = invocations.env(skills[name])
        assert DATABASE_URL_ENV not in given
        assert Settings.model_validate_json(given[SETTINGS_ENV]).database == url
