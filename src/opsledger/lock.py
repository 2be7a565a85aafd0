"""Locks on an environment's target hosts, so two applies never touch a host at once.

One lock file per host under `.opsledger/locks/<env>/<host>.json`, created atomically
(O_EXCL) and holding who took it: change, person, pid, machine and time. A lock whose process
is gone (same machine, pid not alive) or that is older than the longest allowed run is stale:
it is reported and taken over. A live lock means contention: the caller gets a clear message
and exit 4, or waits for it with `wait`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import EXIT_LOCKED, OpsledgerError, Problem
from opsledger.project import Project

STALE_AFTER = dt.timedelta(hours=6)  # longer than any runbook timeout we ship


@dataclass(frozen=True)
class LockInfo:
    host: str
    change: str
    owner: str
    pid: int
    machine: str
    since: str
    runner_pid: int | None = None  # the ansible-playbook process, which may outlive its parent

    def stale(self, now: dt.datetime) -> str | None:
        """Why this lock is stale, or None when its holder may still be running."""
        if (
            self.machine == socket.gethostname()
            and not _alive(self.pid)
            and not (self.runner_pid and _alive(self.runner_pid))
        ):
            return f"process {self.pid} on {self.machine} is gone"
        if now - dt.datetime.fromisoformat(self.since) > STALE_AFTER:
            return f"older than {STALE_AFTER}"
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class HeldLocks:
    environment: str
    hosts: list[str]
    paths: list[Path]
    taken_over: list[str]  # descriptions of stale locks replaced

    def note_runner(self, pid: int) -> None:
        """Record the ansible-playbook pid in every held lock.

        If this process is killed, the playbook it started may run on; its hosts stay locked
        until it ends.
        """
        for path in self.paths:
            info = _read(path)
            if info and info.runner_pid != pid:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**info.__dict__, "runner_pid": pid}))
                tmp.replace(path)


def _read(path: Path) -> LockInfo | None:
    try:
        data = json.loads(path.read_text())
        return LockInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def _try_take(path: Path, info: LockInfo) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(info.__dict__, handle)
    return True


def acquire(
    project: Project,
    *,
    environment: str,
    hosts: list[str],
    change: str,
    owner: str,
    wait: float = 0,
    poll: float = 1.0,
    now: dt.datetime | None = None,
) -> HeldLocks:
    """Lock every host or none; stale locks are taken over and reported.

    Example:
        held = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0001",
                       owner="ci")
        release(held)
    """
    folder = project.state_dir / "locks" / environment
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        moment = now or dt.datetime.now(dt.UTC)
        taken: list[Path] = []
        replaced: list[str] = []
        blocked: list[LockInfo] = []
        for host in sorted(set(hosts)):  # a fixed order: no deadlock between two applies
            path = folder / f"{host}.json"
            info = LockInfo(
                host, change, owner, os.getpid(), socket.gethostname(), moment.isoformat()
            )
            if _try_take(path, info):
                taken.append(path)
                continue
            holder = _read(path)
            why = holder.stale(moment) if holder else "unreadable lock file"
            if why:
                path.unlink(missing_ok=True)
                if _try_take(path, info):
                    taken.append(path)
                    replaced.append(
                        f"{host}: stale lock of {holder.change if holder else '?'} removed ({why})"
                    )
                    continue
            if holder:
                blocked.append(holder)
        if not blocked:
            return HeldLocks(environment, sorted(set(hosts)), taken, replaced)
        for path in taken:
            path.unlink(missing_ok=True)
        if time.monotonic() >= deadline:
            raise OpsledgerError(
                [
                    Problem(
                        f"{b.host} is locked by {b.change} ({b.owner}, pid {b.pid} on "
                        f"{b.machine} since {b.since})",
                        field=f"{environment}:{b.host}",
                        fix="wait for it (apply --wait) or, if that run died, remove "
                        f".opsledger/locks/{environment}/{b.host}.json",
                    )
                    for b in blocked
                ],
                EXIT_LOCKED,
            )
        time.sleep(poll)


def release(held: HeldLocks) -> None:
    for path in held.paths:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(project: Project, **kwargs) -> Iterator[HeldLocks]:
    held = acquire(project, **kwargs)
    try:
        yield held
    finally:
        release(held)
