"""The zygote's own side: a single-threaded process with the handlers' heavy imports done, that forks
one child per job and turns it into ``python handler.py ARGS`` (its call's cgroup, its own session,
descriptors 0/1/2, environment, working directory, argv and ``sys.path[0]``). The server's side, and
the protocol, are in ``zygote.py``.

Single-threaded on purpose: forking a process that runs threads is unsafe. Nothing a job sends can
stop it: a job is read whole however it arrives (length-framed), and a malformed one only closes
its own connection. It is a child subreaper: orphans of the handlers it forks come back to it, and it
reaps them. A child whose requester goes away while it runs (the connection closes) is killed with
its call's processes.

    python -m betty_mcp.run.zygote_server SOCKET_PATH
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import types
from pathlib import Path
from types import CodeType
from typing import Any

from betty_mcp.run.reaper import CALL_ENV, kill_cgroup, kill_group, kill_processes, set_child_subreaper

MAX_JOB = 64 * 1024 * 1024  # a job's JSON: arguments of a few MB are fine, a runaway one is refused
HEADER = struct.Struct("!I")  # a job's length, before its JSON
OUTSIDE_CGROUP = b"!outside-cgroup"  # said on the status pipe by a child that could not join its cgroup

# What most handlers import (bundled ones: argparse and the kit), loaded before the first fork; a
# failed import is skipped (the handler will say what is missing).
PRELOAD = (
    "pkgutil",  # runpy.run_path imports it at every call
    "argparse",
    "yaml",
    "betty_mcp.kit.skillkit",
    "betty_mcp.kit.registry",
)
# Heavy modules only some handlers use (openapi-spec-validator: ~300 ms and ~20 MB): loaded once a
# handler has imported them, so later calls are forked with them and a zygote whose skills never need
# them stays small. Only these names are ever learned, whatever a handler writes on its LEARN_FD.
LEARNED = (
    "hashlib",  # OpenSSL's libcrypto: ~4.5 MB
    "jsonschema",
    "openapi_spec_validator",
    "betty_mcp.core.manifests",
)
COMPILED_MAX = 256  # handler scripts whose compiled code the zygote keeps for its children
LEARN_FD = 4  # in a handler: where it names the LEARNED modules it imported (the zygote's pipe)
FDS = 4  # stdin, stdout, stderr, status
STATUS_FD = 3  # where the child keeps its status pipe


class _Incoming:
    """A job being received."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.fds: list[int] = []


class _Child:
    """A running child, and who waits for it."""

    def __init__(self, conn: socket.socket, status_fd: int, cgroup: str | None, call_id: str | None) -> None:
        self.conn, self.status_fd, self.cgroup, self.call_id = conn, status_fd, cgroup, call_id


def _job(data: bytes) -> dict[str, Any]:
    """The job in ``data`` (its JSON), checked; ValueError when it is not one."""
    job = json.loads(data)
    if not isinstance(job, dict):
        raise ValueError("a job is a JSON object")
    argv, env, cwd, cgroup = job.get("argv"), job.get("env"), job.get("cwd"), job.get("cgroup")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv: a non-empty list of strings")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env: a mapping of strings")
    if not isinstance(cwd, str) or not (cgroup is None or isinstance(cgroup, str)):
        raise ValueError("cwd: a string; cgroup: a string or null")
    return job


def _write_status(fd: int, text: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text)


def _run_main(script: str, code: CodeType | None) -> None:
    """``runpy.run_path(script, run_name="__main__")``, with the script's code compiled already when the
    zygote has it (compiling a 400-line handler costs ~4 ms, at every call)."""
    if code is None:
        runpy.run_path(script, run_name="__main__")
        return
    main = types.ModuleType("__main__")  # as runpy makes it for a script
    main.__file__ = script
    main.__cached__ = None
    main.__package__ = ""
    main.__builtins__ = builtins
    sys.modules["__main__"] = main  # this process ends with the handler: nothing to put back
    exec(code, main.__dict__)


