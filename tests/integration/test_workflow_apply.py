"""apply on the lab, end to end: approved changes run, verify, roll back, lock and record.

These tests change live hosts, so this module sorts after test_site.py (which checks that the
lab matches site.yml) and puts back what it changed.
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
import yaml

from opsledger.gitrepo import git
from opsledger.lab.service import run_on_host
from opsledger.layout import change_folder
from opsledger.project import Project
from opsledger.records import Record
from opsledger.signoff import approve_change

from .helpers import opsledger, request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _records(project, change_id) -> list[Record]:
    """The change's final run records (the write-ahead `.started.json` ones left out)."""
    folder = change_folder(project.root, change_id) / "runs"
    return [
        Record.from_dict(json.loads(p.read_text()))
        for p in sorted(folder.glob("*.json"))
        if not p.name.endswith(".started.json")
    ]


def _machine_locks() -> Path:
    return Path(os.environ["OPSLEDGER_LOCK_DIR"]) / "lab"


def _committed(project, path) -> bool:
    rel = str(path.relative_to(project.root))
    return git(project.root, "log", "--format=%H", "--", rel).stdout.strip() != "" and not (
        git(project.root, "status", "--porcelain", "--", rel).stdout.strip()
    )


def _show(project, host: str, setting: str) -> str:
    proc = run_on_host(project, host, f"sudo -u postgres psql -Atc 'SHOW {setting}'")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_approved_postgresql_change_applies_verifies_and_is_recorded(
    converged_lab, workflow_repo, restore_db
):
    project = workflow_repo
    params = project.root / "inventories/lab/group_vars/db/postgresql.yml"
    params.write_text(params.read_text().replace("work_mem: 8MB", "work_mem: 24MB"))
    change_id = request_change(
        project,
        [params],
        title="Raise work_mem on the database hosts",
        runbook="converge",
        targets="db",
        params={"tags": ["postgresql"]},
        reason="Sorts spill to disk during the nightly report",
    )
    approve_change(project, change_id, person="bob")

    proc = opsledger(project, "apply", "--pending", "--json", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    events = _events(proc.stdout)
    phases = [e["phase"] for e in events if e["event"] == "opsledger_phase"]
    assert (
        phases[:4] == ["decide", "lock", "record", "run"]
        and "verify" in phases
        and "rollback" not in phases
    )
    assert any(e["event"] == "host" and e["changed"] for e in events)
    done = [e for e in events if e["event"] == "pending"]
    assert [(e["change"], e["action"], e["result"]) for e in done] == [
        (change_id, "applied", "success")
    ]

    for host in ("lab-db1", "lab-db2"):
        assert _show(project, host, "work_mem") == "24MB"
    (record,) = _records(project, change_id)
    assert record.result == "success" and record.kind == "run"
    assert record.hosts == ["lab-db1", "lab-db2"]
    assert all(
        record.stats[h]["changed"] > 0 and record.stats[h]["failed"] == 0 for h in record.hosts
    )
    assert any(t["role"] == "postgresql" for t in record.changed_tasks)
    assert record.verification["status"] == "passed" and record.verification["failed"] == 0
    assert record.verification["passed"] > 0
    assert record.rollback is None
    assert record.decision["allowed"] and record.decision["approvers"] == ["bob"]
    assert record.content_sha256 == record.decision["content_sha256"]
    assert record.git_commit and record.policy_sha256
    assert record.measurements["run_s"] > 0 and "verify_s" in record.measurements
    path = project.root / done[0]["record"]
    assert _committed(project, path)
    assert git(project.root, "log", "-1", "--format=%s").stdout.startswith(
        f"Run {change_id}: success"
    )

    again = opsledger(project, "apply", "--pending")
    assert again.returncode == 0 and "nothing pending" in again.stdout
    twice = opsledger(project, "apply", change_id)
    assert twice.returncode == 2 and "already applied successfully" in twice.stderr


def test_failed_verification_rolls_back_to_the_state_before_the_change(
    converged_lab, workflow_repo
):
    """The change edits the banner (os_baseline) and a hosts entry (network) but only runs the
    os_baseline tag: verification catches the unapplied hosts entry, the rollback converges the
    commit before the change (old banner back) and verifies that state."""
    project = workflow_repo
    app_vars = project.root / "inventories/lab/group_vars/app/main.yml"
    network = yaml.safe_load(
        (project.root / "inventories/lab/group_vars/all/network.yml").read_text()
    )
    entries = [*network["network_hosts_entries"], {"ip": "10.89.70.250", "names": ["lab-new-api"]}]
    app_vars.write_text(
        "---\n"
        + yaml.safe_dump(
            {
                "os_baseline_banner_text": "Changed by a change that will be rolled back\n",
                "network_hosts_entries": entries,
            }
        )
    )
    change_id = request_change(
        project,
        [app_vars],
        title="New banner and API name on the app hosts",
        runbook="converge",
        targets="app",
        params={"tags": ["os_baseline"]},
        reason="Announce the new API and route its name",
    )
    approve_change(project, change_id, person="bob")
    before = run_on_host(project, "lab-app1", "cat /etc/issue.net").stdout

    proc = opsledger(project, "apply", change_id, "--json", timeout=1800)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    (record,) = _records(project, change_id)
    assert record.result == "rolled_back"
    assert record.verification["status"] == "failed"
    assert any("hosts_entry" in f["test"] for f in record.verification["failures"])
    assert any("banner" in t["task"] for t in record.changed_tasks), record.changed_tasks
    rollback = record.rollback
    assert rollback["result"] == "success" and rollback["runbook"] == "converge"
    assert (
        rollback["base_commit"]
        == git(project.root, "rev-parse", f"{record.git_commit}~2").stdout.strip()
    )
    assert rollback["verification"]["status"] == "passed"
    assert "verification failed" in rollback["reason"]
    assert run_on_host(project, "lab-app1", "cat /etc/issue.net").stdout == before
    assert _committed(
        project, next((change_folder(project.root, change_id) / "runs").glob("*.json"))
    )
    assert not list(_machine_locks().glob("*.json"))


def _start_apply(project, change_id, *args):
    env = {
        **project.ansible_env(),
        "OPSLEDGER_PROJECT": str(project.root),
        "OPSLEDGER_PERSON": "dave",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "opsledger", "apply", change_id, "--json", *args],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # signals reach it like a terminal's Ctrl-C would
    )


