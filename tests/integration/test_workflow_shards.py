"""Sharded applies on the lab (README, "Scaling out"): runners that share only a bare origin.

Each runner is its own clone with its own machine-lock folder (another machine, as CI runners
are), so the only thing they share is the origin: its host locks (refs, renewed by each
holder's heartbeat) and its run records. Proven here, against every lab host:

- three `ci apply --shard I/3` processes at once run one change: no host runs twice, each
  shard's locks are on the origin while it runs and refuse a fourth runner (exit 4 naming the
  holder and its shard), and the last shard merges the shards into THE run record (success,
  every host), the only run record of the change;
- a shard whose runner is torn down (apply, guard and playbook killed) leaves its lock on the
  origin; another runner takes it over only once it expired, finds the dead shard's
  write-ahead record and runs nothing twice; the merge job (`ci merge --final`) records the run
  as interrupted, so the change can run again.

Lab tests: they change live hosts (an idempotent converge of the hardware role: the runs are
short, and every shard still verifies its hosts with all of converge's suites).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsledger.gitrepo import commit_paths, git
from opsledger.inventory import load_inventory
from opsledger.layout import block_file
from opsledger.project import Project
from opsledger.records import read_runs
from opsledger.shards import committed_shard_files
from opsledger.signoff import approve_change

from .helpers import request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LEASE_S = 30
LOCKS = "refs/opsledger/locks/lab"
SHARD_ARGS = ("ci", "apply", "--env", "lab", "--push", "origin")
CI = {
    "OPSLEDGER_PERSON": "ci",
    "OPSLEDGER_COMMITTER_NAME": "opsledger CI",
    "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org",
}


@pytest.fixture
def origin(workflow_repo, tmp_path):
    """The project on a bare origin, its lab locks on that origin with a 30 s lease."""
    project = workflow_repo
    policy = project.root / "policies" / "locks.yml"
    policy.write_text(
        "---\ndefault: [machine]\nenvironments:\n"
        f"  lab:\n    backends: [machine, origin]\n    remote: origin\n    lease_s: {LEASE_S}\n"
        "    shards: {hosts_per_shard: 2, max: 3, on_failure: own}\n"
    )
    commit_paths(project.root, [policy], "Lab locks on the origin", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(project.root, "remote", "add", "origin", str(bare))
    return project, bare


def _change(project: Project, bare: Path, targets: str) -> str:
    change_id = request_change(
        project,
        title=f"Converge the hardware records of {targets}",
        runbook="converge",
        targets=targets,
        params={"tags": ["hardware"]},
        reason="Sharded apply on the lab",
    )
    approve_change(project, change_id, person="bob")
    git(project.root, "push", "-q", "origin", "main")
    return change_id


def _runner(project: Project, bare: Path, tmp_path: Path, name: str) -> tuple[Project, dict]:
    """A CI runner: its own clone, lab keys, machine-lock folder and runner name."""
    root = tmp_path / name
    if not root.exists():
        git(tmp_path, "clone", "-q", str(bare), str(root))
        shutil.copytree(project.lab_state_dir, root / ".opsledger" / "lab")
    env = {
        **CI,
        "OPSLEDGER_LOCK_DIR": str(tmp_path / f"locks-{name}"),
        "OPSLEDGER_RUNNER": f"runner-{name}",
    }
    return Project(root), env


def _start(runner: Project, env: dict, *args: str, elsewhere: bool = False) -> subprocess.Popen:
    """The CLI in the background; `elsewhere`: in a pid namespace of its own, which is another
    machine as far as locks can tell (its processes cannot be looked at from here), and which
    the kernel tears down whole — apply, guard and playbook — when its first process dies."""
    log = open(runner.root.parent / f"{runner.root.name}.log", "w")  # noqa: SIM115 - kept by proc
    machine = ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child"]
    return subprocess.Popen(
        [*(machine if elsewhere else []), sys.executable, "-m", "opsledger", *args],
        cwd=runner.root,
        env={**runner.ansible_env(), "OPSLEDGER_PROJECT": str(runner.root), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _output(runner: Project) -> str:
    return (runner.root.parent / f"{runner.root.name}.log").read_text()


def _holders(bare: Path) -> dict[str, dict]:
    """Host -> the holder its lock ref on the origin names."""
    out = git(bare, "for-each-ref", "--format=%(refname)%09%(contents)", LOCKS).stdout
    found = {}
    for line in out.splitlines():
        ref, _, body = line.partition("\t")
        if body.startswith("{"):
            found[ref.rsplit("/", 1)[1]] = json.loads(body)
    return found


def _auditor(bare: Path, tmp_path: Path) -> Project:
    root = tmp_path / f"auditor-{time.monotonic_ns()}"
    git(tmp_path, "clone", "-q", str(bare), str(root))
    return Project(root)


def test_three_runners_apply_one_change_in_shards_and_merge_one_run_record(
    converged_lab, origin, tmp_path
):
    project, bare = origin
    change_id = _change(project, bare, "all")
    runners = [_runner(project, bare, tmp_path, f"r{i}") for i in range(1, 4)]
    other, other_env = _runner(project, bare, tmp_path, "r4")  # cloned before: quick to start
    procs = [
        _start(r, env, *SHARD_ARGS, "--wait", "900", "--shard", f"{i}/3")
        for i, (r, env) in enumerate(runners, start=1)
    ]
    # While they run: every shard's locks are on the origin, and a fourth runner is refused.
    seen_together, contended = 0, None
    deadline = time.monotonic() + 3600
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "the shards did not finish in an hour"
        holders = _holders(bare)
        shards = {h["runner"] for h in holders.values()}
        seen_together = max(seen_together, len(shards))
        if contended is None and any("shard 2/3" in s for s in shards):
            contended = subprocess.run(
                [sys.executable, "-m", "opsledger", "apply", change_id, "--shard", "2/3"],
                cwd=other.root,
                env={**other.ansible_env(), "OPSLEDGER_PROJECT": str(other.root), **other_env},
                capture_output=True,
                text=True,
                timeout=600,
            )
        time.sleep(0.5)
    for (runner, _), proc in zip(runners, procs, strict=True):
        assert proc.returncode == 0, _output(runner)[-4000:]
    assert seen_together >= 2, "no two shards held their hosts at the same moment"
    assert contended is not None and contended.returncode == 4, contended
    assert "is locked on the origin by " + change_id in contended.stdout + contended.stderr
    assert "runner-r2 shard 2/3" in contended.stdout + contended.stderr
    assert _holders(bare) == {}  # every lock given back

    audit = _auditor(bare, tmp_path)
    (run,) = [r for r in read_runs(audit).committed if r.change == change_id]
    assert run.result == "success" and run.targets == "all"
    every = load_inventory(project.inventory_dir("lab")).hosts  # every host of the lab, once
    assert run.hosts == sorted(every) and len(every) >= 4
    assert [s["shard"] for s in run.runner["shards"]] == ["1/3", "2/3", "3/3"]
    finals = [f for f in committed_shard_files(audit, change_id) if not f.started]
    assert len(finals) == 3
    ran = [h for f in finals for h in f.record.stats]  # the hosts each shard's playbook ran on
    assert sorted(ran) == run.hosts  # no host ran twice, none was left out
    for file in finals:
        assert set(file.record.stats) == set(file.record.hosts)
        assert file.record.verification["status"] == "passed"
    (db,) = [f for f in finals if "lab-db1" in f.record.hosts]
    assert sorted(db.record.hosts) == ["lab-db1", "lab-db2"]  # the db cluster on one shard


def _claimed(bare: Path, runner: Project, change_id: str, timeout: float = 600) -> None:
    """Wait until shard 1's write-ahead record is on the origin (the shard claimed its run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        folder = block_file(change_id, "shards") + "/"
        listed = git(bare, "ls-tree", "-r", "--name-only", "main", folder, check=False).stdout
        if "-1of2.started.json" in listed:
            return
        time.sleep(0.5)
    raise AssertionError("shard 1 never claimed its run on the origin:\n" + _output(runner))


