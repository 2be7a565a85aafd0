"""Planned PostgreSQL switchovers on the lab (pg-switchover, #22): the inventory names the
primary, the runbook makes the live cluster match it without losing a commit, and its rollback
is the same runbook run from the inventory before the change. The DR drill test runs a
switchover and back between two drills with these helpers."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from opsledger.gitrepo import git
from opsledger.lab.service import run_on_host
from opsledger.layout import change_folder
from opsledger.records import Record
from opsledger.signoff import approve_change

from .conftest import PLAYBOOK, lab_env
from .helpers import opsledger, request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]

HOST_VARS = "inventories/lab/host_vars/{}.yml"
# lab-db2 primary, lab-db1 its standby: the inventory edits a switchover change carries.
SWAPPED = {
    "lab-db1": {
        "postgresql_replication_role": "standby",
        "postgresql_replication_primary_host": "lab-db2",
    },
    "lab-db2": {
        "postgresql_replication_role": "primary",
        "postgresql_replication_primary_host": "",
    },
}


def set_topology(project, topology: dict[str, dict[str, str]]) -> list:
    """Write the db hosts' host_vars as committed, with `topology`'s settings over them
    ({} puts the committed files back); returns the files."""
    files = []
    for host in ("lab-db1", "lab-db2"):
        rel = HOST_VARS.format(host)
        committed = git(project.root, "show", f"HEAD:{rel}").stdout
        path = project.root / rel
        if host in topology:
            data = {**(yaml.safe_load(committed) or {}), **topology[host]}
            path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))
        else:
            path.write_text(committed)
        files.append(path)
    return files


NO_PARAMS = json.dumps({"opsledger_params": {}})


def run_switchover(project) -> str:
    proc = subprocess.run(
        [PLAYBOOK, "runbooks/pg-switchover/playbook.yml", "--limit", "db", "-e", NO_PARAMS],
        cwd=project.root,
        env=lab_env(project),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    return proc.stdout


def _psql(project, host: str, query: str) -> str:
    proc = run_on_host(
        project, host, f"sudo runuser -u postgres -- psql -XAt -c {json.dumps(query)}"
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def who_is_primary(project) -> str:
    live = [
        h for h in ("lab-db1", "lab-db2") if _psql(project, h, "SELECT pg_is_in_recovery()") == "f"
    ]
    assert len(live) == 1, live
    return live[0]


def _records(project, change_id) -> list[Record]:
    folder = change_folder(project.root, change_id) / "runs"
    return [
        Record.from_dict(json.loads(p.read_text()))
        for p in sorted(folder.glob("*.json"))
        if not p.name.endswith(".started.json")
    ]


def test_a_cluster_in_the_inventorys_shape_is_left_alone(converged_lab, workflow_repo):
    project = workflow_repo
    assert who_is_primary(project) == "lab-db1"
    out = run_switchover(project)
    recap = dict((line.split()[0], line) for line in out.splitlines() if line.startswith("lab-db"))
    assert all("changed=0" in recap[h] for h in ("lab-db1", "lab-db2")), out[-3000:]
    assert who_is_primary(project) == "lab-db1"


def test_a_switchover_change_hands_over_and_its_rollback_switches_back(
    converged_lab, workflow_repo
):
    """The change swaps the roles in the inventory and also pins a parameter the switchover
    never applies: the switchover runs (lab-db2 primary, lab-db1 its standby, no commit lost),
    verification fails on purpose, and the rollback — pg-switchover from the inventory before
    the change — hands the primary role back to lab-db1, verified."""
    project = workflow_repo
    before = _psql(project, "lab-db1", "SELECT timeline_id FROM pg_control_checkpoint()")
    _psql(project, "lab-db1", "CREATE TABLE IF NOT EXISTS switch_proof (note text)")
    _psql(project, "lab-db1", "INSERT INTO switch_proof VALUES ('committed before the switch')")
    files = set_topology(project, SWAPPED)
    params = project.root / "inventories/lab/group_vars/db/postgresql.yml"
    params.write_text(params.read_text().replace("work_mem: 8MB", "work_mem: 9MB"))
    change_id = request_change(
        project,
        [*files, params],
        title="Hand the primary role to lab-db2",
        runbook="pg-switchover",
        targets="db",
        reason="lab-db1's host is due for maintenance",
    )
    approve_change(project, change_id, person="bob")
    approve_change(project, change_id, person="carol")
    try:
        proc = opsledger(project, "apply", change_id, "--json", timeout=2400)
        assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
        (record,) = _records(project, change_id)
        assert record.result == "rolled_back", (record.verification, record.rollback)
        over = record.maintenance["switchover"]["lab-db2"]
        assert over["from"] == "lab-db1" and over["to"] == "lab-db2"
        assert over["timeline"] > int(before)
        assert record.verification["status"] == "failed"
        failed = [f["test"] for f in record.verification["failures"]]
        assert failed and all("pg_conf_01" in t for t in failed), failed
        back = record.rollback
        assert back["runbook"] == "pg-switchover" and back["result"] == "success", back
        assert back["verification"]["status"] == "passed", back["verification"]
        again = back["maintenance"]["switchover"]["lab-db1"]
        assert again["from"] == "lab-db2" and again["timeline"] > over["timeline"]
    finally:
        git(project.root, "checkout", "HEAD~0", "--", "inventories")
    assert who_is_primary(project) == "lab-db1"
    # the commit made before the first switch survived both, and lab-db2 streams again
    rows = _psql(project, "lab-db1", "SELECT count(*) FROM switch_proof")
    assert int(rows) >= 1
    assert _psql(project, "lab-db2", "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    _psql(project, "lab-db1", "DROP TABLE switch_proof")
