"""Running a skill: one subprocess per call, in its own process group, bounded and killable.

The whole group is killed on timeout, on cancellation and after the handler exits (so no
grandchild outlives a call). Concurrency is bounded by a capacity limiter. A result too
large for a host is cut to a preview; the full output is kept under the workspace's run
folder and referenced from the result.

    runner = SkillRunner(settings)
    result = await runner.run(skill, {"spec_path": "openapi.yaml"})
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from betty_mcp.core.catalog import Skill
from betty_mcp.core.config import Settings
from betty_mcp.core.errors import ArgumentsError
from betty_mcp.core.rules import failure_envelope, new_output_id
from betty_mcp.core.secrets import scrub, secret_values
from betty_mcp.run.envelope import last_json_document, normalise
from betty_mcp.run.invocation import Invocation, Invocations, check_paths
from betty_mcp.run.zygote import ZYGOTE_ENV, Zygote

log = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]
HEARTBEAT_SECONDS = 5.0


@dataclass
class SkillResult:
    ok: bool
    structured: dict[str, Any]
    text: str
    exit_code: int | None = None
    duration_ms: float = 0.0
    output_file: Path | None = None
    call_id: str = field(default_factory=new_output_id)


@dataclass
class _Captured:
    stdout: bytearray = field(default_factory=bytearray)
    stderr_tail: bytearray = field(default_factory=bytearray)
    overflow: bool = False


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _collect(
    process: subprocess.Popen[bytes], stdin: bytes | None, captured: _Captured, cap: int, keep: int
) -> None:
    """Feed stdin, drain stdout (capped) and stderr (its tail) until both close, then reap.

    Once the handler has exited, whatever is left of its process group is killed: a stray
    grandchild holding the pipes open must not keep the call waiting.
    """
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        pending = memoryview(stdin) if stdin is not None else None
        if process.stdin is not None:
            if pending:
                os.set_blocking(process.stdin.fileno(), False)
                selector.register(process.stdin, selectors.EVENT_WRITE, "in")
            else:
                process.stdin.close()
        while selector.get_map():
            events = selector.select(timeout=0.2)
            if not events and process.poll() is not None:
                _kill_group(process.pid)
            for key, _ in events:
                if key.data == "in":
                    try:
                        written = os.write(key.fd, pending[:65536])  # type: ignore[index]
                    except BrokenPipeError:
                        written = len(pending)  # type: ignore[arg-type]
                    pending = pending[written:]  # type: ignore[index]
                    if not pending:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                elif key.data == "err":
                    captured.stderr_tail += chunk
                    if len(captured.stderr_tail) > 2 * keep + 4096:
                        del captured.stderr_tail[: len(captured.stderr_tail) - keep]
                elif len(captured.stdout) + len(chunk) > cap:
                    captured.overflow = True
                    _kill_group(process.pid)
                else:
                    captured.stdout += chunk
    process.wait()  # the pipes are closed: the handler is exiting, or its group was killed


class SkillRunner:
    def __init__(self, settings: Settings, invocations: Invocations | None = None) -> None:
        self.settings = settings
        self.invocations = invocations or Invocations(settings)
        self._limiter = anyio.CapacityLimiter(settings.limits.max_concurrent_skills)
        self._base_env = self.invocations.base_env  # shared: the zygote's address goes in it
        self._secrets = secret_values()  # the environment's secrets, looked up once
        self._zygote: Zygote | None = None
        if os.environ.get(ZYGOTE_ENV):  # inside a handler (workflow.run): use the server's zygote
            self._zygote = Zygote.attach(os.environ[ZYGOTE_ENV])
        elif settings.limits.fork_server:
            self._zygote = Zygote(self._base_env, str(settings.workspace))
            self._base_env[ZYGOTE_ENV] = self._zygote.path

    def close(self) -> None:
        """Stop this runner's zygote (if it started one) and remove its socket folder."""
        if self._zygote is not None:
            self._zygote.close()

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    async def run(
        self, skill: Skill, arguments: dict[str, Any], progress: Progress | None = None
    ) -> SkillResult:
        """Run ``skill`` with already schema-validated ``arguments``; never raises for handler failures.

        The handler's interface is read first if the caller has not (``Invocations.with_interface``).
        """
        try:
            if skill.interface is None:
                skill = await anyio.to_thread.run_sync(self.invocations.with_interface, skill)
            check_paths(skill, arguments, self.settings)
            invocation = self.invocations.build(skill, arguments)
        except ArgumentsError as exc:
            return self._failure(str(exc), code="invalid_arguments")
        timeout = skill.manifest.mcp.timeout_seconds or self.settings.limits.skill_timeout_seconds
        async with self._limiter:
            started = time.perf_counter()
            captured, exit_code, timed_out = await self._execute(invocation, timeout, skill, progress)
            duration_ms = (time.perf_counter() - started) * 1000
        result = self._interpret(skill, captured, exit_code, timed_out, timeout)
        result.duration_ms = duration_ms
        return result

    async def _execute(
        self, invocation: Invocation, timeout: float, skill: Skill, progress: Progress | None
    ) -> tuple[_Captured, int | None, bool]:
        """Spawn, then collect output in a worker thread (cheaper per call than asyncio's pipes).

        Timeout and cancellation kill the process group, which closes the pipes and ends the thread.
        """
        limits = self.settings.limits
        process = self._fork(invocation, skill) or subprocess.Popen(
            invocation.argv,
            stdin=subprocess.PIPE if invocation.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=invocation.cwd,
            env=invocation.env,
            start_new_session=True,
        )
        captured = _Captured()
        timed_out = False
        try:
            with anyio.move_on_after(timeout) as deadline:
                async with anyio.create_task_group() as tg:
                    if progress is not None:
                        tg.start_soon(self._heartbeat, progress, skill.name)
                    await anyio.to_thread.run_sync(
                        _collect,
                        process,
                        invocation.stdin,
                        captured,
                        limits.max_output_bytes,
                        limits.stderr_tail_chars,
                        abandon_on_cancel=True,
                    )
                    tg.cancel_scope.cancel()
            timed_out = deadline.cancelled_caught
        finally:
            _kill_group(process.pid)
            with anyio.CancelScope(shield=True):
                if process.poll() is None:
                    await anyio.to_thread.run_sync(process.wait)
        return captured, None if timed_out else process.returncode, timed_out

    def _fork(self, invocation: Invocation, skill: Skill) -> Any:
        """A handler forked from the warm zygote when it can run this call, else None."""
        if (
            self._zygote is None
            or invocation.stdin is not None
            or invocation.argv[0] != sys.executable
            or skill.source == "betty-home"  # its own PYTHONPATH: a fresh interpreter
        ):
            return None
        return self._zygote.fork(invocation.argv[1:], str(invocation.cwd), invocation.env)

    @staticmethod
    async def _heartbeat(progress: Progress, name: str) -> None:
        started = time.monotonic()
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await progress(f"{name}: running for {time.monotonic() - started:.0f}s")

    def _interpret(
        self, skill: Skill, captured: _Captured, exit_code: int | None, timed_out: bool, timeout: float
    ) -> SkillResult:
        limits = self.settings.limits
        stdout = captured.stdout.decode("utf-8", errors="replace")
        stderr = self._scrub(
            captured.stderr_tail.decode("utf-8", errors="replace")[-limits.stderr_tail_chars :]
        )
        if timed_out:
            return self._failure(
                f"skill '{skill.name}' timed out after {timeout:g}s and was killed",
                code="timeout",
                stderr=stderr,
                stdout=stdout,
            )
        if captured.overflow:
            return self._failure(
                f"skill '{skill.name}' printed more than {limits.max_output_bytes} bytes and was killed",
                code="output_too_large",
                stderr=stderr,
                stdout=stdout,
            )
        assert exit_code is not None
        doc = last_json_document(stdout)
        if doc is None:
            if exit_code == 0:  # plain text is a result too: a success whose content is the text
                output = self._scrub(stdout.strip())
                envelope = {"ok": True, "status": "success", "output": output}
                result = self._finish(envelope, exit_code=0, stdout=stdout)
                if result.output_file is None:
                    result.text = output
                return result
            last_line = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
            message = f"skill '{skill.name}' failed with exit code {exit_code}" + (
                f": {last_line.strip()[:300]}" if last_line else ""
            )
            return self._failure(message, code="no_result", exit_code=exit_code, stderr=stderr, stdout=stdout)
        structured = normalise(doc, exit_code)
        if not structured["ok"]:
            structured.setdefault("errors", [{"code": "failed", "message": f"exit code {exit_code}"}])
            if exit_code != 0:
                structured["exit_code"] = exit_code
            if stderr.strip():
                structured["stderr_tail"] = stderr
        return self._finish(structured, exit_code=exit_code, stdout=stdout)

    def _failure(
        self, message: str, *, code: str, exit_code: int | None = None, stderr: str = "", stdout: str = ""
    ) -> SkillResult:
        structured = failure_envelope(message, code)
        if exit_code is not None:
            structured["exit_code"] = exit_code
        if stderr.strip():
            structured["stderr_tail"] = stderr
        if stdout.strip():
            structured["stdout_head"] = self._scrub(stdout[:1000])
        return self._finish(structured, exit_code=exit_code, stdout=stdout)

    def _finish(self, structured: dict[str, Any], *, exit_code: int | None, stdout: str) -> SkillResult:
        """Cap the result for hosts; keep the full output in the run folder when anything is cut."""
        raw = json.dumps(structured, ensure_ascii=False, default=str)
        text = self._scrub(raw)
        if text != raw:
            structured = json.loads(text)
        result = SkillResult(ok=structured["ok"], structured=structured, text=text, exit_code=exit_code)
        cap = self.settings.limits.max_result_chars
        if len(text) <= cap and len(stdout) <= cap:
            return result
        folder = self.settings.runs_dir / "outputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{result.call_id}.json"
        path.write_text(text, encoding="utf-8")
        (folder / f"{result.call_id}.stdout.txt").write_text(self._scrub(stdout), encoding="utf-8")
        reference = {"output_file": str(path), "output_resource": f"betty://outputs/{result.call_id}"}
        if len(text) > cap:
            structured = {
                "ok": structured["ok"],
                "status": structured["status"],
                "truncated": True,
                "output_chars": len(text),
                "preview": text[: cap // 2],
                **({} if structured["ok"] else {"errors": structured.get("errors", [])[:20]}),
            }
        structured = {**structured, **reference}
        result.structured = structured
        result.text = json.dumps(structured, ensure_ascii=False, default=str)
        result.output_file = path
        return result
