"""Every process a call starts dies with the call: on completion, timeout and cancellation, whatever
session or process group it makes, and however deep it is (a handler that runs skills itself, like
workflow.run, included).

Two ways to find a call's processes, chosen once per runner (``Containment``):

* **cgroup v2**, where the unified hierarchy is mounted and this process may create cgroups below its
  own and move processes into them (root, or a delegated subtree). Each call gets its own cgroup,
  ``<own cgroup>/betty-mcp-<pid>-<token>/<call id>``. A handler forked by the zygote moves itself into
  it before running any handler code; a freshly spawned one is moved by the runner as soon as
  ``Popen`` returns (the child is then still starting its interpreter: it has run no code that could
  fork). Membership is inherited by every descendant and nothing a process does leaves it: ``setsid``,
  double forks and re-parenting to init change nothing. At the end of the call one write to
  ``cgroup.kill`` kills the lot, and the emptied cgroup is removed (later, if its processes are still
  dying). A nested runner (inside a handler) makes its call cgroups below its own, which is the outer
  call's cgroup: killing the outer call kills the nested calls too. Cost: about 0.1-0.3 ms a call.

* **/proc**, everywhere else (no cgroup v2, not writable, or ``BETTY_MCP_CGROUPS=0``). Every call's
  environment carries ``BETTY_MCP_CALL_ID``: the ids of the calls it runs inside, ``:``-joined, so a
  nested call's processes carry the outer call's id too. Processes inherit it when they exec and when
  they fork, and ``/proc/<pid>/environ`` shows the environment a process was exec'd with, which
  it cannot change afterwards. At the end of a call, the handler, its descendants (by parent pid)
  and every process started since the call began whose environment names the call are stopped,
  re-scanned until nothing new appears (a stopped process cannot fork), then killed. This costs one
  scan of /proc a call (about 1.3 ms with a hundred processes running). It misses a process that
  execs with a cleared environment *and* whose parent chain up to the handler has exited, and a
  process a zygote-forked handler forks without exec once its parents have exited (it shows the
  zygote's environment). The zygote also kills a forked handler whose requester went away
  (``zygote_server.py``), which covers nested handlers forked by the zygote: they are the zygote's
  children, not descendants of the call, and they show the zygote's environment.

The zygote makes itself a child subreaper (``set_child_subreaper``): orphans of the handlers it forks
are re-parented to it rather than to init, and it reaps them. The server does not: its orphans would
become its zombies, and reaping them with ``waitpid(-1)`` would steal the exit statuses
``subprocess.Popen`` waits for; nothing here needs them re-parented (cgroups do not care about
parents, and the /proc scan finds processes by their environment).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALL_ENV = "BETTY_MCP_CALL_ID"
CGROUPS_ENV = "BETTY_MCP_CGROUPS"  # "1" / "on": a cgroup per call where cgroups work (limits.call_cgroups)
PR_SET_CHILD_SUBREAPER = 36
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def set_child_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux ``prctl``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that ``/proc/<pid>/stat`` start times use."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS)


# -- /proc -------------------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, start time in clock ticks since boot)."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:  # os.open/os.read: half the cost of open() (this runs at the end of every call)
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data[data.rfind(b")") + 2 :].split(b" ", 20)
        with contextlib.suppress(IndexError, ValueError):
            table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def _names_call(pid: int, call_id: bytes) -> bool:
    """Whether ``pid`` was started with ``call_id`` in its ``BETTY_MCP_CALL_ID``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    prefix = CALL_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return call_id in entry[len(prefix) :].split(b":")
    return False


def kill_processes(roots: Iterable[int], call_id: str | None = None, since: int = 0) -> set[int]:
    """Kill ``roots``, their descendants, and (with ``call_id``) every process started at or after
    ``since`` (clock ticks since boot) whose environment names the call, with their descendants.

    Everything found is stopped first and the scan repeated until it finds nothing new (a stopped
    process cannot fork), then killed. Never this process or its ancestors. Returns the pids killed.
    """
    roots = set(roots)
    marker = call_id.encode() if call_id else None
    stopped: set[int] = set()
    for _ in range(20):
        table = _process_table()
        protected = {0, 1, os.getpid()}
        pid = os.getpid()
        while pid in table and pid not in (0, 1):
            pid = table[pid][0]
            protected.add(pid)
        children: dict[int, list[int]] = {}
        for child, (parent, _) in table.items():
            children.setdefault(parent, []).append(child)
        found = {p for p in roots | stopped if p in table}
        if marker is not None:
            found |= {p for p, (_, start) in table.items() if start >= since and _names_call(p, marker)}
        pending = list(found)
        while pending:
            for child in children.get(pending.pop(), ()):
                if child not in found:
                    found.add(child)
                    pending.append(child)
        new = found - protected - stopped
        if not new:
            break
        for victim in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGSTOP)
        stopped |= new
    for victim in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return stopped