def test_a_torn_down_runners_shard_lock_is_taken_over_after_expiry_and_the_run_is_interrupted(
    converged_lab, origin, tmp_path
):
    project, bare = origin
    change_id = _change(project, bare, "app")
    (one, one_env), (two, two_env) = (
        _runner(project, bare, tmp_path, "k1"),
        _runner(project, bare, tmp_path, "k2"),
    )
    doomed = _start(one, one_env, *SHARD_ARGS, "--shard", "1/2", elsewhere=True)
    _claimed(bare, one, change_id)
    holders = _holders(bare)
    assert holders["lab-app1"]["runner"] == "runner-k1 shard 1/2"
    # The runner is torn down: its pid namespace dies whole (apply, guard, playbook) and
    # nobody frees its lock.
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(60)
    time.sleep(2)
    killed_at = dt.datetime.now(dt.UTC)
    left = _holders(bare)["lab-app1"]  # nobody freed it: it expires by itself
    expires = dt.datetime.fromisoformat(left["expires"])
    assert expires <= killed_at + dt.timedelta(seconds=LEASE_S + 5)

    other = _start(two, two_env, *SHARD_ARGS, "--wait", "300", "--shard", "1/2")
    other.wait(900)
    out = _output(two)
    assert dt.datetime.now(dt.UTC) >= expires  # it waited for the lease to run out
    assert "taken over" in out and "expired at" in out, out[-4000:]
    assert "already ran (started)" in out, out[-4000:]  # the dead shard is not run twice
    assert _holders(bare) == {}

    second = _start(two, two_env, *SHARD_ARGS, "--shard", "2/2")
    assert second.wait(1800) == 0, _output(two)[-4000:]
    merge = subprocess.run(
        [sys.executable, "-m", "opsledger", "ci", "merge", "--env", "lab", "--push", "origin",
         "--final"],
        cwd=two.root,
        env={**two.ansible_env(), "OPSLEDGER_PROJECT": str(two.root), **two_env},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert merge.returncode == 1, merge.stdout + merge.stderr  # the run did not succeed
    audit = _auditor(bare, tmp_path)
    (run,) = [r for r in read_runs(audit).committed if r.change == change_id]
    assert run.result == "interrupted"
    shards = {s["shard"]: s for s in run.runner["shards"]}
    assert shards["1/2"]["result"] == "interrupted" and shards["2/2"]["result"] == "success"
    assert "wrote no final record" in shards["1/2"]["why"]
