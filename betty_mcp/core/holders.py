"""Which process of this machine holds something in the workspace's SQLite file (a run, a reservation),
and whether it still runs: so that what a killed or crashed process held is not held forever.

    this_process()               # "host:pid:start", start from /proc: a reused pid is another process
    alive("host:4242:123456")    # False once that process is gone
"""

from __future__ import annotations

import os
import socket


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None if it does not exist or
    there is no /proc (then the pid alone names the process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[19]
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else ""
    except (OSError, IndexError):
        return ""


_named: tuple[int, str] | None = None


def this_process() -> str:
    """This process's name, ``host:pid:start`` (computed again in a forked child: the zygote's children)."""
    global _named
    pid = os.getpid()
    if _named is None or _named[0] != pid:
        _named = (pid, f"{socket.gethostname()}:{pid}:{_process_start(pid) or ''}")
    return _named[1]


def alive(holder: str | None) -> bool:
    """Whether the process named ``host:pid:start`` still runs. One on another machine (a file on a
    shared file system) or unnamed (written before holders were) is taken to be alive."""
    host, _, rest = (holder or "").partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    now = _process_start(int(pid))
    if now is None:
        return False
    if now == "":  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return now == started  # a reused pid started later
