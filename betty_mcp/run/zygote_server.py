"""The zygote's own side: a single-threaded process with the handlers' heavy imports done, that forks
one child per job and turns it into ``python handler.py ARGS`` (its own session, descriptors 0/1/2,
environment, working directory, argv and ``sys.path[0]``). The server's side is ``zygote.py``.

Single-threaded on purpose: forking a process that runs threads is unsafe.

    python -m betty_mcp.run.zygote_server SOCKET_PATH
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys

# What bundled handlers import, by name (the server never imports the kit itself); a failed
# import is skipped (the handler will say what is missing).
PRELOAD = (
    "argparse",
    "yaml",
    "betty_mcp.kit.skillkit",
    "betty_mcp.core.manifests",
    "betty_mcp.kit.registry",
    "jsonschema",
    "openapi_spec_validator",
)
MAX_JOB = 8 * 1024 * 1024


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
