"""Processes of this machine, told apart safely: by pid *and* start time, or by a run marker.

A pid alone is not an identity: after a crash the number is reused by an unrelated process, and a
lock or a write-ahead record judged "alive" by it would block forever (or, worse, a kill would hit
a stranger). So a process is named by (pid, start time in clock ticks since boot, from
/proc/<pid>/stat). The processes of one run — ansible-playbook, its forked workers and their
ssh clients — carry `OPSLEDGER_RUN_MARKER=<run id>#<random token>` in their environment, which
every descendant inherits, so a run's processes can be found even after their parent died and
they were re-parented. The run id alone (`CHG-0001/<second>`) is not enough: two checkouts on one
machine (two CI jobs, a test suite beside the lab) can start CHG-0001 in the same second, and a
guard ending one of them killed the other's playbook. `OPSLEDGER_RUN=<run id>` is set too: it
is the run's name for playbooks (package snapshots are named after it), never used to find
processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from pathlib import Path

RUN_NAME = "OPSLEDGER_RUN"  # the run's name, for playbooks
RUN_MARKER = "OPSLEDGER_RUN_MARKER"  # the run's processes, unique on the machine
PROC = Path("/proc")


def machine() -> str:
    """The machine's name, for people (not unique: containers and clones share hostnames)."""
    return socket.gethostname()


def machine_key() -> str:
    """Where pids mean the same process: this boot of this kernel and this pid namespace.

    Host names repeat (CI containers are all "localhost"); a pid judged on another machine, in
    another container or before a reboot would be a stranger's. Two records with the same key
    name processes this one can look at.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot), None when it does not exist."""
    stat = _stat(pid)
    return stat[1] if stat else None


def alive(pid: int | None, started: int | None = None) -> bool:
    """The process exists, is not a zombie, and (when `started` is given) is the same one."""
    if not pid:
        return False
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return started is None or stat[1] == started


def run_gone(
    *,
    machine_name: str,
    key: str = "",
    pid: int | None,
    pid_start: int | None = None,
    guard_pid: int | None = None,
    guard_start: int | None = None,
    run: str = "",
) -> str | None:
    """Why a run is over, when this machine can tell; None while any part of it may live.

    Only the run's own machine can look at its processes: the apply, the guard that outlives
    it (guard.py), and anything carrying its run marker (an orphaned ansible-playbook).
    """
    if machine_name != machine() or (key or "") != machine_key():
        return None
    if alive(pid, pid_start) or alive(guard_pid, guard_start):
        return None
    if run and run_processes(run):
        return None
    return f"process {pid} on {machine_name} is gone"


def new_marker(run_id: str) -> str:
    """A marker for one run's processes that no other run on any checkout shares."""
    return f"{run_id}#{secrets.token_hex(8)}"


def run_name(marker: str) -> str:
    """The run id a marker was made from (`CHG-0001/20261201T200000Z`)."""
    return marker.split("#", 1)[0]


def run_env(marker: str) -> dict[str, str]:
    """What a run's ansible-playbook carries in its environment (inherited by every child)."""
    return {RUN_MARKER: marker, RUN_NAME: run_name(marker)}


def run_processes(marker: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries OPSLEDGER_RUN_MARKER=<marker>."""
    needle = f"{RUN_MARKER}={marker}".encode()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def end_run_processes(run_id: str, *, grace: float = 3.0, patience: float = 60.0) -> list[int]:
    """SIGTERM every process of a run, SIGKILL what is left after `grace`, wait until gone.

    Returns the pids that were still there after `patience` seconds (uninterruptible sleep):
    callers must treat those as a run still going.
    """
    deadline_term = time.monotonic() + grace
    deadline = time.monotonic() + patience
    signaled: set[int] = set()
    killed: set[int] = set()
    while True:
        left = run_processes(run_id)
        if not left:
            return []
        for pid in left:
            if pid not in signaled:
                signaled.add(pid)
                _signal(pid, signal.SIGTERM)
            elif time.monotonic() >= deadline_term and pid not in killed:
                killed.add(pid)
                _signal(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def ci_job() -> str:
    """The CI job this process runs in, for a lock's `runner` (empty outside CI).

    Host names say nothing on CI runners (containers are all "localhost"); the runner and the
    job tell an operator which job holds a host and where to look for it.
    """
    env = os.environ
    if env.get("OPSLEDGER_RUNNER"):
        return env["OPSLEDGER_RUNNER"]
    if env.get("GITHUB_ACTIONS"):
        return (
            f"github:{env.get('RUNNER_NAME', '?')} run {env.get('GITHUB_RUN_ID', '?')} "
            f"job {env.get('GITHUB_JOB', '?')}"
        )
    if env.get("GITLAB_CI"):
        runner = env.get("CI_RUNNER_DESCRIPTION") or env.get("CI_RUNNER_ID", "?")
        return f"gitlab:{runner} job {env.get('CI_JOB_ID', '?')}"
    return ""
