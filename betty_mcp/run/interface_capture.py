"""Reading a handler's interface by running it until its first ``parse_args`` (``capture_child.py``).

The child gets exactly the call's environment and working directory, its own session, stdin from
/dev/null; its output is ignored, and its whole process group is killed on timeout and after it
exits. A handler that exits, raises or times out before parsing falls back to the static reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from betty_mcp.core.errors import CaptureStopped
from betty_mcp.core.handler_interface import HandlerInterface, ParserAction
from betty_mcp.run.interface_static import read_statically

CHILD = Path(__file__).with_name("capture_child.py")
# Captures in flight (process group id -> stopped by us), so a server that is stopping ends them at once.
_running: dict[int, bool] = {}
_lock = threading.Lock()


def stop_captures() -> None:
    """End every capture in flight (the server is exiting); each raises CaptureStopped in its thread."""
    with _lock:
        for pid in _running:
            _running[pid] = True
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit WITHOUT reaping it (its process group id stays valid); False on timeout."""
    deadline = time.monotonic() + timeout
    pidfd = -1
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    try:
        if pidfd >= 0:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(InterruptedError):
                    if select.select([pidfd], [], [], remaining)[0]:
                        return True
        delay = 0.001
        while True:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _last_line(path: Path, limit: int = 200) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def capture(
    handler: Path, *, python: str, env: dict[str, str], cwd: Path, timeout: float = 5.0
) -> HandlerInterface:
    """Run ``handler`` until its first ``parse_args`` and return the parser's actions.

    On failure (exit, exception, timeout before parsing) the result is ``read_statically`` (source
    "ast") or an empty source "manifest" interface, with ``problem`` saying what happened.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="betty-mcp-capture-") as tmp:
        channel = Path(tmp) / "interface.json"
        channel.touch(mode=0o600)
        stderr_path = Path(tmp) / "stderr"
        timed_out = False
        with stderr_path.open("wb") as stderr:
            try:
                proc = subprocess.Popen(
                    [python, str(CHILD), str(channel), str(handler.absolute())],
                    env=dict(env),
                    cwd=str(cwd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                return _fallback(handler, f"cannot start {python}: {exc.strerror or exc}", started)
            with _lock:
                _running[proc.pid] = False
            try:
                timed_out = not _wait_unreaped(proc.pid, timeout)
            finally:
                _kill_group(proc.pid)  # the handler's children too; the leader is not reaped yet
                proc.wait()
                with _lock:
                    stopped = _running.pop(proc.pid)
            if stopped:
                raise CaptureStopped(f"reading {handler.name}'s interface was stopped: the server is exiting")
        try:
            payload = json.loads(channel.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            payload = None
        if timed_out:
            return _fallback(handler, f"timed out after {timeout:g}s", started)
        if not isinstance(payload, dict):
            code = proc.returncode
            if code is not None and code < 0:
                problem = f"killed by signal {-code} before parsing its arguments"
            else:
                problem = f"exited {code} before parsing its arguments"
            detail = _last_line(stderr_path)
            return _fallback(handler, f"{problem}: {detail}" if detail else problem, started)
        status = payload.get("status")
        if status == "parsed":
            try:
                parser = payload["parser"]
                return HandlerInterface(
                    source="parser",
                    actions=tuple(ParserAction.from_dict(a) for a in parser["actions"]),
                    unsupported=parser.get("unsupported"),
                    required_groups=tuple(parser.get("required_groups") or ()),
                    capture_ms=ms_since(started),
                )
            except (KeyError, TypeError, ValueError) as exc:
                return _fallback(handler, f"unreadable capture: {exc}", started)
        if status == "exited":
            code = payload.get("code")
            if isinstance(code, str):
                problem = f"exited 1 before parsing its arguments: {code[:200]}"
            else:
                problem = f"exited {code or 0} before parsing its arguments"
                detail = _last_line(stderr_path)
                if detail:
                    problem += f": {detail}"
        elif status == "raised":
            problem = str(payload.get("error"))[:300]
        else:
            problem = "ran to the end without calling parse_args"
        return _fallback(handler, problem, started)


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _fallback(handler: Path, problem: str, started: float) -> HandlerInterface:
    static = read_statically(handler)
    if static is None:
        return HandlerInterface(source="manifest", problem=problem, capture_ms=ms_since(started))
    joined = f"{problem}; {static.problem}" if static.problem else problem
    return replace(static, problem=joined, capture_ms=ms_since(started))
