"""PostgreSQL DR drills on the lab: real kills, real data-directory loss, real pgBackRest
restores. A drill against a broken or missing backup is refused before the disaster (the
primary keeps running); a full drill restores lab-db1, measures RTO and RPO within
policies/dr.yml, verifies the data, re-seeds lab-db2 and is recorded — run directly and run as
a standard change through apply."""

from __future__ import annotations

import json

import pytest

from opsledger.gitrepo import git
from opsledger.lab.service import run_on_host
from opsledger.verify import verify

from .helpers import opsledger, request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = "/var/lib/pgbackrest/backup/main"


def _sh(project, host, command):
    proc = run_on_host(project, host, f"sudo bash -c {json.dumps(command)}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def _drill_records(project):
    return sorted((project.root / "records" / "drills").glob("*-postgres-lab.json"))


def _primary_untouched(project):
    """The primary still runs its own data: the drill stopped before the disaster."""
    out = _sh(project, "lab-db1", "runuser -u postgres -- psql -XAtc 'SELECT pg_is_in_recovery()'")
    assert out == "f"


def test_drill_refuses_a_corrupted_backup(converged_lab, workflow_repo):
    project = workflow_repo
    newest = _sh(project, "lab-db1", f"ls -1d {REPO}/2*F | tail -n1")
    victim = _sh(project, "lab-db1", f"find {newest}/pg_data/base -type f -size +1k | head -n1")
    _sh(project, "lab-db1", f"cp -a {victim} /root/drill-victim")
    try:
        _sh(project, "lab-db1", f"printf 'not the backed-up bytes' | dd of={victim} conv=notrunc")
        proc = opsledger(project, "drill", "postgres", "--env", "lab", timeout=900)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Drill refused before the disaster" in proc.stdout
        assert "FAILED" in proc.stdout
        _primary_untouched(project)
        record = json.loads(_drill_records(project)[-1].read_text())
        assert record["kind"] == "drill" and record["result"] == "failed"
        assert "refused before the disaster" in record["findings"][0]["reason"]
        assert "rto_s" not in record["measurements"]
        # the weekly inspection finds the same corruption without a drill
        proc = opsledger(
            project, "inspect", "--schedule", "weekly", "--targets", "db", "--format", "json"
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        found = {(f["host"], f["check"]): f for f in json.loads(proc.stdout)["findings"]}
        assert found[("lab-db1", "pgbackrest_verify")]["severity"] == "critical"
    finally:
        _sh(project, "lab-db1", f"cp -a /root/drill-victim {victim} && rm /root/drill-victim")


def test_drill_refuses_a_missing_backup(converged_lab, workflow_repo):
    project = workflow_repo
    _sh(project, "lab-db1", f"mv {REPO} {REPO}.away")
    try:
        proc = opsledger(project, "drill", "postgres", "--env", "lab", timeout=900)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "No usable backup of stanza main" in proc.stdout
        _primary_untouched(project)
    finally:
        _sh(project, "lab-db1", f"rm -rf {REPO} && mv {REPO}.away {REPO}")


def test_full_drill_restores_within_objectives(converged_lab, workflow_repo):
    project = workflow_repo
    before = _sh(
        project,
        "lab-db1",
        "runuser -u postgres -- psql -XAtc 'SELECT timeline_id FROM pg_control_checkpoint()'",
    )
    proc = opsledger(project, "drill", "postgres", "--env", "lab", "--json", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["reasons"] == []
    m = result["measurements"]
    assert 0 < m["rto_s"] <= m["objectives"]["rto_s"]
    assert 0 <= m["rpo_s"] <= m["objectives"]["rpo_s"]
    assert m["markers_restored"] > 0 and m["markers_acknowledged"] >= m["markers_restored"]
    assert m["markers_lost"] == m["markers_acknowledged"] - m["markers_restored"]
    assert m["timeline_id"] > int(before)  # restored to the end of the WAL, then promoted

    record = json.loads(_drill_records(project)[-1].read_text())
    assert record["result"] == "success" and record["verification"]["result"] == "passed"
    assert record["verification"]["failed"] == 0 and record["verification"]["passed"] > 0
    subject = git(project.root, "log", "-1", "--format=%s", "--", "records/drills").stdout
    assert subject.startswith("DR drill postgres lab: passed (RTO ")

    # The standby was re-seeded onto the new timeline and streams again; the dr suite's evidence
    # holds on the live server after the drill, too.
    checked = verify(project, environment="lab", targets="db", suites=("postgresql", "dr"))
    assert checked.ok, [f"{o.test}[{o.host}] {o.message}" for o in checked.failures]
    report = opsledger(project, "report", "--format", "md")
    assert report.returncode == 0 and "postgres" in report.stdout and "RTO" in report.stdout


def test_drill_as_a_standard_change(converged_lab, workflow_repo):
    project = workflow_repo
    change_id = request_change(
        project,
        title="Quarterly PostgreSQL DR drill",
        reason="policies/dr.yml: prove RTO and RPO every 90 days",
        runbook="pg-dr-drill",
        change_type="standard",
        targets="db",
        params={"marker_seconds": 45},
    )
    proc = opsledger(project, "apply", change_id, "--json", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "DR drill postgres: passed" in proc.stdout
    records = _drill_records(project)
    drilled = json.loads(records[-1].read_text())
    assert drilled["change"] == change_id and drilled["result"] == "success"
    assert drilled["params"] == {"marker_seconds": 45}
    # one commit holds the run record and the drill record
    shown = opsledger(project, "change", "show", change_id)
    assert shown.returncode == 0
    files = project.root / "changes" / change_id / "runs"
    assert len([f for f in files.glob("*.json") if not f.name.endswith(".started.json")]) == 1