def _become_environment(env: dict[str, str]) -> None:
    """``os.environ`` (and the C environment under it) made ``env``, touching only what differs: most
    of a handler's environment is the zygote's own, and each change is a ``putenv`` (~0.6 ms for a
    whole environment, cleared and set again)."""
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _become_handler(job: dict, fds: list[int], learn: int, compiled: CodeType | None) -> None:
    """In the forked child: turn into ``python handler.py ARGS``; never returns."""
    code = 1
    status = fds[3]
    known = {name for name in LEARNED if name in sys.modules}
    try:
        learn = fcntl.fcntl(learn, fcntl.F_DUPFD_CLOEXEC, 16)  # clear of the descriptors moved below
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if job.get("cgroup"):  # first: everything the handler starts stays in its call's cgroup
            try:
                Path(job["cgroup"], "cgroup.procs").write_text("0")
            except OSError:
                _write_status(status, OUTSIDE_CGROUP + b"\n")
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        if status != STATUS_FD:
            os.dup2(status, STATUS_FD, inheritable=False)
            status = STATUS_FD
        os.set_inheritable(STATUS_FD, False)
        os.dup2(learn, LEARN_FD, inheritable=False)
        os.closerange(LEARN_FD + 1, 1 << 20)  # the zygote's socket, pipes and other jobs' descriptors
        _become_environment(job["env"])
        os.chdir(job["cwd"])
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.argv = list(job["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        try:
            _run_main(sys.argv[0], compiled)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            learned = [name for name in LEARNED if name in sys.modules and name not in known]
            if learned:
                os.write(LEARN_FD, "".join(f"{name}\n" for name in learned).encode())
        code &= 0xFF
        _write_status(status, f"{code}\n".encode())  # the status, whatever becomes of the zygote
        os._exit(code)


class _Zygote:
    def __init__(self, path: str) -> None:
        self.path = path
        self.compiled: dict[str, tuple[tuple[int, int], CodeType]] = {}  # path -> (mtime, size), code
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(sys.stdin, selectors.EVENT_READ, "stdin")  # EOF: the server is gone
        # A child's exit wakes the loop at once (its status goes back without waiting for a timeout).
        self.wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        self.wake_w = wake_w
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.learn_r, self.learn_w = os.pipe()  # children name the LEARNED modules they imported
        os.set_blocking(self.learn_r, False)
        os.set_blocking(self.learn_w, False)  # a full pipe drops a child's note, never blocks its exit
        self.selector.register(self.learn_r, selectors.EVENT_READ, "learn")
        self.incoming: dict[socket.socket, _Incoming] = {}
        self.children: dict[int, _Child] = {}  # running child pid -> who waits for it

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "listener":
                    self._accept()
                elif key.data == "wake":
                    self.wake_r.recv(4096)
                elif key.data == "stdin":
                    if not os.read(0, 1):
                        self._shut_down()
                        return
                elif key.data == "learn":
                    self._learn()
                elif key.data == "job":
                    self._receive(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._requester_gone(key.data, key.fileobj)  # type: ignore[arg-type]
            self._reap()

    def _learn(self) -> None:
        """Import the LEARNED modules a handler used, so the next forks have them (one pause, once)."""
        try:
            names = os.read(self.learn_r, 4096).decode("utf-8", "replace").split()
        except BlockingIOError:
            return
        for name in LEARNED:
            if name in names and name not in sys.modules:
                with contextlib.suppress(Exception):
                    __import__(name)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            conn.setblocking(False)
            self.incoming[conn] = _Incoming()
            self.selector.register(conn, selectors.EVENT_READ, "job")

    def _drop(self, conn: socket.socket) -> None:
        """Forget a connection whose job was malformed or abandoned, with the descriptors it brought."""
        incoming = self.incoming.pop(conn, None)
        for fd in incoming.fds if incoming is not None else ():
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()

    def _receive(self, conn: socket.socket) -> None:
        incoming = self.incoming.get(conn)
        if incoming is None:
            return
        try:
            data, fds, flags, _ = socket.recv_fds(conn, 1 << 20, FDS)
        except BlockingIOError:
            return
        except OSError:
            data, fds, flags = b"", [], 0
        for fd in fds:
            os.set_inheritable(fd, False)
        incoming.fds += fds
        incoming.data += data
        if not data or flags & socket.MSG_CTRUNC or len(incoming.fds) > FDS:
            self._drop(conn)  # closed before the job was whole, or sent too many descriptors
            return
        if len(incoming.data) < HEADER.size:
            return
        (length,) = HEADER.unpack_from(incoming.data)
        if length > MAX_JOB or len(incoming.data) > HEADER.size + length:
            self._drop(conn)
            return
        if len(incoming.data) < HEADER.size + length:
            return
        try:
            if len(incoming.fds) != FDS:
                raise ValueError(f"a job brings {FDS} descriptors")
            job = _job(bytes(incoming.data[HEADER.size :]))
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError included
            self._drop(conn)
            return
        del self.incoming[conn]
        self._launch(conn, job, incoming.fds)

    def _launch(self, conn: socket.socket, job: dict, fds: list[int]) -> None:
        compiled = self._compiled(job)
        try:
            pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            self.selector.unregister(conn)
            conn.close()
            return
        if pid == 0:
            _become_handler(job, fds, self.learn_w, compiled)
        for fd in fds[:3]:
            os.close(fd)
        os.set_blocking(fds[3], False)  # a status line never waits, even on a pipe a handler filled
        child = _Child(conn, fds[3], job.get("cgroup"), (job["env"].get(CALL_ENV) or "").rpartition(":")[2])
        self.children[pid] = child
        self.selector.modify(conn, selectors.EVENT_READ, pid)
        try:
            conn.setblocking(True)
            conn.sendall(f"{pid}\n".encode())
        except OSError:
            self._kill(pid, child)  # the requester is already gone

    def _compiled(self, job: dict) -> CodeType | None:
        """The job's script compiled, from this zygote's cache (its children inherit it) while the file
        keeps its size and mtime; None for anything but a readable ``.py`` that compiles (the child
        then runs it as runpy would, and reports what is wrong)."""
        argv = job.get("argv") or [""]
        script = argv[0] if isinstance(argv[0], str) else ""
        if not script.endswith(".py"):
            return None
        path = os.path.join(job.get("cwd") or "", script)
        try:
            stat = os.stat(path)
            version = (stat.st_mtime_ns, stat.st_size)
            if (known := self.compiled.get(path)) is not None and known[0] == version:
                return known[1]
            with open(path, "rb") as source:
                code = compile(source.read(), script, "exec", dont_inherit=True)
        except (OSError, SyntaxError, ValueError):
            return None
        if len(self.compiled) >= COMPILED_MAX:
            self.compiled.pop(next(iter(self.compiled)))
        self.compiled[path] = (version, code)
        return code

    def _requester_gone(self, pid: int, conn: socket.socket) -> None:
        try:
            if conn.recv(64):
                return  # nothing is expected after the job; ignore it
        except BlockingIOError:
            return
        except OSError:
            pass
        child = self.children.get(pid)
        if child is not None and child.conn is conn:
            self._kill(pid, child)
        else:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            conn.close()

    def _kill(self, pid: int, child: _Child) -> None:
        """Kill a child nobody waits for, with its call's processes (it is reaped by ``_reap``)."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.conn)
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, None
        if done:  # it had already exited: nothing to kill
            self._finished(pid, child, status)
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # itself first: it may not have made its session, or moved, yet
        kill_group(pid)
        if child.cgroup:
            kill_cgroup(Path(child.cgroup))
        else:
            kill_processes([pid], child.call_id or None)

    def _finished(self, pid: int, child: _Child, status: int | None) -> None:
        self.children.pop(pid, None)
        if status is not None:
            _write_status(child.status_fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
        with contextlib.suppress(OSError):
            os.close(child.status_fd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.conn)
        child.conn.close()

    def _reap(self) -> None:
        """Reap every child that exited: handlers (their status goes to their status pipe) and orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.get(pid)
            if child is not None:
                self._finished(pid, child, status)

    def _shut_down(self) -> None:
        """The server is gone: so is everyone waiting for a handler."""
        for pid, child in list(self.children.items()):
            self._kill(pid, child)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))


def serve(path: str) -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            __import__(name)
    set_child_subreaper()
    zygote = _Zygote(path)
    print("ready", flush=True)
    while True:
        try:
            zygote.serve()
            sys.stdout.flush()
            os._exit(0)  # the server is gone: no need to tear down what the handlers preloaded
        except Exception as exc:  # a bug must not take the zygote down with every later call
            print(f"zygote: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
