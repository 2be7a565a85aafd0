"""One host's record and the estate (#19.6), read from a real git repository: committed run
records with what playbooks handed back, inspection, drift and drill records, an incident
opened through its own command, and the waiver register."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.incidents import open_incident
from opsledger.gitrepo import commit_paths, git
from opsledger.hostrecord import HostStatus, estate, host_record
from opsledger.layout import change_folder
from opsledger.records import Record, run_record_path, write_record

from .conftest import ALICE_ENV, copy_project, record_run

T0 = dt.datetime(2026, 11, 2, 20, 0, tzinfo=dt.UTC)

PATCH = {
    "upgraded": [{"name": "openssl", "from": "3.0.11-1~deb12u2", "to": "3.0.15-1~deb12u1"}],
    "downgraded": [],
    "installed": [{"name": "libnew1", "version": "1.0-1"}],
    "removed": [],
    "held": [{"name": "linux-image-amd64", "version": "6.1.0-25"}],
    "not_kept": [],
    "run": "CHG-0002/20261109T200000Z",
}
BACKUP = {"label": "20261109-200012F", "type": "full", "verified": True, "primary": "lab-db1"}
HARDWARE = {
    "os": "Debian 12.8 (kernel 6.1.0-27-amd64)",
    "health": "ok",
    "checks": [],
    "asset": {"cpu": {"count": 2, "model": "Xeon"}, "memory": {"total_mb": 4096}},
}


def _record(project, kind, days, name, **fields):
    started = T0 + dt.timedelta(days=days)
    data = dict(
        kind=kind,
        environment="lab",
        result="success",
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=2)).isoformat(),
    )
    data.update(fields)
    folder = {"inspection": "inspections", "drift": "drift", "drill": "drills"}[kind]
    path = project.root / "records" / folder / f"{started:%Y%m%dT%H%M%SZ}-{name}.json"
    write_record(path, Record(**data))
    commit_paths(project.root, [path], f"{kind} {name}", name="CI", email="ci@example.org")


def _finding(host, check, severity, message):
    return {"host": host, "check": check, "severity": severity, "message": message, "priority": ""}


@pytest.fixture
def ledger(tmp_path):
    """lab-db1's history: a converge, a patch with a backup that was rolled back, a change of
    lab-app1 only, inspections, drift, a drill and an incident."""
    project = copy_project(tmp_path / "p")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "Initial state", env=ALICE_ENV)
    for change, title in (("CHG-0001", "Raise work_mem"), ("CHG-0002", "Monthly security patch")):
        folder = change_folder(project.root, change)
        folder.mkdir(parents=True)
        (folder / "change.yml").write_text(f"id: {change}\ntitle: {title}\n")
        commit_paths(
            project.root, [folder / "change.yml"], f"Request {change}", name="A", email="a@x"
        )
    record_run(
        project,
        "CHG-0001",
        T0,
        hosts=["lab-db1", "lab-db2"],
        runner={"person": "alice", "run": "CHG-0001/20261102T200000Z"},
        verification={"status": "passed"},
        maintenance={"hardware": {"lab-db1": HARDWARE, "lab-db2": {**HARDWARE, "os": "other"}}},
    )
    record_run(
        project,
        "CHG-0002",
        T0 + dt.timedelta(days=7),
        runbook="os-patch",
        result="rolled_back",
        hosts=["lab-db1"],
        runner={"person": "ci", "run": PATCH["run"]},
        verification={"status": "failed"},
        maintenance={"packages": {"lab-db1": PATCH}, "backup": {"lab-db1": BACKUP}},
        rollback={
            "result": "failed",
            "maintenance": {
                "restored": {
                    "lab-db1": {
                        "restored": {"openssl": "3.0.11-1~deb12u2"},
                        "removed": [],
                        "failed": [
                            {"name": "libnew1", "version": "(not installed before)", "why": "x"}
                        ],
                    }
                }
            },
        },
    )
    record_run(project, "CHG-0003", T0 + dt.timedelta(days=8), hosts=["lab-app1"])
    # Inspections: a weekly security finding, then a daily disk finding (daily does not run
    # security_updates, so the weekly finding stays open), then the next weekly comes clean.
    security = _finding("lab-db1", "security_updates", "warning", "2 pending security update(s)")
    disk = _finding("lab-db1", "disk", "critical", "/ disk 95% used")
    other = _finding("lab-db2", "disk", "warning", "/ disk 85% used")
    _record(project, "inspection", 1, "weekly", hosts=["lab-db1", "lab-db2"],
            findings=[security, other], measurements={"schedule": "weekly"})  # fmt: skip
    _record(project, "inspection", 2, "daily", hosts=["lab-db1", "lab-db2"],
            findings=[disk], measurements={"schedule": "daily"})  # fmt: skip
    _record(project, "drift", 3, "lab", hosts=["lab-db1", "lab-db2"],
            findings=[{"host": "lab-db1", "role": "os_baseline", "task": "Write the banner",
                       "state": "drifted"}])  # fmt: skip
    _record(project, "drill", 4, "postgres", hosts=["lab-db1", "lab-db2"],
            measurements={"service": "postgres", "rto_s": 41.5, "rpo_s": 12.0})  # fmt: skip
    open_incident(project, title="Disk nearly full on lab-db1", person="alice", klass="hardware",
                  impact="medium", urgency="medium", hosts=("lab-db1",))  # fmt: skip
    return project


def test_a_hosts_record_gathers_everything_the_ledger_knows_about_it(ledger):
    record = host_record(ledger, host="lab-db1", today=dt.date(2026, 12, 1))
    assert record.environment == "lab" and record.groups == ["db"]
    assert record.status is HostStatus.ATTENTION
    assert record.variables["ansible_port"] == 2201
    assert record.variables["os_baseline_ntp_servers"] == []  # its own host_vars
    assert record.os == "Debian 12.8 (kernel 6.1.0-27-amd64)"
    assert record.hardware["asset"]["memory"]["total_mb"] == 4096
    assert record.hardware["change"] == "CHG-0001"

    patch = record.last_patch
    assert patch["change"] == "CHG-0002" and patch["title"] == "Monthly security patch"
    assert patch["packages"]["upgraded"] == PATCH["upgraded"]
    assert patch["backup"]["label"] == "20261109-200012F"
    assert patch["restored"]["failed"][0]["name"] == "libnew1"

    assert [(c["change"], c["result"], c["by"]) for c in record.changes] == [
        ("CHG-0001", "success", "alice"),
        ("CHG-0002", "rolled_back", "ci"),
    ]  # CHG-0003 ran on lab-app1 only
    assert record.changes[0]["title"] == "Raise work_mem"

    open_ = {(f["source"], f["check"]) for f in record.open_findings}
    assert open_ == {
        ("inspection", "security_updates"),
        ("inspection", "disk"),
        ("drift", "drift"),
    }
    assert [i["schedule"] for i in record.inspections] == ["daily", "weekly"]
    assert record.drift[0]["state"] == "drifted"
    assert record.drills[0]["rto_s"] == 41.5
    (incident,) = record.incidents
    assert incident["status"] == "open" and incident["title"] == "Disk nearly full on lab-db1"
    # W-0003: molecule only
    assert {w["id"] for w in record.waivers} == {"W-0001", "W-0002", "W-0004", "W-0005"}


def test_a_newer_inspection_that_ran_the_check_closes_its_finding(ledger):
    _record(ledger, "inspection", 5, "weekly2", hosts=["lab-db1"], findings=[],
            measurements={"schedule": "weekly"})  # fmt: skip
    record = host_record(ledger, host="lab-db1")
    checks = {f["check"] for f in record.open_findings}
    assert "security_updates" not in checks and "disk" not in checks  # weekly runs disk too
    assert checks == {"drift"}


def test_only_committed_runs_count(ledger):
    started = T0 + dt.timedelta(days=20)
    path = run_record_path(ledger, "CHG-0001", started)
    write_record(
        path,
        Record(kind="run", environment="lab", result="success", change="CHG-0001",
               started_at=started.isoformat(), finished_at=started.isoformat(),
               hosts=["lab-db1"]),
    )  # fmt: skip
    assert len(host_record(ledger, host="lab-db1").changes) == 2


def test_a_quiet_host_is_clean(ledger):
    record = host_record(ledger, host="lab-app2", environment="lab")
    assert record.status is HostStatus.CLEAN
    assert record.changes == [] and record.last_patch == {} and record.open_findings == []


def test_the_estate_lists_every_host_with_its_last_change_patch_and_findings(ledger):
    result = estate(ledger, environment="lab")
    rows = {r.host: r for r in result.rows}
    assert list(rows) == ["lab-db1", "lab-db2", "lab-app1", "lab-app2", "lab-mon1"]
    db1 = rows["lab-db1"]
    assert db1.os.startswith("Debian 12.8") and db1.groups == ["db"]
    assert db1.last_change == {
        "change": "CHG-0002",
        "result": "rolled_back",
        "finished_at": (T0 + dt.timedelta(days=7, minutes=5)).isoformat(),
    }
    assert db1.last_patch["upgraded"] == 1
    assert db1.open_findings == 3 and db1.worst == "critical"
    # lab-db2's weekly disk warning was closed by the daily that checked its disk clean
    assert rows["lab-db2"].open_findings == 0 and rows["lab-db2"].worst == "ok"
    assert rows["lab-app1"].last_change["change"] == "CHG-0003"
    assert rows["lab-app2"].status is HostStatus.CLEAN
    assert result.status is HostStatus.ATTENTION


def _cli(project, *args):
    return CliRunner().invoke(cli, list(args), env={"OPSLEDGER_PROJECT": str(project.root)})


def test_host_show_and_list_as_text_json_and_html(ledger, tmp_path):
    text = _cli(ledger, "host", "show", "lab-db1")
    assert text.exit_code == 0, text.output
    for line in (
        "lab-db1 (lab) — attention",
        "last patch: CHG-0002 rolled_back",
        "backup 20261109-200012F (full, verified)",
        "openssl 3.0.11-1~deb12u2 -> 3.0.15-1~deb12u1",
        "linux-image-amd64 6.1.0-25 (held)",
        "NOT restored: libnew1",
        'CHG-0001 success (converge) by alice "Raise work_mem"',
        "[critical] disk: / disk 95% used (daily at 2026-11-04 20:02)",
        "INC-0001 open",
    ):
        assert line in text.output, line
    data = json.loads(_cli(ledger, "host", "show", "lab-db1", "--format", "json").output)
    assert data["status"] == "attention" and data["last_patch"]["backup"] == BACKUP
    page = tmp_path / "db1.html"
    wrote = _cli(ledger, "host", "show", "lab-db1", "--format", "html", "-o", str(page))
    assert wrote.exit_code == 0 and "<h2>Last patch</h2>" in page.read_text()
    assert "<script" not in page.read_text()
    listing = _cli(ledger, "host", "list", "--env", "lab")
    assert listing.exit_code == 0
    assert "CHG-0002 2026-11-09 20:05 (1 upgraded)" in listing.output
    assert json.loads(_cli(ledger, "host", "list", "--format", "json").output)["hosts"]


def test_an_unknown_host_is_one_error_line_with_exit_2(ledger):
    result = _cli(ledger, "host", "show", "lab-db9")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {ledger.root / 'inventories'}: host: no host 'lab-db9' in any environment — "
        "name a host of inventories/<env>/hosts.yml (opsledger host list shows them)"
    ]
    staging = ledger.root / "inventories" / "staging" / "hosts.yml"
    staging.write_text(staging.read_text().replace("stg-app2.example.invalid", "lab-app2"))
    twice = _cli(ledger, "host", "show", "lab-app2")
    assert twice.exit_code == 2 and "in several environments: lab, staging" in twice.output
    assert _cli(ledger, "host", "show", "lab-app2", "--env", "lab").exit_code == 0
