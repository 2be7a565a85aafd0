"""Locks on an environment's target hosts, so two runs never touch a host at once.

One interface (`acquire` / `release` / `locked`), two backends, chosen per environment in
`policies/locks.yml` (README, "Locks"):

- **machine** (always on): one file per host under a machine-wide folder,
  `$OPSLEDGER_LOCK_DIR` or `/run/lock/opsledger/<env>/<host>.lock`, held with `flock` by the
  run for its whole length. Every checkout and every user of this machine sees the same files,
  so a scratch clone and the main checkout exclude each other. The kernel drops a flock when its
  last holder dies, so there is no stale lock to take over and no takeover race: whoever gets
  the flock holds the host, atomically. Lock files are never deleted (deleting a flock'd path
  is what lets two processes lock two different inodes). Next to it `<host>.json` says who
  holds it; a holder that dies leaves it behind, which the next holder reports as taken over.
- **origin** (cross-controller): refs `refs/opsledger/locks/<env>/<host>` on a git remote,
  created, taken over and deleted by compare-and-swap pushes (`origin_lock.py`). The holder
  renews its `expires` by CAS while it lives (a heartbeat every third of `lease_s`), so a
  holder on a runner that vanished is stale `lease_s` after its last beat, not hours later.
  Waiters line up in a fair queue on the same origin (`origin_queue.py`): a monotonic ticket
  each, and only the first in line (of live entries) may take the hosts.

Contention raises OpsledgerError with exit 4 naming the holder (or waits with `wait`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opsledger import origin_queue, procs
from opsledger.errors import EXIT_INVALID, EXIT_LOCKED, OpsledgerError, Problem
from opsledger.lockholder import Holder
from opsledger.origin_lock import Heartbeat, release_origin, take_origin
from opsledger.policy.files import policy_path, read_policy
from opsledger.project import Project

# An origin lock whose holder cannot be asked (another machine) is stale this long after its
# holder last renewed it (policies/locks.yml `lease_s`; the heartbeat renews it every third).
DEFAULT_LEASE_S = 600
# A run on another machine whose write-ahead record has no final record after this long is
# taken for dead (reconcile.py): longer than any runbook timeout we ship.
STALE_AFTER = dt.timedelta(hours=6)
DEFAULT_LOCK_DIR = Path("/run/lock/opsledger")


@dataclass
class LockPolicy:
    backends: tuple[str, ...]
    remote: str = "origin"
    lease_s: int = DEFAULT_LEASE_S
    shards: dict[str, Any] = field(default_factory=dict)  # shards.py reads it


def lock_policy(project: Project, environment: str) -> LockPolicy:
    """The lock backends of an environment (`policies/locks.yml`; default: machine only).

    The file is read with the project's loader and checked against its schema
    (`opsledger policy schema locks`): a policy that does not check locks nothing.
    """
    if not policy_path(project, "locks").exists():
        return LockPolicy(("machine",))
    data, problems = read_policy(project, "locks", "lock policy")
    if data is None:
        raise OpsledgerError(problems, EXIT_INVALID)
    entry = (data.get("environments") or {}).get(environment) or {}
    backends = entry.get("backends", data.get("default", ["machine"]))
    remote = entry.get("remote", "origin")
    # The machine lock is never optional: it is what makes a dead holder's lock vanish.
    return LockPolicy(
        ("machine", *(b for b in backends if b != "machine")),
        remote,
        int(entry.get("lease_s", DEFAULT_LEASE_S)),
        dict(entry.get("shards") or {}),
    )


def lock_dir() -> Path:
    """The machine-wide lock folder every checkout and user of this machine shares."""
    configured = os.environ.get("OPSLEDGER_LOCK_DIR")
    if configured:
        return Path(configured)
    return DEFAULT_LOCK_DIR if DEFAULT_LOCK_DIR.parent.is_dir() else Path("/tmp/opsledger-locks")


def _shared_dir(path: Path) -> Path:
    """Create a folder every user may lock in (sticky and world-writable, like /tmp)."""
    root = lock_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    for level in (root, path):
        if not level.is_dir():
            with contextlib.suppress(FileExistsError):
                level.mkdir()
                with contextlib.suppress(PermissionError):
                    level.chmod(0o1777)
    return path


@dataclass
class MachineLock:
    host: str
    fd: int
    info: Path


def _write_info(path: Path, holder: Holder) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(holder.to_json())
    with contextlib.suppress(PermissionError):
        tmp.chmod(0o666)
    tmp.replace(path)


def _read_info(path: Path) -> Holder | None:
    try:
        return Holder.parse(path.read_text())
    except OSError:
        return None


def _take_machine(folder: Path, holder: Holder) -> tuple[MachineLock | None, Holder | None, str]:
    """(lock, None, note) when taken; (None, holder, "") when another run holds the host."""
    path = folder / f"{holder.host}.lock"
    info = folder / f"{holder.host}.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return None, _read_info(info) or Holder(holder.host, "?", "?", 0, "?", "?"), ""
    note = ""
    previous = _read_info(info)
    if previous is not None:
        # Its holder died without releasing (it would have removed this file). A playbook it
        # left behind may still be changing the host: that run still holds it.
        if previous.run and procs.run_processes(previous.run):
            os.close(fd)
            return None, previous, ""
        note = f"{holder.host}: lock of {previous.describe()} taken over: its process is gone"
    _write_info(info, holder)
    return MachineLock(holder.host, fd, info), None, note


@dataclass
class HeldLocks:
    environment: str
    hosts: list[str]
    backends: tuple[str, ...]
    holder: Holder
    taken_over: list[str]  # descriptions of dead holders replaced
    machine: list[MachineLock] = field(default_factory=list)
    origin: Any = None  # origin_lock.OriginLease when the environment uses the origin backend
    heartbeat: Any = None  # origin_lock.Heartbeat renewing `origin` while the run lives
    released: bool = False

    @property
    def fds(self) -> list[int]:
        """The flock'd descriptors: a guard process inherits them to hold the hosts on."""
        return [m.fd for m in self.machine]

    def note(self, **changes: Any) -> None:
        """Add what is learnt later (the guard's pid, the ansible-playbook pid) to the holder."""
        self.holder = Holder(**{**asdict(self.holder), **changes})
        if self.origin is not None and self.origin.holder is not None:
            with self.origin.guard:  # the next heartbeat pushes it to the origin too
                self.origin.holder = Holder(**{**asdict(self.origin.holder), **changes})
        for lock in self.machine:
            _write_info(lock.info, Holder(**{**asdict(self.holder), "host": lock.host}))

    def note_runner(self, pid: int) -> None:
        if self.holder.runner_pid != pid:
            self.note(runner_pid=pid)

    def as_dict(self) -> dict[str, Any]:
        """What a run record keeps about its locks."""
        data: dict[str, Any] = {"backends": list(self.backends), "taken_over": self.taken_over}
        if self.origin is not None:
            data["origin"] = self.origin.remote
        return data


