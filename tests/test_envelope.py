"""Reading a handler's stdout: which JSON document is the result, and what its envelope says."""

from __future__ import annotations

import json

import pytest

from betty_mcp.run.envelope import last_json_document, normalise


@pytest.mark.parametrize(
    ("document", "ok"),
    [
        ({"ok": True}, True),
        ({"ok": False}, False),
        ({"success": True}, True),
        ({"success": False, "violations": ["x"]}, False),
        ({"status": "success", "data": {"n": 1}}, True),
        ({"status": "failed", "errors": ["no"]}, False),
        ({"valid": True, "warnings": []}, True),
        ({"valid": False, "errors": ["bad"]}, False),
        ({"anything": "else"}, True),
    ],
)
def test_each_envelope_key_decides_the_outcome_with_exit_0(document: dict, ok: bool) -> None:
    result = normalise(document, 0)
    assert result["ok"] is ok and result["status"] == ("success" if ok else "failed")


def test_a_non_zero_exit_fails_whatever_the_envelope_says() -> None:
    assert normalise({"ok": True}, 1)["ok"] is False
    assert normalise(["a", "list"], 2) == {"ok": False, "status": "failed", "result": ["a", "list"]}


def test_the_payload_is_lifted_from_data_or_details() -> None:
    assert normalise({"status": "success", "data": {"n": 1}}, 0) == {"ok": True, "status": "success", "n": 1}
    failed = normalise({"ok": False, "status": "failed", "details": {"why": "x"}, "message": "broken"}, 1)
    assert failed["why"] == "x" and failed["errors"] == [{"message": "broken"}]


def test_logs_before_the_result_are_skipped() -> None:
    out = 'starting\n{"level": "info", "msg": "log"}\n{"ok": true, "n": 2}\n'
    assert last_json_document(out) == {"ok": True, "n": 2}


def test_the_last_document_counts_even_with_text_after_it() -> None:
    out = 'working...\n{"ok": true, "published": "pkg-1.0"}\n✓ Telemetry captured\n'
    assert last_json_document(out) == {"ok": True, "published": "pkg-1.0"}


def test_a_pretty_printed_result_followed_by_a_log_line() -> None:
    body = {"ok": True, "data": {"items": [1, 2], "nested": {"a": "{"}}}
    out = "log\n" + json.dumps(body, indent=2) + "\ndone in 3 ms\n"
    assert last_json_document(out) == body


@pytest.mark.parametrize(
    "out", ["", "plain text only\n", "half a doc {\n", '{"unclosed": \n', "[1, 2] trailing\n"]
)
def test_no_complete_document_means_none(out: str) -> None:
    assert last_json_document(out) is None


def test_a_deeply_nested_line_does_not_crash_the_reader() -> None:
    assert last_json_document("[" * 100_000 + "\n") is None