# -- cgroup v2 ---------------------------------------------------------------------------------------


def own_cgroup() -> Path | None:
    """This process's cgroup v2 folder, or None when there is no unified hierarchy mounted."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            relative = next((ln[3:].strip() for ln in f if ln.startswith("0::")), None)
        if relative is None:
            return None
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        root, mountpoint = fields[3], fields[4].replace("\\040", " ")
        if relative == root or relative.startswith(root.rstrip("/") + "/"):
            folder = Path(mountpoint) / relative[len(root) :].lstrip("/")
            if (folder / "cgroup.procs").exists():
                return folder
    return None


def kill_cgroup(folder: Path) -> None:
    """Kill every process in ``folder`` and the cgroups below it."""
    try:
        (folder / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        if not folder.exists():
            return
    except OSError:
        pass
    for _ in range(20):  # before Linux 5.14 (no cgroup.kill): freeze, kill what is listed, thaw
        with contextlib.suppress(OSError):
            (folder / "cgroup.freeze").write_text("1")
        pids = _cgroup_pids(folder)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (folder / "cgroup.freeze").write_text("0")
        if not pids:
            return


def _cgroup_pids(folder: Path) -> list[int]:
    pids: list[int] = []
    for path, _, _ in os.walk(folder):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    return pids


def remove_cgroup(folder: Path) -> bool:
    """Remove ``folder`` and the cgroups below it; False while processes remain (removal is retried)."""
    if not folder.exists():
        return True
    for path, _, _ in os.walk(folder, topdown=False):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def _remove_stale_homes(own: Path) -> None:
    """Remove the cgroups of runners that died without closing (a killed server), once empty. What
    still runs in one is left alone: its pid may name a process of another pid namespace."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(own):
            parts = entry.name.split("-")
            if len(parts) != 4 or parts[:2] != ["betty", "mcp"] or not parts[2].isdigit():
                continue
            if os.path.exists(f"/proc/{parts[2]}"):
                continue
            remove_cgroup(Path(entry.path))


def cgroups_asked() -> bool:
    return os.environ.get(CGROUPS_ENV, "").strip().lower() in ("1", "on", "true", "yes")


def _cgroup_home() -> tuple[Path, bool] | None:
    """Where this runner makes its calls' cgroups, and whether it made that folder itself; None when
    cgroups cannot be used here.

    Inside a call (a handler running skills: workflow.run), that is the call's own cgroup, so that
    killing the call kills the calls it makes; otherwise a new cgroup below this process's own.
    """
    own = own_cgroup()
    if own is None:
        return None
    if os.environ.get(CALL_ENV) and any(part.startswith("betty-mcp-") for part in own.parts):
        return (own, False) if os.access(own / "cgroup.procs", os.W_OK) else None
    _remove_stale_homes(own)
    home = own / f"betty-mcp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.mkdir(home)
    except OSError:
        return None
    if not os.access(home / "cgroup.procs", os.W_OK):
        remove_cgroup(home)
        return None
    return home, True


def _end_home(home: Path) -> None:
    """At exit, a runner nobody closed: its calls end with it."""
    kill_cgroup(home)
    deadline = time.monotonic() + 0.5
    while not remove_cgroup(home) and time.monotonic() < deadline:
        time.sleep(0.01)


# -- calls -------------------------------------------------------------------------------------------