def _refusal(environment: str, blocked: list[tuple[str, Holder]]) -> OpsledgerError:
    problems = []
    for backend, b in blocked:
        where = "" if backend == "machine" else " on the origin"
        here = b.machine_key == procs.machine_key()
        if backend == "queue":
            problems.append(
                Problem(
                    f"{b.host} is waited for on the origin by {b.describe()}, ticket "
                    f"{b.ticket}, first in line",
                    field=f"{environment}:{b.host}",
                    fix=(
                        "wait your turn (apply --wait); if that waiter died, its place expires "
                        f"at {b.expires}"
                    ),
                )
            )
            continue
        if b.guard_pid and here and not procs.alive(b.pid, b.pid_start):
            fix = (
                "its apply died; its guard is ending the playbook and then frees the host: "
                "retry in a moment (apply --wait 60)"
            )
        elif b.run and here and not procs.alive(b.pid, b.pid_start):
            fix = (
                f"its apply died but its playbook still runs (processes with "
                f"{procs.RUN_MARKER}={b.run}); wait for it (apply --wait) or stop them"
            )
        elif backend == "origin":
            fix = (
                "wait for it (apply --wait); if that run died on another machine, its lock "
                f"expires at {b.expires} (or delete refs/opsledger/locks/{environment}/{b.host} "
                "on the remote once you know it is dead)"
            )
        else:
            fix = "wait for it (apply --wait); the lock ends with its run"
        problems.append(
            Problem(
                f"{b.host} is locked{where} by {b.describe()}",
                field=f"{environment}:{b.host}",
                fix=fix,
            )
        )
    return OpsledgerError(problems, EXIT_LOCKED)


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
    run: str = "",
    runner: str | None = None,
) -> HeldLocks:
    """Lock every host or none, with every backend of the environment; exit 4 when held.

    With the origin backend, a run that waits lines up in the origin's fair queue
    (origin_queue.py) and takes the hosts only when first in line; once held, a heartbeat
    renews the origin locks' expiry until `release`. `runner` names the CI job holding them
    (default: procs.ci_job()).

    Example:
        held = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0001",
                       owner="ci")
        release(held)
    """
    policy = lock_policy(project, environment)
    folder = _shared_dir(lock_dir() / environment)
    deadline = time.monotonic() + wait
    pid = os.getpid()
    lease = dt.timedelta(seconds=policy.lease_s)
    place: origin_queue.Place | None = None
    stayed = 0.0  # when our queue entries were last renewed (monotonic)
    try:
        while True:
            moment = now or dt.datetime.now(dt.UTC)
            holder = Holder(
                host="",
                change=change,
                owner=owner,
                pid=pid,
                machine=procs.machine(),
                since=moment.isoformat(),
                environment=environment,
                run=run,
                pid_start=procs.start_time(pid),
                expires=(moment + lease).isoformat(),
                machine_key=procs.machine_key(),
                runner=procs.ci_job() if runner is None else runner,
            )
            held = HeldLocks(environment, sorted(set(hosts)), policy.backends, holder, [])
            blocked: list[tuple[str, Holder]] = []
            for host in held.hosts:  # a fixed order: two applies never wait in a ring
                lock, other, note = _take_machine(
                    folder, Holder(**{**asdict(holder), "host": host})
                )
                if lock is None:
                    blocked.append(("machine", other))
                    break
                held.machine.append(lock)
                if note:
                    held.taken_over.append(note)
            if not blocked and "origin" in policy.backends:
                try:
                    ahead = origin_queue.ahead_of(
                        project.root, policy.remote, environment, held.hosts, place, moment
                    )
                    if ahead:  # others wait longer: no jumping the line
                        blocked += [("queue", h) for h in ahead]
                    else:
                        taken, refused, notes = take_origin(
                            project,
                            remote=policy.remote,
                            holder=holder,
                            hosts=held.hosts,
                            now=moment,
                        )
                        if taken is None:
                            blocked += [("origin", h) for h in refused]
                        else:
                            taken.lease_s = policy.lease_s
                            held.origin = taken
                            held.taken_over += notes
                except OpsledgerError:
                    release(held)  # the origin is unreachable: hold nothing
                    raise
            if not blocked:
                if held.origin is not None:
                    origin_queue.leave(project.root, policy.remote, place)
                    place = None
                    held.heartbeat = Heartbeat(held.origin, every=policy.lease_s / 3)
                return held
            release(held)
            if time.monotonic() >= deadline:
                raise _refusal(environment, blocked)
            if "origin" in policy.backends:
                clock = time.monotonic()
                if place is None:
                    place = origin_queue.line_up(
                        project.root, policy.remote, holder, held.hosts, policy.lease_s, moment
                    )
                    stayed = clock
                elif clock - stayed > policy.lease_s / 3:
                    origin_queue.stay(
                        project.root, policy.remote, holder, place, policy.lease_s, moment
                    )
                    stayed = clock
            time.sleep(poll)
    except BaseException:
        if place is not None:  # giving up (or refused): leave the line
            origin_queue.leave(project.root, policy.remote, place)
        raise


def release(held: HeldLocks) -> list[str]:
    """Give every host back; returns warnings (an origin lock someone else took meanwhile)."""
    if held.released:
        return []
    held.released = True
    warnings = []
    if held.heartbeat is not None:
        held.heartbeat.stop()  # before the refs go: a late beat must not re-create them
    if held.origin is not None:
        warnings = release_origin(held.origin)
    for lock in reversed(held.machine):
        lock.info.unlink(missing_ok=True)  # while still holding it: the next holder sees none
        os.close(lock.fd)
    return warnings


@contextlib.contextmanager
def locked(project: Project, **kwargs: Any) -> Iterator[HeldLocks]:
    held = acquire(project, **kwargs)
    try:
        yield held
    finally:
        release(held)
