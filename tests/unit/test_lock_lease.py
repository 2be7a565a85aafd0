"""Origin locks past one controller, on a real bare origin and real processes: the holder's
heartbeat renews `expires` by compare-and-swap, a killed holder's lock is taken over once it
expired (not before), waiters line up in a fair queue and take the hosts in ticket order, and
contention still exits 4 naming the holder and the runner it runs on."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from opsledger import procs
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git
from opsledger.lock import acquire, release
from opsledger.lockholder import Holder
from opsledger.origin_lock import lock_ref
from opsledger.origin_queue import QUEUE_REFS
from opsledger.project import Project

FORK = multiprocessing.get_context("fork")
LEASE_S = 3
SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def origin(tmp_path):
    """A bare origin whose lab locks live on it with a 3 s lease; clone(name) makes a
    controller (its own checkout and its own machine-lock folder, as another machine has)."""
    bare = tmp_path / "origin.git"
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    (seed / "policies").mkdir()
    (seed / "policies" / "locks.yml").write_text(
        "environments:\n"
        f"  lab: {{backends: [machine, origin], remote: origin, lease_s: {LEASE_S}}}\n"
    )
    git(seed, "add", "-A")
    who = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a"}
    git(seed, "-c", "user.email=a@x", "commit", "-q", "-m", "seed", env=who)
    git(seed, "push", "-q", str(bare), "main")

    def clone(name: str, lease_s: int = LEASE_S) -> tuple[Project, str]:
        root = tmp_path / name
        git(tmp_path, "clone", "-q", str(bare), str(root))
        if lease_s != LEASE_S:  # the policy is read from the checkout
            (root / "policies" / "locks.yml").write_text(
                "environments:\n"
                f"  lab: {{backends: [machine, origin], remote: origin, lease_s: {lease_s}}}\n"
            )
        return Project(root), str(tmp_path / f"locks-{name}")

    return bare, clone


def _holder_on_origin(bare: Path, host: str) -> tuple[str, Holder]:
    ref = lock_ref("lab", host)
    oid = git(bare, "rev-parse", ref).stdout.strip()
    return oid, Holder.parse(git(bare, "log", "-1", "--format=%B", oid).stdout)


def _take(project, change, hosts=("lab-db1",), **kwargs):
    return acquire(
        project, environment="lab", hosts=list(hosts), change=change, owner="ci", **kwargs
    )


def test_the_heartbeat_renews_the_lock_so_it_outlives_its_lease(origin, monkeypatch):
    bare, clone = origin
    (ci, ci_locks), (laptop, laptop_locks) = clone("ci"), clone("laptop")
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", ci_locks)
    held = _take(ci, "CHG-0001")
    first_oid, first = _holder_on_origin(bare, "lab-db1")
    # Two beats, however long a loaded machine makes them (a fixed sleep of two leases saw
    # fewer, and a starved heartbeat let the 3 s lease run out before the check).
    deadline = time.monotonic() + 120
    while held.origin.renewals < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    oid, now = _holder_on_origin(bare, "lab-db1")
    assert oid != first_oid and held.origin.renewals >= 2
    assert now.expires > first.expires and now.renewed and now.since == first.since
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", laptop_locks)  # another machine tries ...
    # ... when the lease it was taken with has run out: without the renewals it would be free.
    # Judged at that moment on purpose, not at whatever moment a loaded machine reaches.
    with pytest.raises(OpsledgerError) as err:
        _take(laptop, "CHG-0002", now=dt.datetime.fromisoformat(first.expires))
    assert err.value.exit_code == 4 and "locked on the origin by CHG-0001" in str(err.value)
    assert release(held) == []
    assert "refs/opsledger/locks" not in git(bare, "for-each-ref").stdout  # freed


def _hold_elsewhere(root: str, lock_dir: str, ready) -> None:
    """A holder on 'another machine' (its pids cannot be looked at from here), killed later."""
    os.environ["OPSLEDGER_LOCK_DIR"] = lock_dir
    procs.machine_key = lambda: "another-machine"  # its liveness is unknowable from here
    os.environ["OPSLEDGER_RUNNER"] = "github:runner-7 run 42 job apply"
    _take(Project(Path(root)), "CHG-0001")
    ready.set()
    time.sleep(600)


def test_a_killed_holders_lock_is_taken_over_only_after_it_expired(origin, monkeypatch):
    bare, clone = origin
    lease = 10  # its heartbeat beats every third of it
    (ci, ci_locks), (laptop, laptop_locks) = clone("ci", lease), clone("laptop", lease)
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_elsewhere, args=(str(ci.root), ci_locks, ready))
    holder.start()
    assert ready.wait(30)
    time.sleep(lease / 3 + 0.5)  # let it beat once
    os.kill(holder.pid, signal.SIGKILL)  # its heartbeat dies with it; the ref stays
    holder.join(10)
    _, dead = _holder_on_origin(bare, "lab-db1")
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", laptop_locks)
    # Not yet expired: still held, exit 4. Judged a second before its expiry, not at whatever
    # moment a loaded machine gets here (it may be past it: then taking it would be right).
    with pytest.raises(OpsledgerError) as err:
        _take(laptop, "CHG-0002", now=dt.datetime.fromisoformat(dead.expires) - SECOND)
    assert err.value.exit_code == 4
    (problem,) = err.value.problems
    assert "locked on the origin by CHG-0001" in problem.message
    assert "runner github:runner-7 run 42 job apply" in problem.message
    # A renewal whose `git push` was under way when the holder was killed outlives it and
    # lands later (seen under load: the refusal named an expiry 4-7 s after the one read
    # above). Its heartbeat beats one at a time, so that one late beat is all there can be:
    # the refusal names the expiry read before or the one on the origin now.
    _, last = _holder_on_origin(bare, "lab-db1")
    assert last.change == "CHG-0001" and last.expires >= dead.expires
    assert any(f"expires at {h.expires}" in problem.fix for h in (dead, last)), problem.fix
    # On the real clock a waiter takes it over, and not before it expired. (How soon after is
    # the machine's speed; `wait` only bounds a waiter that would never take it.)
    held = _take(laptop, "CHG-0002", wait=120, poll=0.2)
    (note,) = [n for n in held.taken_over if "origin lock of CHG-0001" in n]
    expired = note.rsplit("expired at ", 1)[1]  # taken over because it expired ...
    assert expired >= dead.expires, note  # the late beat may land even now: no older one
    assert dt.datetime.now(dt.UTC) >= dt.datetime.fromisoformat(expired)  # ... not before
    _, now = _holder_on_origin(bare, "lab-db1")
    assert now.change == "CHG-0002"
    release(held)


def _waiter(root, lock_dir, name, start, log, hold_s) -> None:
    os.environ["OPSLEDGER_LOCK_DIR"] = lock_dir
    start.wait()
    held = _take(Project(Path(root)), name, hosts=("lab-db1", "lab-db2"), wait=120, poll=0.2)
    log.put((name, time.monotonic()))
    time.sleep(hold_s)
    release(held)


def _queue(bare: Path) -> dict[str, int]:
    """Waiter (change) -> ticket, as the queue refs on the origin say."""
    found = {}
    for line in git(bare, "for-each-ref", "--format=%(refname) %(objectname)").stdout.split("\n"):
        if line.startswith(QUEUE_REFS):
            ref, oid = line.split()
            holder = json.loads(git(bare, "log", "-1", "--format=%B", oid).stdout)
            found[holder["change"]] = int(ref.rsplit("/", 1)[1])
    return found


def test_waiters_racing_on_the_origin_take_the_hosts_in_ticket_order(origin, monkeypatch):
    bare, clone = origin
    # A lease long enough that a waiter slowed down by a loaded machine keeps its place.
    (ci, ci_locks) = clone("ci", lease_s=30)
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", ci_locks)
    first = _take(ci, "CHG-0001", hosts=("lab-db1", "lab-db2"))
    controllers = [clone(f"w{i}", lease_s=30) for i in range(4)]
    start, log = FORK.Event(), FORK.Queue()
    waiters = [
        FORK.Process(target=_waiter, args=(str(p.root), locks, f"CHG-10{i}", start, log, 0.3))
        for i, (p, locks) in enumerate(controllers)
    ]
    for waiter in waiters:
        waiter.start()
    start.set()  # they race for their tickets
    deadline = time.monotonic() + 60
    while len(_queue(bare)) < len(waiters) and time.monotonic() < deadline:
        time.sleep(0.2)
    tickets = _queue(bare)
    assert len(tickets) == len(waiters), tickets
    assert sorted(tickets.values()) == list(range(1, len(waiters) + 1))  # unique, monotonic
    newcomer, newcomer_locks = clone("newcomer", lease_s=30)
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", newcomer_locks)
    with pytest.raises(OpsledgerError) as err:  # a newcomer that does not wait jumps no line
        release(_take(newcomer, "CHG-0999", hosts=("lab-db2",)))
    assert err.value.exit_code == 4
    assert "waited for on the origin by CHG-10" in str(err.value) and "first in line" in str(
        err.value
    )
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", ci_locks)
    release(first)
    for waiter in waiters:
        waiter.join(120)
    order = [log.get(timeout=5) for _ in waiters]
    taken = [name for name, _ in sorted(order, key=lambda item: item[1])]
    assert taken == sorted(tickets, key=tickets.get)  # first come, first served
    refs = git(bare, "for-each-ref", "refs/opsledger/locks", QUEUE_REFS).stdout
    assert refs == ""  # every lock and every place in line was given back


def _dead_waiter(root, lock_dir, ready) -> None:
    os.environ["OPSLEDGER_LOCK_DIR"] = lock_dir
    ready.set()
    _take(Project(Path(root)), "CHG-0500", wait=300, poll=0.2)


def test_a_dead_waiters_place_expires_and_blocks_nobody(origin, monkeypatch):
    bare, clone = origin
    lease = 10  # its place must still be seen live right after it died, on a loaded machine
    (ci, ci_locks), (dead, dead_locks), (late, late_locks) = (
        clone("ci", lease),
        clone("dead", lease),
        clone("late", lease),
    )
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", ci_locks)
    held = _take(ci, "CHG-0001")
    ready = FORK.Event()
    waiter = FORK.Process(target=_dead_waiter, args=(str(dead.root), dead_locks, ready))
    waiter.start()
    assert ready.wait(30)
    deadline = time.monotonic() + 30
    while "CHG-0500" not in _queue(bare) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(waiter.pid, signal.SIGKILL)  # it dies in line
    waiter.join(10)
    release(held)
    place = _place_expires(bare, "CHG-0500")
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", late_locks)
    # Its place is still live: no jumping. Judged a second before the place expires, not at
    # whatever moment a loaded machine gets here (past it, taking the host would be right).
    with pytest.raises(OpsledgerError) as err:
        _take(late, "CHG-0002", now=place - SECOND)
    assert "waited for on the origin by CHG-0500" in str(err.value)
    # On the real clock a waiter gets the host once the place expired; `wait` only bounds one
    # that never would (how soon is the machine's speed, not asserted).
    release(_take(late, "CHG-0002", wait=120, poll=0.2))
    assert dt.datetime.now(dt.UTC) >= place  # not before
    assert git(bare, "for-each-ref", QUEUE_REFS).stdout == ""  # deleted by whoever saw it


def _place_expires(bare: Path, change: str) -> dt.datetime:
    """When the queue entries of `change` on the origin expire (the latest of them)."""
    found = []
    for line in git(bare, "for-each-ref", "--format=%(objectname)", QUEUE_REFS).stdout.split():
        holder = json.loads(git(bare, "log", "-1", "--format=%B", line).stdout)
        if holder["change"] == change:
            found.append(dt.datetime.fromisoformat(holder["expires"]))
    assert found, f"{change} is not in line"
    return max(found)


def test_the_guard_of_a_dead_run_frees_its_renewed_locks_and_no_one_elses(origin, monkeypatch):
    """The guard is told the lock commits when the run starts; the heartbeat replaces them.
    Freeing by the old commit failed (stale info) and left a dead run's hosts locked until
    they expired: the guard now frees the refs whose holder names its run."""
    from opsledger.guard import _free

    bare, clone = origin
    (ci, ci_locks) = clone("ci")
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", ci_locks)
    held = _take(ci, "CHG-0001", hosts=("lab-db1", "lab-db2"))
    told = held.origin.as_spec()["refs"]  # what the guard was told
    held.note(run="CHG-0001/20261201T200000Z")
    deadline = time.monotonic() + 30
    while held.origin.renewals < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    held.heartbeat.stop()  # the run died: no more beats
    db1, db2 = lock_ref("lab", "lab-db1"), lock_ref("lab", "lab-db2")
    assert git(bare, "rev-parse", db1).stdout.strip() != told[db1]  # renewed since
    assert _free(ci.root, "origin", db1, told[db1], "CHG-0001/20261201T200000Z") == (f"freed {db1}")
    assert "left alone" in _free(ci.root, "origin", db2, told[db2], "CHG-0002/20261201T210000Z")
    assert git(bare, "for-each-ref", "--format=%(refname)", LOCKS_PREFIX).stdout.split() == [db2]
    held.origin.refs.pop(db1)
    release(held)


LOCKS_PREFIX = "refs/opsledger/locks"
