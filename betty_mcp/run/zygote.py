"""The zygote, the server's side: forks Python handlers from a process that has their imports done.

Starting Python and importing pydantic or openapi-spec-validator costs a handler 50-350 ms; a
fork of an interpreter that already has them costs about a millisecond. The runner sends a job
over a Unix socket with the call's stdin, stdout, stderr and *status* file descriptors; the zygote
(``zygote_server.py``) forks, and answers with the child's pid.

The protocol, one connection per job:

* the job is a length-framed JSON document (a 4-byte big-endian length, then the JSON: ``argv``,
  ``cwd``, ``env``, ``cgroup``), the four descriptors riding on its first bytes. It is read whole
  however it arrives; anything malformed only closes that connection, never the zygote;
* the zygote answers ``<pid>\\n`` and keeps the connection: the requester closing it while the child
  runs means "nobody waits for this handler any more" (a cancelled nested call, a dead server), and
  the zygote kills the child's call;
* **the exit status comes on the status pipe, not on the connection.** The forked child writes its
  own status there just before it exits (``<code>\\n``), and the zygote writes the status it reaped
  after that (which is what tells a handler killed by a signal). The runner takes the first status
  line, and learns the handler exited from a pidfd. So a handler that finished is never reported
  killed because the zygote died meanwhile: the child wrote its status itself, and the pipe outlives
  the zygote. Only a child that died abnormally (a signal, ``os._exit``) *and* whose zygote died
  before reaping it has no status: that is reported as lost (``ForkedHandler.status_lost``), never as
  a made-up code. A child whose move into its call's cgroup failed says so first
  (``!outside-cgroup``), and its call is then killed by /proc tracking as well (``reaper.py``).

The zygote is restarted when it dies, with a bounded backoff (0.1 s doubling to 5 s, reset by a
successful fork); meanwhile calls start a fresh interpreter. Its socket lives in a private (0700)
folder under the temporary directory, whose name is chosen up front (nested handlers are told it in
their environment) but which is created only when the zygote starts, and removed by ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

from betty_mcp.run.zygote_server import HEADER, MAX_JOB, OUTSIDE_CGROUP

log = logging.getLogger(__name__)

ZYGOTE_ENV = "BETTY_MCP_ZYGOTE"
HANDSHAKE_SECONDS = 10.0  # the zygote answers a job at once; a zygote that does not is not used
STATUS_GRACE_SECONDS = 2.0  # after the handler exited, how long its status may take to arrive
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


def frame(job: dict) -> bytes:
    payload = json.dumps(job).encode()
    return HEADER.pack(len(payload)) + payload


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class ForkedHandler:
    """A handler forked by the zygote, with the parts of ``subprocess.Popen`` the runner uses."""

    stdin = None

    def __init__(self, pid: int, conn: socket.socket, stdout_fd: int, stderr_fd: int, status_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.status_lost = False  # it died abnormally and the zygote died before reporting how
        self.outside_cgroup = False  # its move into the call's cgroup failed
        self.stdout = open(stdout_fd, "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(stderr_fd, "rb", buffering=0)  # noqa: SIM115
        os.set_blocking(status_fd, False)
        self._status_fd: int | None = status_fd
        self._received = b""
        self._conn: socket.socket | None = conn
        self._pidfd = _pidfd(pid)  # the zygote has not reaped it: it has told us the pid first
        self._exited_at: float | None = None
        self._lock = threading.Lock()

    def kill(self) -> None:
        """SIGKILL the handler (through its pidfd: never another process that took its pid)."""
        with self._lock:  # not while close() runs in the collector's thread
            if self.returncode is not None:
                return
            if self._pidfd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)

    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable when the handler exits."""
        return self._pidfd if self._pidfd is not None else self._status_fd

    def _read_status(self) -> None:
        while self._status_fd is not None and self.returncode is None:
            try:
                chunk = os.read(self._status_fd, 4096)
            except BlockingIOError:
                return
            if not chunk:  # every writer is gone: the child, and the zygote
                self._close_status()
                return
            *lines, self._received = (self._received + chunk).split(b"\n")
            for line in lines:
                if line == OUTSIDE_CGROUP:
                    self.outside_cgroup = True
                elif self.returncode is None:
                    with contextlib.suppress(ValueError):
                        self.returncode = int(line)
        if self.returncode is not None:
            self._close_status()

    def _close_status(self) -> None:
        if self._status_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._status_fd)
            self._status_fd = None

    def _has_exited(self) -> bool:
        if self._pidfd is None:
            return self._status_fd is None
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def poll(self) -> int | None:
        """The exit status once known. Safe from several threads (the collector polls while the runner
        waits): one of them may close the status descriptor the other was about to read."""
        with self._lock:
            if self.returncode is None:
                self._read_status()
            if self.returncode is None and self._has_exited():
                if self._status_fd is None:  # it exited, and nobody is left to say how
                    self.status_lost, self.returncode = True, 1
                elif self._exited_at is None:
                    self._exited_at = time.monotonic()
                elif time.monotonic() - self._exited_at > STATUS_GRACE_SECONDS:
                    self.status_lost, self.returncode = True, 1
            return self.returncode

    def wait(self) -> int:
        while (code := self.poll()) is None:
            with self._lock:
                watch = [self._status_fd] if self._status_fd is not None else []
                if self._pidfd is not None and self._exited_at is None:
                    watch.append(self._pidfd)
            try:
                select.select(watch, [], [], 0.5 if watch else 0.05)
            except (OSError, ValueError):  # closed meanwhile by another thread: poll again
                continue
        return code

    def close(self) -> None:
        """Release the descriptors (the connection's closing tells the zygote nobody waits any more)."""
        with self._lock:
            self._close_status()
            if self._pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._pidfd)
                self._pidfd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Zygote:
    """The server's side: starts the zygote on first use, forks handlers through it once ready, and
    restarts it (with backoff) when it dies.

    Handlers that run skills themselves (workflow.run) attach to their server's zygote, named in
    their environment (``ZYGOTE_ENV``), instead of starting one.
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self._env = env
        self._cwd = cwd
        # Chosen now (handlers are told it), created when the zygote starts.
        folder = os.path.join(tempfile.gettempdir(), f"betty-mcp-{os.urandom(8).hex()}")
        self.path = os.path.join(folder, "zygote.sock")
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._attached = False
        self._closed = False
        self._backoff = BACKOFF_FIRST
        self._next_start = 0.0
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, path: str) -> Zygote:
        zygote = cls.__new__(cls)
        zygote.path, zygote._process, zygote._attached, zygote._closed = path, None, True, False
        zygote._ready = threading.Event()
        zygote._ready.set()
        return zygote

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def children(self) -> set[int] | None:
        """The zygote's child processes now (handlers, and orphans it adopted as their subreaper), or
        None when that cannot be told (not started here, or no ``/proc/<pid>/task/<pid>/children``)."""
        pid = self.pid
        if pid is None or self._attached:
            return None
        try:
            with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
                return {int(child) for child in f.read().split()}
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Stop the zygote this side started, and remove its socket and folder."""
        if self._attached:
            return
        with self._lock:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                if self._ready.is_set():  # it may have handlers running: on EOF it kills them, then exits
                    with contextlib.suppress(OSError):
                        self._process.stdin.close()  # type: ignore[union-attr]
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._process.wait(timeout=1)
                if self._process.poll() is None:  # still importing (nothing forked yet), or stuck
                    self._process.kill()
                    self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))

    def _private_folder(self) -> bool:
        """Create the socket's folder (0700), or check that the one there is ours and private."""
        folder = os.path.dirname(self.path)
        try:
            os.mkdir(folder, 0o700)
            return True
        except FileExistsError:
            info = os.lstat(folder)
            return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
        except OSError as exc:
            log.warning("zygote: cannot create %s: %s", folder, exc)
            return False

    def _start(self) -> None:
        if not self._private_folder():
            self._next_start = float("inf")  # someone else's folder: never use this path
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead zygote's socket
        ready = threading.Event()
        self._ready = ready
        self._process = subprocess.Popen(
            [sys.executable, "-m", "betty_mcp.run.zygote_server", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self._cwd,
            env=self._env,
            start_new_session=True,
        )
        threading.Thread(target=self._await_ready, args=(self._process, ready), daemon=True).start()

    @staticmethod
    def _await_ready(process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        with contextlib.suppress(OSError, ValueError):  # closed by close(): it is not ready then
            if process.stdout.readline().strip() == b"ready":
                ready.set()

    def _available(self) -> bool:
        """Whether a fork can be tried now; starts or restarts the zygote when due."""
        if self._attached:
            return True
        with self._lock:
            if self._closed:
                return False
            process = self._process
            if process is not None and process.poll() is None:
                return self._ready.is_set()
            now = time.monotonic()
            if process is not None:  # it died: restart after the backoff
                log.warning("zygote exited with %s; restarting in %.1fs", process.returncode, self._backoff)
                self._stop()
                self._process = None
                self._next_start = now + self._backoff
                self._backoff = min(BACKOFF_MAX, self._backoff * 2)
            if now >= self._next_start:
                self._start()
            return False

    def start(self) -> None:
        """Start the zygote now (if it is not running), rather than at the first call that could use it."""
        self._available()

    def starting(self) -> bool:
        """Whether the zygote is on its way to being ready (starting, or waiting to restart)."""
        if self._attached or self._closed or self._next_start == float("inf"):
            return False
        process = self._process
        return process is None or process.poll() is not None or not self._ready.is_set()

    def fork(
        self, argv: list[str], cwd: str, env: dict[str, str], cgroup: str | None = None
    ) -> ForkedHandler | None:
        """A handler running ``argv``, or None when the zygote cannot take it now (the caller spawns one)."""
        if not self._available():
            return None
        job = frame({"argv": argv, "cwd": cwd, "env": env, "cgroup": cgroup})
        if len(job) - HEADER.size > MAX_JOB:
            return None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(HANDSHAKE_SECONDS)
        try:
            conn.connect(self.path)
            sent = socket.send_fds(conn, [job], [null, out_w, err_w, status_w])
            if sent < len(job):
                conn.sendall(memoryview(job)[sent:])
            received = b""
            while b"\n" not in received:
                chunk = conn.recv(64)
                if not chunk:
                    raise OSError("the zygote closed the connection")
                received += chunk
            pid = int(received.partition(b"\n")[0])
        except (OSError, ValueError):
            conn.close()  # a child forked anyway is killed by the zygote when it sees this
            for fd in (out_r, err_r, status_r):
                os.close(fd)
            return None
        finally:
            for fd in (null, out_w, err_w, status_w):
                os.close(fd)
        self._backoff = BACKOFF_FIRST
        return ForkedHandler(pid, conn, out_r, err_r, status_r)