def _wait_for_task(proc) -> None:
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith('{"event": "task"'):
            return
        assert time.monotonic() < deadline
    raise AssertionError("apply ended before running a task: " + proc.stderr.read())


def test_emergency_change_canceled_killed_then_applied(converged_lab, workflow_repo):
    """Ctrl-C cancels and is recorded; a held lock refuses a second apply (exit 4); kill -9 of an
    apply ends its playbook with it, and the next apply records the dead run as interrupted and
    takes the host over (both written into its record)."""
    from opsledger import procs
    from opsledger.records import read_runs

    project = workflow_repo
    change_id = request_change(
        project,
        [],
        title="Re-apply the firewall on lab-app2",
        runbook="converge",
        change_type="emergency",
        targets="lab-app2",
        params={"tags": ["network"]},
        impact="high",
        urgency="high",
        reason="Suspected hand edit of the ruleset during an incident",
    )
    approve_change(project, change_id, person="dave")

    # 1. Ctrl-C: canceled, recorded, lock released, review obligation created.
    first = _start_apply(project, change_id)
    _wait_for_task(first)
    locks = _machine_locks()
    assert json.loads((locks / "lab-app2.json").read_text())["change"] == change_id
    # 2. While it runs the host is locked: a second apply refuses with exit 4, runs nothing.
    second = opsledger(project, "apply", change_id)
    assert second.returncode == 4, second.stderr
    assert f"lab-app2 is locked by {change_id} (dave" in second.stderr
    os.killpg(first.pid, signal.SIGINT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 130, out[-2000:] + err[-2000:]
    assert not (locks / "lab-app2.json").exists()
    (canceled,) = _records(project, change_id)
    assert canceled.result == "canceled" and canceled.rollback is None
    assert canceled.runner["person"] == "dave"
    review = change_folder(project.root, change_id) / "review.yml"
    due = yaml.safe_load(review.read_text())
    assert due["status"] == "due" and _committed(project, review)
    applied = dt.datetime.fromisoformat(due["applied_at"])
    assert dt.datetime.fromisoformat(due["due_by"]) - applied == dt.timedelta(hours=72)

    # 3. SIGKILL of the apply's whole process group: its guard (own session) ends the playbook.
    third = _start_apply(project, change_id)
    _wait_for_task(third)
    (ahead,) = read_runs(project).started  # committed before the first task
    run_id = ahead.record.runner["run"]
    assert procs.run_processes(run_id)
    os.killpg(third.pid, signal.SIGKILL)
    third.wait(timeout=60)
    deadline = time.monotonic() + 30
    while procs.run_processes(run_id):
        assert time.monotonic() < deadline, "the playbook outlived its apply"
        time.sleep(0.5)

    # 4. The next apply records the dead run as interrupted, takes the host over, runs.
    fourth = opsledger(project, "apply", change_id, "--json", "--wait", "600", timeout=1800)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-2000:]
    notes = [e["message"] for e in _events(fourth.stdout) if e["event"] == "opsledger_phase"]
    assert any("as interrupted" in n for n in notes), notes
    assert any("taken over" in n and f"pid {third.pid}" in n for n in notes), notes
    records = _records(project, change_id)
    assert [r.result for r in records] == ["canceled", "interrupted", "success"]
    interrupted, success = records[1], records[2]
    assert f"process {third.pid}" in interrupted.interruption["why"]
    assert any(f"pid {third.pid}" in n for n in success.lock["taken_over"])
    assert yaml.safe_load(review.read_text())["due_by"] == due["due_by"]  # created once
    assert not (locks / "lab-app2.json").exists()


