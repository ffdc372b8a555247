"""Running a skill: one process per call (forked from the zygote, or spawned), bounded and killable.

Every process a call starts dies with the call, whatever session it makes: on timeout, on
cancellation, and once the handler has exited (``reaper.py``: a cgroup per call, else /proc
tracking). Collecting a call's output ends when the handler exits, plus a short drain for what is
still buffered; whatever is left of its processes is then killed, so a grandchild holding the
pipes open neither delays the result nor keeps a thread (and the server's exit) waiting.
Concurrency is bounded by a capacity limiter. A result too large for a host is cut to a preview;
the full output is kept under the workspace's run folder and referenced from the result.

Command lines: a Python handler forked from the zygote gets its argv in-process, so an argument
of any size (up to the zygote's job limit) works. A spawned handler's command line must fit
``execve``'s limits (128 KiB per argument, ``ARG_MAX`` in all): a call whose command line would
not is run through the zygote when it can be (waiting for it to be ready), and otherwise refused
with a clear error naming the argument, rather than failing with ``E2BIG``.

    runner = SkillRunner(settings)
    result = await runner.run(skill, {"spec_path": "openapi.yaml"})
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from betty_mcp.core.catalog import Skill
from betty_mcp.core.config import Settings
from betty_mcp.core.errors import ArgumentsError, PathOutsideWorkspace
from betty_mcp.core.rules import confined, failure_envelope, new_output_id
from betty_mcp.core.secrets import scrub, secret_values
from betty_mcp.run.envelope import last_json_document, normalise
from betty_mcp.run.invocation import Invocation, Invocations, check_paths
from betty_mcp.run.reaper import CALL_ENV, CGROUPS_ENV, CallScope, Containment, cgroups_asked
from betty_mcp.run.zygote import MAX_JOB, ZYGOTE_ENV, ForkedHandler, Zygote

log = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]
HEARTBEAT_SECONDS = 5.0
DRAIN_SECONDS = 0.2  # after the handler exits, how long its output may still come before the kill
KILL_GRACE_SECONDS = 1.0  # after that kill, how long to wait for the pipes to close before giving up
ZYGOTE_WAIT_SECONDS = 30.0  # how long a call too large for a command line waits for the zygote
MAX_ARG_STRLEN = 32 * 4096  # Linux: the longest single argument execve takes, its NUL included


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


class _StartFailure(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _exec_limit() -> int:
    try:
        return max(MAX_ARG_STRLEN, os.sysconf("SC_ARG_MAX") - 16 * 1024)
    except (ValueError, OSError):
        return MAX_ARG_STRLEN


def command_line_problem(invocation: Invocation, arguments: dict[str, Any]) -> str | None:
    """Why ``invocation`` cannot be exec'd (a command line over execve's limits), or None."""
    sizes = [len(os.fsencode(a)) + 1 for a in invocation.argv]
    total = sum(sizes) + sum(len(os.fsencode(f"{k}={v}")) + 1 for k, v in invocation.env.items())
    total += 8 * (len(sizes) + len(invocation.env) + 2)  # the pointer arrays count too
    limit = _exec_limit()
    if max(sizes) <= MAX_ARG_STRLEN and total <= limit:
        return None
    rendered = {
        name: len((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode())
        for name, value in arguments.items()
    }
    limits = f"limit {MAX_ARG_STRLEN - 1} bytes for one argument, {limit} for the whole command line"
    if not rendered:
        return f"the command line is {total} bytes; too large for a command line ({limits})"
    name = max(rendered, key=lambda n: rendered[n])
    return (
        f"argument '{name}' is {rendered[name]} bytes; too large for a command line ({limits}); "
        "pass it in a file"
    )


class _Collector:
    """The worker thread's side of a call. From the moment it starts it owns the handler's pipes and
    exit descriptor, and it releases them when done: the runner may have stopped waiting for it (a
    timeout, a cancellation) and must not close descriptors a running thread still watches."""

    def __init__(self, process: Any, stdin: bytes | None, captured: _Captured, cap: int, keep: int) -> None:
        self.process, self.stdin, self.captured, self.cap, self.keep = process, stdin, captured, cap, keep
        self._lock = threading.Lock()
        self._started = self._abandoned = False

    def run(self, kill: Callable[[], None]) -> None:
        with self._lock:
            if self._abandoned:
                return
            self._started = True
        exit_fd = self._exit_fd()
        try:
            _collect(self.process, exit_fd, self.stdin, self.captured, self.cap, self.keep, kill)
        except BaseException:
            kill()  # or release() would wait for a handler nobody reads any more
            raise
        finally:
            self.release(exit_fd)

    def _exit_fd(self) -> int | None:
        """A descriptor readable once the handler has exited (a pidfd), or None: poll then."""
        if isinstance(self.process, subprocess.Popen):
            try:
                return os.pidfd_open(self.process.pid)
            except (AttributeError, OSError):
                return None
        return self.process.exit_fd()

    def release(self, exit_fd: int | None = None) -> None:
        """Reap the handler (it has exited, or was killed) and close what the call opened."""
        self.process.wait()
        if isinstance(self.process, subprocess.Popen):
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if exit_fd is not None:
                os.close(exit_fd)
        else:
            self.process.close()

    def abandon(self) -> bool:
        """The runner is done with the call: True when the thread never started (release it yourself)."""
        with self._lock:
            self._abandoned = not self._started
            return self._abandoned


def _collect(
    process: Any,
    exit_fd: int | None,
    stdin: bytes | None,
    captured: _Captured,
    cap: int,
    keep: int,
    kill: Callable[[], None],
) -> None:
    """Feed stdin, drain stdout (capped) and stderr (its tail) until the handler is done, then reap.

    Done means: both pipes closed, or the handler exited and ``DRAIN_SECONDS`` passed. Then whatever
    is left of the call is killed (``kill``): a stray grandchild holding the pipes open must not keep
    the call waiting; and if the pipes still do not close, reading stops ``KILL_GRACE_SECONDS`` later.
    """
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        if exit_fd is not None:
            selector.register(exit_fd, selectors.EVENT_READ, "exit")
        pending = memoryview(stdin) if stdin is not None else None
        if process.stdin is not None:
            if pending:
                os.set_blocking(process.stdin.fileno(), False)
                selector.register(process.stdin, selectors.EVENT_WRITE, "in")
            else:
                process.stdin.close()
        streams = 2
        exited_at: float | None = None
        killed_at: float | None = None
        while streams:
            if exited_at is None:
                timeout = None if exit_fd is not None else 0.1
            elif killed_at is None:
                timeout = max(0.0, exited_at + DRAIN_SECONDS - time.monotonic())
            else:
                timeout = max(0.0, killed_at + KILL_GRACE_SECONDS - time.monotonic())
            events = selector.select(timeout)
            for key, _ in events:
                if key.data == "exit":
                    selector.unregister(key.fileobj)
                    exited_at = time.monotonic()
                elif key.data == "in":
                    try:
                        written = os.write(key.fd, pending[:65536])  # type: ignore[index]
                    except (BrokenPipeError, BlockingIOError):
                        written = len(pending)  # type: ignore[arg-type]
                    pending = pending[written:]  # type: ignore[index]
                    if not pending:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                    continue
                else:
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                        streams -= 1
                    elif key.data == "err":
                        captured.stderr_tail += chunk
                        if len(captured.stderr_tail) > 2 * keep + 4096:
                            del captured.stderr_tail[: len(captured.stderr_tail) - keep]
                    elif len(captured.stdout) + len(chunk) > cap:
                        if not captured.overflow:
                            captured.overflow = True
                            kill()
                    else:
                        captured.stdout += chunk
            if exited_at is None and exit_fd is None and not events and process.poll() is not None:
                exited_at = time.monotonic()
            now = time.monotonic()
            if exited_at is not None and killed_at is None and streams and now >= exited_at + DRAIN_SECONDS:
                kill()
                killed_at = now
            if killed_at is not None and streams and now >= killed_at + KILL_GRACE_SECONDS:
                log.warning("a handler's pipes stayed open after its processes were killed; not read further")
                break
        for key in list(selector.get_map().values()):
            if key.data in ("out", "err", "in"):
                key.fileobj.close()  # type: ignore[union-attr]


class SkillRunner:
    def __init__(self, settings: Settings, invocations: Invocations | None = None) -> None:
        self.settings = settings
        self.invocations = invocations or Invocations(settings)
        self._limiter = anyio.CapacityLimiter(settings.limits.max_concurrent_skills)
        self._base_env = self.invocations.base_env  # shared: the zygote's address goes in it
        self._secrets = secret_values()  # the environment's secrets, looked up once
        cgroups = settings.limits.call_cgroups or cgroups_asked()
        if cgroups:  # handlers running skills themselves (workflow.run) make the same choice
            self._base_env[CGROUPS_ENV] = "1"
        self._containment = Containment(cgroups)  # a cgroup per call or /proc tracking, decided at first use
        self._zygote: Zygote | None = None
        self._forked: set[int] = set()  # handlers forked by this runner's zygote, running now
        if os.environ.get(ZYGOTE_ENV):  # inside a handler (workflow.run): use the server's zygote
            self._zygote = Zygote.attach(os.environ[ZYGOTE_ENV])
        elif settings.limits.fork_server:
            self._zygote = Zygote(self._base_env, str(settings.workspace))  # nothing created yet
            self._base_env[ZYGOTE_ENV] = self._zygote.path

    def warm_up(self) -> None:
        """Start the zygote now, so the first calls are forked from it too."""
        if self._zygote is not None:
            self._zygote.start()

    def close(self) -> None:
        """Stop this runner's zygote (if it started one), remove its socket folder and call cgroups."""
        if self._zygote is not None:
            self._zygote.close()
        self._containment.close()

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
            try:
                captured, exit_code, timed_out = await self._execute(
                    invocation, timeout, skill, arguments, progress
                )
            except _StartFailure as exc:
                return self._failure(f"skill '{skill.name}': {exc}", code=exc.code)
            duration_ms = (time.perf_counter() - started) * 1000
        result = self._interpret(skill, captured, exit_code, timed_out, timeout)
        result.duration_ms = duration_ms
        return result

    async def _execute(
        self,
        invocation: Invocation,
        timeout: float,
        skill: Skill,
        arguments: dict[str, Any],
        progress: Progress | None,
    ) -> tuple[_Captured, int | None, bool]:
        """Start the handler, then collect output in a worker thread (cheaper per call than asyncio's
        pipes). Whatever happens (completion, timeout, cancellation), every process of the call is
        killed at the end, which also ends the thread.

        The exit code is None when the call timed out, or when the handler's status was lost.
        """
        limits = self.settings.limits
        scope = self._containment.open()
        invocation.env[CALL_ENV] = scope.env_value(invocation.env.get(CALL_ENV))
        try:
            process = await self._start(invocation, skill, arguments, scope)
        except BaseException:
            scope.release()
            raise
        captured = _Captured()
        collector = _Collector(
            process, invocation.stdin, captured, limits.max_output_bytes, limits.stderr_tail_chars
        )
        timed_out = False
        forked = isinstance(process, ForkedHandler)
        if forked:
            self._forked.add(process.pid)
        try:
            with anyio.move_on_after(timeout) as deadline:
                async with anyio.create_task_group() as tg:
                    done = anyio.Event()  # ends the heartbeat (cancelling a scope costs more)
                    if progress is not None:
                        tg.start_soon(self._heartbeat, progress, skill.name, done)
                    await anyio.to_thread.run_sync(
                        collector.run, lambda: scope.kill(process), abandon_on_cancel=True
                    )
                    done.set()
            timed_out = deadline.cancelled_caught
        finally:
            with anyio.CancelScope(shield=True):
                if scope.cgroup is not None:
                    scope.kill(process)  # one write: no need for a thread
                elif forked and not timed_out and self._no_strays(process):
                    scope.kill(process, scan=False)
                else:
                    await anyio.to_thread.run_sync(scope.kill, process)  # a scan of /proc
                if collector.abandon():
                    await anyio.to_thread.run_sync(collector.release)
            scope.release()
            if forked:
                self._forked.discard(process.pid)
        if timed_out or getattr(process, "status_lost", False):
            return captured, None, timed_out
        return captured, process.returncode, False

    def _forkable(self, invocation: Invocation, skill: Skill) -> bool:
        return not (
            self._zygote is None
            or invocation.stdin is not None
            or invocation.argv[0] != sys.executable
            or skill.source == "betty-home"  # its own PYTHONPATH: a fresh interpreter
        )

    def _fork(self, invocation: Invocation, skill: Skill, scope: CallScope) -> Any:
        """A handler forked from the warm zygote when it can run this call, else None."""
        if not self._forkable(invocation, skill):
            return None
        assert self._zygote is not None
        cgroup = str(scope.cgroup) if scope.cgroup is not None else None
        return self._zygote.fork(invocation.argv[1:], str(invocation.cwd), invocation.env, cgroup)

    async def _start(
        self, invocation: Invocation, skill: Skill, arguments: dict[str, Any], scope: CallScope
    ) -> Any:
        """The running handler: forked from the zygote, else spawned (see the module docstring)."""
        process = self._fork(invocation, skill, scope)
        if process is not None:
            return process
        problem = command_line_problem(invocation, arguments)
        if problem is not None:
            if self._forkable(invocation, skill) and self._job_fits(invocation):
                deadline = time.monotonic() + ZYGOTE_WAIT_SECONDS
                assert self._zygote is not None
                while process is None and self._zygote.starting() and time.monotonic() < deadline:
                    await anyio.sleep(0.05)
                    process = self._fork(invocation, skill, scope)
                if process is not None:
                    return process
            raise _StartFailure(problem, "arguments_too_large")
        try:
            process = subprocess.Popen(
                invocation.argv,
                stdin=subprocess.PIPE if invocation.stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=invocation.cwd,
                env=invocation.env,
                start_new_session=True,
            )
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise _StartFailure(
                    f"its command line is too large to start it ({exc.strerror}); pass large values "
                    "in a file",
                    "arguments_too_large",
                ) from None
            raise
        scope.adopt(process.pid)
        return process

    @staticmethod
    def _job_fits(invocation: Invocation) -> bool:
        size = sum(len(a) for a in invocation.argv) + sum(len(k) + len(v) for k, v in invocation.env.items())
        return size < MAX_JOB // 2  # a rough bound: JSON may double what it escapes

    @staticmethod
    async def _heartbeat(progress: Progress, name: str, done: anyio.Event) -> None:
        started = time.monotonic()
        while True:
            with anyio.move_on_after(HEARTBEAT_SECONDS):
                await done.wait()
            if done.is_set():
                return
            await progress(f"{name}: running for {time.monotonic() - started:.0f}s")

    def _no_strays(self, process: ForkedHandler) -> bool:
        """Whether a forked handler that ended left no process behind, told without scanning /proc.

        The zygote is the subreaper of everything it forks: a process a handler left running is, once
        the handler is gone, the zygote's child. So when the zygote's children are only handlers this
        runner knows are running (the one that ended may still be there, unreaped), none are left.
        Anything else (an orphan, a nested runner's handler, no way to tell) means a scan."""
        if process.returncode is None or self._zygote is None:
            return False
        children = self._zygote.children()
        return children is not None and children <= self._forked

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
        if exit_code is None:
            return self._failure(
                f"skill '{skill.name}' ended without an exit status: it died abnormally while the zygote "
                "that forked it was gone",
                code="status_lost",
                stderr=stderr,
                stdout=stdout,
            )
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
        path = self._save(result.call_id, text, stdout)
        reference = (
            {"output_file": str(path), "output_resource": f"betty://outputs/{result.call_id}"} if path else {}
        )
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

    def _save(self, call_id: str, text: str, stdout: str) -> Path | None:
        """Keep a cut result whole in the runs folder (never through a symlink out of the workspace)."""
        workspace = self.settings.workspace
        try:
            folder = confined(self.settings.runs_dir / "outputs", workspace)
            folder.mkdir(parents=True, exist_ok=True)
            path = confined(folder / f"{call_id}.json", workspace)
            path.write_text(text, encoding="utf-8")
            confined(folder / f"{call_id}.stdout.txt", workspace).write_text(
                self._scrub(stdout), encoding="utf-8"
            )
        except PathOutsideWorkspace as exc:
            log.warning("the full output of call %s is not kept: %s", call_id, exc)
            return None
        return path
