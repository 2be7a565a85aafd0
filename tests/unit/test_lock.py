"""Host locks: all or nothing, contention exits 4, stale locks are reported and taken over."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time

import pytest

from opsledger.errors import OpsledgerError
from opsledger.lock import acquire, release
from opsledger.project import Project


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def test_locks_are_taken_and_released(project):
    held = acquire(
        project, environment="lab", hosts=["lab-db2", "lab-db1"], change="CHG-0001", owner="alice"
    )
    assert held.hosts == ["lab-db1", "lab-db2"] and held.taken_over == []
    record = json.loads(held.paths[0].read_text())
    assert record["change"] == "CHG-0001" and record["owner"] == "alice"
    release(held)
    assert not any(p.exists() for p in held.paths)


def test_contention_names_the_holder_and_exits_4(project):
    held = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0001", owner="ci")
    with pytest.raises(OpsledgerError) as err:
        acquire(
            project,
            environment="lab",
            hosts=["lab-app1", "lab-db1"],
            change="CHG-0002",
            owner="bob",
        )
    release(held)
    assert err.value.exit_code == 4
    (problem,) = err.value.problems
    assert "lab-db1 is locked by CHG-0001 (ci, pid" in problem.message
    # all or nothing: the free host was not left locked
    assert not (project.state_dir / "locks" / "lab" / "lab-app1.json").exists()


def test_a_dead_holders_lock_is_stale_and_taken_over(project):
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = project.state_dir / "locks" / "lab"
    folder.mkdir(parents=True)
    import socket

    (folder / "lab-db1.json").write_text(
        json.dumps(
            {
                "host": "lab-db1",
                "change": "CHG-0001",
                "owner": "ci",
                "pid": dead.pid,
                "machine": socket.gethostname(),
                "since": dt.datetime.now(dt.UTC).isoformat(),
            }
        )
    )
    held = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0002", owner="bob")
    assert held.taken_over == [
        f"lab-db1: stale lock of CHG-0001 removed (process {dead.pid} "
        f"on {socket.gethostname()} is gone)"
    ]


def test_an_old_lock_from_another_machine_is_stale(project):
    folder = project.state_dir / "locks" / "lab"
    folder.mkdir(parents=True)
    (folder / "lab-db1.json").write_text(
        json.dumps(
            {
                "host": "lab-db1",
                "change": "CHG-0001",
                "owner": "ci",
                "pid": 1,
                "machine": "elsewhere",
                "since": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    held = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0002", owner="bob")
    assert "older than" in held.taken_over[0]


def test_wait_takes_the_lock_once_it_is_released(project):
    first = acquire(project, environment="lab", hosts=["lab-db1"], change="CHG-0001", owner="ci")
    threading.Timer(0.5, release, args=[first]).start()
    started = time.monotonic()
    held = acquire(
        project,
        environment="lab",
        hosts=["lab-db1"],
        change="CHG-0002",
        owner="bob",
        wait=10,
        poll=0.1,
    )
    assert 0.3 < time.monotonic() - started < 5
    assert json.loads(held.paths[0].read_text())["change"] == "CHG-0002"
