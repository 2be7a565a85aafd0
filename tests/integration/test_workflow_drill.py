"""PostgreSQL DR drills on the lab: real kills, real data-directory loss, real pgBackRest
restores. A drill against a broken or missing backup, or with WAL archiving behind, is refused
before the disaster (the primary keeps running); six drills in a row, each after a restart, a
converge, another drill or a switchover and back, restore lab-db1 within policies/dr.yml,
verify the data, re-seed lab-db2 and are recorded — run directly, and once as a standard
change through apply."""

from __future__ import annotations

import json
import time

import pytest

from opsledger.gitrepo import git
from opsledger.lab.service import run_on_host
from opsledger.layout import change_folder
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


def _drill(project, *params: str) -> dict:
    args = [a for p in params for a in ("--param", p)]
    proc = opsledger(project, "drill", "postgres", "--env", "lab", "--json", *args, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timeline(project) -> int:
    return int(
        _sh(
            project,
            "lab-db1",
            "runuser -u postgres -- psql -XAtc 'SELECT timeline_id FROM pg_control_checkpoint()'",
        )
    )


def _switch_over_and_back(project):
    """A planned switchover to lab-db2 and back (pg-switchover, as its changes would run it),
    with the postgresql suite verifying each topology from the inventory: two timelines more,
    archived by two different primaries, for the drill to replay."""
    from .test_workflow_switchover import SWAPPED, run_switchover, set_topology, who_is_primary

    for topology, primary in ((SWAPPED, "lab-db2"), ({}, "lab-db1")):
        set_topology(project, topology)
        run_switchover(project)
        assert who_is_primary(project) == primary
        checked = verify(project, environment="lab", targets="db", suites=("postgresql",))
        assert checked.ok, [f"{o.test}[{o.host}] {o.message}" for o in checked.failures]


def _stop_and_converge(project):
    from .conftest import converge

    _sh(project, "lab-db1", "systemctl stop postgresql")
    converge(project, "--tags", "postgresql", "--limit", "db")


def _restart_primary_and_standby(project):
    _sh(project, "lab-db1", "systemctl restart postgresql@15-main")
    _sh(project, "lab-db2", "systemctl restart postgresql@15-main")


def _switch_over_and_back_then_restart(project):
    _switch_over_and_back(project)
    _restart_primary_and_standby(project)


def _drill_as_a_standard_change(project, marker_seconds: int) -> dict:
    """The drill requested and applied as a standard change (`pg-dr-drill`): its run record and
    drill record land in one commit, and the drill record names the change and its params."""
    change_id = request_change(
        project,
        title="Quarterly PostgreSQL DR drill",
        reason="policies/dr.yml: prove RTO and RPO every 90 days",
        runbook="pg-dr-drill",
        change_type="standard",
        targets="db",
        params={"marker_seconds": marker_seconds},
    )
    proc = opsledger(project, "apply", change_id, "--json", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "DR drill postgres: passed" in proc.stdout
    drilled = json.loads(_drill_records(project)[-1].read_text())
    assert drilled["change"] == change_id and drilled["result"] == "success"
    assert drilled["params"] == {"marker_seconds": marker_seconds}
    assert opsledger(project, "change", "show", change_id).returncode == 0
    runs = change_folder(project.root, change_id) / "runs"
    ran = [f for f in runs.glob("*.json") if not f.name.endswith(".started.json")]
    assert len(ran) == 1
    # one commit holds the run record and the drill record
    commit = git(project.root, "log", "-1", "--format=%H", "--", "records/drills").stdout.strip()
    held = git(project.root, "show", "--name-only", "--format=", commit).stdout.split()
    assert str(ran[0].relative_to(project.root)) in held, held
    # `apply` printed the drill's verdict; the record holds what `drill --json` prints
    return {"passed": True, "reasons": [], "measurements": drilled["measurements"]}


def _drill_directly(project, marker_seconds: int) -> dict:
    return _drill(project, f"marker_seconds={marker_seconds}")


# Each drill follows disturbances that once made a drill lose every marker, or could: a
# PostgreSQL restart on the primary (after it, PostgreSQL 15 left archive_timeout dormant for a
# whole checkpoint_timeout) and on the standby; a stop followed by a converge that starts it
# again (the sequence of issue 22), right after a drill (the restored primary, a re-seeded
# standby); and a planned switchover to the standby and back (failovers between drills: the
# restore replays WAL of timelines two other primaries archived). Two drills cover the six
# disturbances the loop once ran one drill each for (the suite's time budget, issue 11): the
# restarts come last before the first, so the dormant-timeout case is what that drill meets.
# The first drill runs as a standard change through `apply` (the quarterly drill's path),
# which a third drill of its own once proved (the suite's time budget again, issue 16); the
# second runs directly, so what the archiving-gap test below meets is what it always met.
DISTURBANCES = {
    "after a switchover to the standby and back, then restarts of both servers, as a change": (
        _switch_over_and_back_then_restart,
        _drill_as_a_standard_change,
    ),
    "after the previous drill, a stop and a converge that starts it again": (
        _stop_and_converge,
        _drill_directly,
    ),
}


def test_drills_restore_within_objectives_whatever_came_before(converged_lab, workflow_repo):
    project = workflow_repo
    for n, (what, (disturb, drill)) in enumerate(DISTURBANCES.items(), 1):
        disturb(project)
        before = _timeline(project)
        result = drill(project, 40)
        m = result["measurements"]
        said = f"drill {n} ({what}): {result['reasons']} {m}"
        assert result["passed"] and result["reasons"] == [], said
        assert 0 < m["rto_s"] <= m["objectives"]["rto_s"], said
        assert 0 <= m["rpo_s"] <= m["objectives"]["rpo_s"], said
        # every marker acknowledged more than archive_timeout + margin before the disaster
        # came back: the restore replayed the archived WAL of the current timeline
        assert m["markers_restored"] > 0, said
        assert m["markers_acknowledged"] >= m["markers_restored"], said
        assert m["markers_lost"] == m["markers_acknowledged"] - m["markers_restored"], said
        assert m["timeline_id"] > before, said  # restored to the end of the WAL, then promoted

        record = json.loads(_drill_records(project)[-1].read_text())
        assert record["result"] == "success" and record["verification"]["result"] == "passed"
        assert record["verification"]["failed"] == 0 and record["verification"]["passed"] > 0
        if drill is _drill_directly:  # a drill of its own commits its record alone
            subject = git(project.root, "log", "-1", "--format=%s", "--", "records/drills").stdout
            assert subject.startswith("DR drill postgres lab: passed (RTO ")

    # The standby was re-seeded onto the new timeline and streams again; the dr suite's evidence
    # and continuous archiving hold on the live servers after the drills, too.
    checked = verify(project, environment="lab", targets="db", suites=("postgresql", "dr"))
    assert checked.ok, [f"{o.test}[{o.host}] {o.message}" for o in checked.failures]
    report = opsledger(project, "report", "--format", "md")
    assert report.returncode == 0 and "postgres" in report.stdout and "RTO" in report.stdout


DROP_IN = "/etc/systemd/system/postgresql@15-main.service.d/50-opsledger-wake-checkpointer.conf"


def test_an_archiving_gap_is_seen_before_the_disaster(converged_lab, workflow_repo):
    # Break archiving the way a restart did before PG-BR-05: without the drop-in, a restarted
    # PostgreSQL 15 does not switch segments on archive_timeout, so acknowledged commits stay
    # outside the repository while `pgbackrest check` (which forces a switch) still passes.
    project = workflow_repo
    _sh(project, "lab-db1", f"mv {DROP_IN} /root/wake.conf && systemctl daemon-reload")
    try:
        _sh(project, "lab-db1", "systemctl restart postgresql@15-main")
        proc = opsledger(
            project,
            "drill",
            "postgres",
            "--env",
            "lab",
            "--param",
            "marker_seconds=45",
            timeout=900,
        )
        assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "Drill refused before the disaster: WAL archiving is not current" in proc.stdout
        assert "oldest commit not yet archived" in proc.stdout
        _primary_untouched(project)
        record = json.loads(_drill_records(project)[-1].read_text())
        assert record["result"] == "failed" and "rto_s" not in record["measurements"]
        # the daily inspection sees the same gap without a drill, once it is older than the
        # inspection's own bound (archive_timeout 20 s + margin 30 s; the drill allows 10 s):
        # with archiving broken the gap only grows, so look again for up to 90 s
        for _ in range(7):
            daily = ("inspect", "--schedule", "daily", "--targets", "lab-db1", "--format", "json")
            proc = opsledger(project, *daily)
            found = {(f["host"], f["check"]): f for f in json.loads(proc.stdout)["findings"]}
            if ("lab-db1", "wal_archiving") in found:
                break
            time.sleep(15)
        gap = found[("lab-db1", "wal_archiving")]
        assert gap["severity"] == "critical" and "not yet archived" in gap["message"]
    finally:
        _sh(project, "lab-db1", f"mv /root/wake.conf {DROP_IN} && systemctl daemon-reload")
        _sh(project, "lab-db1", "runuser -u postgres -- psql -XAtc 'SELECT pg_reload_conf()'")


def test_a_failing_archiver_stops_the_drill_at_its_preflight(converged_lab, workflow_repo):
    project = workflow_repo
    alter = "runuser -u postgres -- psql -XAtc \"ALTER SYSTEM SET archive_command = '/bin/false'\""
    _sh(
        project,
        "lab-db1",
        alter + " && runuser -u postgres -- psql -XAtc 'SELECT pg_reload_conf()'",
    )
    try:
        _sh(
            project,
            "lab-db1",
            "runuser -u postgres -- psql -XAtc 'CREATE TABLE IF NOT EXISTS gap(x int); "
            "INSERT INTO gap VALUES (1); SELECT pg_switch_wal()'",
        )
        proc = opsledger(project, "drill", "postgres", "--env", "lab", timeout=900)
        assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "Drill refused before the disaster" in proc.stdout
        _primary_untouched(project)
    finally:
        _sh(
            project,
            "lab-db1",
            "runuser -u postgres -- psql -XAtc 'ALTER SYSTEM RESET archive_command' && "
            "runuser -u postgres -- psql -XAtc 'SELECT pg_reload_conf()' && "
            "runuser -u postgres -- psql -XAtc 'DROP TABLE IF EXISTS gap'",
        )
