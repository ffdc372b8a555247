"""The zygote: one Python process with the handlers' heavy imports done, forking per skill call.

Starting Python and importing pydantic or openapi-spec-validator costs a handler 50-350 ms; a
fork of an interpreter that already has them costs about a millisecond. The runner sends a job
over a Unix socket with the call's stdin, stdout and stderr file descriptors; the zygote forks,
and the child becomes the handler exactly as ``python handler.py ARGS`` would: its own session
(process group), those descriptors as 0/1/2, the call's environment, working directory, argv and
``sys.path[0]``. The zygote answers with the child's pid, then with its exit status.

Single-threaded on purpose: forking a process that runs threads is unsafe.

    python -m betty_mcp.zygote SOCKET_PATH
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading

# What bundled handlers import; a failed import is skipped (the handler will say what is missing).
PRELOAD = (
    "argparse",
    "yaml",
    "betty_mcp.skillkit",
    "betty_mcp.manifests",
    "betty_mcp.registry",
    "jsonschema",
    "openapi_spec_validator",
)
MAX_JOB = 8 * 1024 * 1024
ZYGOTE_ENV = "BETTY_MCP_ZYGOTE"


def _become_handler(job: dict, fds: list[int]) -> None:
    """In the forked child: turn into ``python handler.py ARGS``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["cwd"])
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.argv = list(job["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
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
        os._exit(code)


def serve(path: str) -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)  # EOF: the server is gone
    # A child's exit wakes the loop at once (its status goes back without waiting for a timeout).
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector.register(wake_r, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection to tell its exit status
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ)
                continue
            if key.fileobj is wake_r:
                wake_r.recv(4096)
                continue
            if key.fileobj is sys.stdin:
                if not os.read(0, 1):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        os.rmdir(os.path.dirname(path))
                    return
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data, fds, _, _ = socket.recv_fds(conn, MAX_JOB, 3)
            except OSError:
                data, fds = b"", []
            selector.unregister(conn)
            if not data or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            job = json.loads(data)
            pid = os.fork()
            if pid == 0:
                listener.close()
                _become_handler(job, fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            waiting[pid] = conn
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])


class ForkedHandler:
    """A handler forked by the zygote, with the parts of ``subprocess.Popen`` the runner uses."""

    stdin = None

    def __init__(
        self, pid: int, conn: socket.socket, stdout_fd: int, stderr_fd: int, received: bytes
    ) -> None:
        self.pid = pid
        self._received = received  # the exit status may already have come with the pid
        self.returncode: int | None = None
        self.stdout = open(stdout_fd, "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(stderr_fd, "rb", buffering=0)  # noqa: SIM115
        self._conn = conn

    def _status(self, block: bool) -> int | None:
        while self.returncode is None and b"\n" not in self._received:
            self._conn.setblocking(block)
            try:
                chunk = self._conn.recv(64)
            except BlockingIOError:
                return None
            if not chunk:  # the zygote died: the handler's status is lost with it
                self._received = b"-9\n"
                break
            self._received += chunk
        if self.returncode is None:
            self.returncode = int(self._received.split(b"\n")[0])
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._status(block=False)

    def wait(self) -> int:
        code = self._status(block=True)
        assert code is not None
        return code


class Zygote:
    """The server's side: starts the zygote on first use, and forks handlers through it once ready.

    Handlers that run skills themselves (workflow.run) attach to their server's zygote, named in
    their environment (``ZYGOTE_ENV``), instead of starting one.
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self._env = env
        self._cwd = cwd
        self.path = os.path.join(tempfile.mkdtemp(prefix="betty-mcp-"), "zygote.sock")
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._attached = False

    @classmethod
    def attach(cls, path: str) -> Zygote:
        zygote = cls.__new__(cls)
        zygote.path, zygote._process, zygote._attached = path, None, True
        zygote._ready = threading.Event()
        zygote._ready.set()
        return zygote

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "betty_mcp.zygote", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self._cwd,
            env=self._env,
            start_new_session=True,
        )
        threading.Thread(target=self._await_ready, daemon=True).start()

    def _await_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        if self._process.stdout.readline().strip() == b"ready":
            self._ready.set()

    def fork(self, argv: list[str], cwd: str, env: dict[str, str]) -> ForkedHandler | None:
        """A handler running ``argv``, or None while the zygote is not ready (the caller spawns one)."""
        if not self._attached:
            if self._process is None:
                self._start()
            if not self._ready.is_set() or self._process is None or self._process.poll() is not None:
                return None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            socket.send_fds(
                conn, [json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode()], [null, out_w, err_w]
            )
            received = b""
            while b"\n" not in received:
                chunk = conn.recv(64)
                if not chunk:
                    raise OSError("the zygote closed the connection")
                received += chunk
            pid_line, _, rest = received.partition(b"\n")
            pid = int(pid_line)
        except (OSError, ValueError):
            conn.close()
            os.close(out_r)
            os.close(err_r)
            return None
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        return ForkedHandler(pid, conn, out_r, err_r, rest)