def test_two_checkouts_on_the_same_lab_never_apply_at_once(converged_lab, workflow_repo, tmp_path):
    """The demo's scratch clone and the main checkout used to run applies on the same hosts at
    the same time: each checkout had its own locks."""
    project = workflow_repo
    clone = tmp_path / "second-checkout"
    git(tmp_path, "clone", "-q", str(project.root), str(clone))
    shutil.copytree(project.state_dir / "lab", clone / ".opsledger" / "lab")
    other = Project(clone)
    mine = request_change(
        project,
        [],
        title="Converge the firewall of lab-app2 (first checkout)",
        runbook="converge",
        change_type="emergency",
        targets="lab-app2",
        params={"tags": ["network"]},
        reason="Two checkouts, one lab",
    )
    approve_change(project, mine, person="dave")
    theirs = request_change(
        other,
        [],
        title="Converge the firewall of lab-app2 (second checkout)",
        runbook="converge",
        change_type="emergency",
        targets="lab-app2",
        params={"tags": ["network"]},
        reason="Two checkouts, one lab",
    )
    approve_change(other, theirs, person="dave")
    first = _start_apply(project, mine)
    _wait_for_task(first)
    second = opsledger(other, "apply", theirs, env={"OPSLEDGER_PERSON": "erin"})
    assert second.returncode == 4, second.stdout + second.stderr
    assert f"lab-app2 is locked by {mine} (dave, pid {first.pid}" in second.stderr
    assert not (change_folder(clone, theirs) / "runs").exists()  # nothing ran there
    out, err = first.communicate(timeout=1800)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    after = opsledger(other, "apply", theirs, timeout=1800)
    assert after.returncode == 0, after.stdout[-2000:] + after.stderr[-2000:]
