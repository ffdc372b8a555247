"""The zygote, the server's side: forks Python handlers from a process that has their imports done.

Starting Python and importing pydantic or openapi-spec-validator costs a handler 50-350 ms; a
fork of an interpreter that already has them costs about a millisecond. The runner sends a job
over a Unix socket with the call's stdin, stdout and stderr file descriptors; the zygote
(``zygote_server.py``) forks, and answers with the child's pid, then with its exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

ZYGOTE_ENV = "BETTY_MCP_ZYGOTE"


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

    def close(self) -> None:
        """Stop the zygote this side started, and remove its socket and folder."""
        if self._attached:
            return
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "betty_mcp.run.zygote_server", self.path],
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