def _outside(pid: int, cgroup: Path) -> bool:
    """Whether ``pid`` is known to run outside ``cgroup`` (or below it); False when it cannot be told."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            line = next((ln for ln in f if ln.startswith(b"0::")), b"")
    except OSError:
        return False
    return bool(line) and f"/{cgroup.name}".encode() not in line


class CallScope:
    """The processes of one call: where they go (``cgroup``), how they are marked (``env_value``),
    and how they are all killed (``kill``)."""

    def __init__(self, owner: Containment, cgroup: Path | None) -> None:
        self.id = os.urandom(8).hex()
        self.cgroup = cgroup
        self.since = _boot_ticks() - 1
        self._owner = owner
        self._lock = threading.Lock()

    def env_value(self, outer: str | None) -> str:
        """``BETTY_MCP_CALL_ID`` for this call: the ids of the calls it runs inside, then its own."""
        return f"{outer}:{self.id}" if outer else self.id

    def adopt(self, pid: int) -> None:
        """Put a freshly spawned handler in the call's cgroup; on failure, track the call by /proc."""
        if self.cgroup is None:
            return
        try:
            (self.cgroup / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("cannot move %s into cgroup %s (%s); tracking calls by /proc", pid, self.cgroup, exc)
            self._owner.disable_cgroups()
            self.cgroup = None

    def kill(self, process: Any = None, *, scan: bool = True) -> None:
        """Kill every process of the call (the handler too, if it runs). Safe from any thread.
        ``scan=False``: the caller knows no other process of the call is left (the handler's group is
        still killed), so /proc is not searched."""
        with self._lock:
            running = process is not None and process.returncode is None
            outside = getattr(process, "outside_cgroup", False)  # a forked handler's move failed
            if running and self.cgroup is not None and not outside:
                outside = _outside(process.pid, self.cgroup)
            if running:
                with contextlib.suppress(OSError):
                    process.kill()  # itself first: it may not have made its session, or moved, yet
                kill_group(process.pid)
            if self.cgroup is not None:
                kill_cgroup(self.cgroup)
                if not outside:
                    return
            if scan:
                kill_processes([process.pid] if running else [], self.id, self.since)

    def release(self) -> None:
        """Remove the call's cgroup (once its processes are gone: retried at the next call and at close)."""
        if self.cgroup is not None:
            self._owner.remove_later(self.cgroup)


class Containment:
    """How one runner makes every process of its calls die with the call (module docstring)."""

    def __init__(self, cgroups: bool | None = None) -> None:
        self.cgroups = cgroups_asked() if cgroups is None else cgroups  # asked for; used where they work
        self._home: Path | None = None  # where the calls' cgroups go (None: /proc tracking)
        self._owned = False  # whether this runner made ``_home`` (and removes it)
        self._decided = False
        self._pending: list[Path] = []
        self._finalizer: weakref.finalize | None = None

    @property
    def mode(self) -> str:
        self._decide()
        return "cgroup" if self._home is not None else "proc"

    def _decide(self) -> None:
        if not self._decided:
            self._decided = True
            found = _cgroup_home() if self.cgroups else None
            if found is not None:
                self._home, self._owned = found
                if self._owned:
                    self._finalizer = weakref.finalize(self, _end_home, self._home)
            log.debug("call containment: %s", self._home or "/proc tracking")

    def open(self) -> CallScope:
        """A scope for a new call (its cgroup created, in cgroup mode)."""
        self._decide()
        self._sweep()
        cgroup = None
        if self._home is not None:
            cgroup = self._home / os.urandom(8).hex()
            try:
                os.mkdir(cgroup)
            except OSError as exc:
                log.warning("cannot create cgroup %s (%s); tracking calls by /proc", cgroup, exc)
                self.disable_cgroups()
                cgroup = None
        return CallScope(self, cgroup)

    def disable_cgroups(self) -> None:
        if self._home is not None and self._owned:
            self._pending.append(self._home)
        self._home = None

    def remove_later(self, cgroup: Path) -> None:
        if not remove_cgroup(cgroup):
            self._pending.append(cgroup)

    def _sweep(self) -> None:
        if self._pending:
            self._pending = [c for c in self._pending if not remove_cgroup(c)]

    def close(self) -> None:
        """Kill whatever is left in this runner's cgroups and remove them."""
        if self._finalizer is not None:
            self._finalizer.detach()
        folders = [*self._pending, *([self._home] if self._home is not None and self._owned else [])]
        self._pending, self._home = [], None
        for folder in folders:
            kill_cgroup(folder)
        deadline = time.monotonic() + 2
        while folders and time.monotonic() < deadline:
            folders = [f for f in folders if not remove_cgroup(f)]
            if folders:
                time.sleep(0.01)
        if folders:
            log.warning("could not remove cgroups %s", ", ".join(map(str, folders)))
