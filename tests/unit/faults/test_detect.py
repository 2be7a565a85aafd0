"""Incidents opened, updated and resolved by the records opsledger commits: inspections, drift,
change runs (failed verification, failed rollback) and DR drills — never duplicated, resolved
only by a clean run of the same check, committed as the identity that commits evidence."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from opsledger.faults.detect import DetectionStatus, Signal, _title, record_detection
from opsledger.faults.store import incident_ids, load_incident
from opsledger.records import Record

from .conftest import T0, authors, commit_record, head, inspection

DOWN = [
    ("lab-db1", "services", "critical", "service postgresql@15-main is inactive"),
    ("lab-db1", "postgres_up", "critical", "PostgreSQL does not answer: connection refused"),
    ("lab-app1", "disk", "warning", "/ disk 85% used (warning at 80)"),
]


def detect(project, path, clock=None, **later):
    if clock is not None and later:
        clock.advance(**later)
    return record_detection(project, [path])


def test_critical_findings_open_one_incident_per_host_and_class(fault_repo, clock):
    project = fault_repo
    path = commit_record(project, inspection(T0, DOWN))
    result = detect(project, path)
    assert result.status == DetectionStatus.RECORDED and result.opened == ["INC-0001"]
    assert result.summary() == "incidents: opened INC-0001 (opsledger incident show INC-0001)"
    incident = load_incident(project, "INC-0001")
    data = incident.data
    assert data["source"] == "inspection" and data["class"] == "software"
    assert (data["impact"], data["urgency"], data["priority"]) == ("high", "medium", "P2")
    assert data["hosts"] == ["lab-db1"]  # the warning on lab-app1 opens nothing
    assert data["services"] == ["postgresql", "postgresql@15-main"]
    assert data["fingerprints"] == [
        "inspection:lab:lab-db1:services",
        "inspection:lab:lab-db1:postgres_up",
    ]
    assert data["evidence"] == [str(path.relative_to(project.root))]
    assert data["detected_at"] == T0.isoformat()
    assert incident.timeline[0]["by"] == "opsledger"
    assert authors(project, incident.path) == ["ci@example.org"]  # the evidence identity


def test_the_same_fault_again_updates_the_incident_and_a_record_is_read_once(fault_repo, clock):
    project = fault_repo
    detect(project, commit_record(project, inspection(T0, DOWN)))
    clock.advance(hours=1)
    second = commit_record(project, inspection(clock.now, DOWN))
    result = detect(project, second)
    assert result.updated == ["INC-0001"] and result.opened == []
    assert incident_ids(project) == ["INC-0001"]
    before = head(project)
    again = detect(project, second)  # the hook called twice with the same record
    assert again.status == DetectionStatus.QUIET and head(project) == before
    timeline = load_incident(project, "INC-0001").timeline
    assert [e["action"] for e in timeline] == ["opened", "detected"]


def test_a_clean_run_of_the_same_checks_resolves_by_evidence(fault_repo, clock):
    project = fault_repo
    detect(project, commit_record(project, inspection(T0, DOWN)))
    # the weekly schedule runs `services` but not `postgres_up`: only one fingerprint clears
    clock.advance(hours=2)
    weekly = commit_record(project, inspection(clock.now, [], schedule="weekly"), "weekly.json")
    partly = detect(project, weekly)
    assert partly.resolved == [] and partly.summary() == ""  # a signal cleared is no news
    incident = load_incident(project, "INC-0001")
    assert incident.status == "open"
    assert incident.data["signals"] == {
        "inspection:lab:lab-db1:services": "clean",
        "inspection:lab:lab-db1:postgres_up": "firing",
    }
    # an inspection that did not look at lab-db1 says nothing about it
    clock.advance(hours=1)
    elsewhere = inspection(clock.now, [], hosts=("lab-app1",))
    assert detect(project, commit_record(project, elsewhere, "app.json")).resolved == []
    clock.advance(hours=1)
    daily = commit_record(project, inspection(clock.now, []), "daily-clean.json")
    result = detect(project, daily)
    assert result.resolved == ["INC-0001"]
    assert result.summary() == (
        "incidents: resolved by evidence INC-0001 (opsledger incident show INC-0001)"
    )
    incident = load_incident(project, "INC-0001")
    assert incident.status == "resolved"
    assert incident.data["resolution"] == {
        "how": "evidence",
        "evidence": str(daily.relative_to(project.root)),
        "summary": "the next run of the same check(s) was clean",
    }
    # resolved by evidence is not closed: a person still closes a P2 with a root cause


def test_a_fault_that_returns_after_resolution_is_a_repeat_incident(fault_repo, clock):
    project = fault_repo
    detect(project, commit_record(project, inspection(T0, DOWN)))
    clock.advance(hours=1)
    detect(project, commit_record(project, inspection(clock.now, []), "clean.json"))
    clock.advance(hours=1)
    result = detect(project, commit_record(project, inspection(clock.now, DOWN), "again.json"))
    assert result.opened == ["INC-0002"]
    assert load_incident(project, "INC-0002").data["repeat_of"] == "INC-0001"


def drift_record(moment, drifted_hosts, hosts=("lab-app1", "lab-app2")):
    return Record(
        kind="drift",
        environment="lab",
        result="failed" if drifted_hosts else "success",
        started_at=moment.isoformat(),
        finished_at=moment.isoformat(),
        hosts=list(hosts),
        findings=[
            {
                "host": h,
                "role": "os_baseline",
                "task": "Write the pre-login banner | OS-BAN-01",
                "state": "drifted",
            }
            for h in drifted_hosts
        ],
    )


def test_a_drifted_host_opens_a_configuration_incident_and_in_sync_resolves_it(fault_repo, clock):
    project = fault_repo
    result = detect(project, commit_record(project, drift_record(T0, ["lab-app1"])))
    incident = load_incident(project, result.opened[0])
    assert (incident.klass, incident.priority) == ("configuration", "P3")
    assert incident.data["fingerprints"] == ["drift:lab:lab-app1"]
    assert "os_baseline" in incident.title
    clock.advance(hours=1)
    synced = detect(project, commit_record(project, drift_record(clock.now, [])))
    assert synced.resolved == [incident.id]


def run_record(moment, *, result, verification, rollback=None, change="CHG-0001"):
    return Record(
        kind="run",
        environment="lab",
        result=result,
        started_at=moment.isoformat(),
        finished_at=(moment + dt.timedelta(minutes=3)).isoformat(),
        change=change,
        runbook="converge",
        targets="db",
        hosts=["lab-db1", "lab-db2"],
        verification=verification,
        rollback=rollback,
    )


FAILED_VERIFICATION = {
    "status": "failed",
    "targets": "db",
    "suites": ["postgresql"],
    "failures": [
        {"test": "test_parameter_applied_pg_conf_01", "host": "lab-db1", "message": "work_mem"}
    ],
}


def test_a_failed_verification_rolled_back_and_proven_is_opened_and_resolved(fault_repo, clock):
    project = fault_repo
    record = run_record(
        T0,
        result="rolled_back",
        verification=FAILED_VERIFICATION,
        rollback={
            "result": "success",
            "verification": {"status": "passed", "targets": "db", "suites": ["postgresql"]},
        },
    )
    result = detect(project, commit_record(project, record))
    assert result.opened == ["INC-0001"] and result.resolved == ["INC-0001"]
    incident = load_incident(project, "INC-0001")
    assert incident.data["source"] == "verification" and incident.priority == "P2"
    assert incident.data["fingerprints"] == [
        "verification:lab:lab-db1:test_parameter_applied_pg_conf_01"
    ]
    assert "after CHG-0001" in incident.title
    assert [e["action"] for e in incident.timeline] == ["opened", "cleared", "resolved"]


def test_a_failed_rollback_opens_a_p1_per_host_until_a_verified_run_proves_them(fault_repo, clock):
    project = fault_repo
    record = run_record(
        T0,
        result="rollback_failed",
        verification=FAILED_VERIFICATION,
        rollback={"result": "failed", "reason": "verification failed: work_mem"},
    )
    result = detect(project, commit_record(project, record))
    priorities = {load_incident(project, i).priority: i for i in result.opened}
    # lab-db1: the verification (P2, software) and the rollback (P1, configuration) — two
    # classes, two incidents; lab-db2: the rollback only
    assert sorted(load_incident(project, i).klass for i in result.opened) == [
        "configuration",
        "configuration",
        "software",
    ]
    assert "P1" in priorities
    clock.advance(hours=1)
    fixed = run_record(
        clock.now,
        result="success",
        verification={"status": "passed", "targets": "db", "suites": ["postgresql"]},
        change="CHG-0002",
    )
    resolved = detect(project, commit_record(project, fixed))
    assert sorted(resolved.resolved) == sorted(result.opened)


def drill_record(moment, result):
    return Record(
        kind="drill",
        environment="lab",
        result=result,
        started_at=moment.isoformat(),
        finished_at=moment.isoformat(),
        runbook="pg-dr-drill",
        hosts=["lab-db1", "lab-db2"],
        findings=[{"service": "postgres", "state": "failed", "reason": "RTO 1200s missed 900s"}]
        if result == "failed"
        else [],
        measurements={"service": "postgres"},
    )


def test_a_failed_drill_opens_an_incident_and_a_passing_one_resolves_it(fault_repo, clock):
    project = fault_repo
    opened = detect(project, commit_record(project, drill_record(T0, "failed")))
    incident = load_incident(project, opened.opened[0])
    assert incident.data["fingerprints"] == ["drill:lab:postgres"]
    assert incident.data["services"] == ["postgres"] and "RTO 1200s" in incident.title
    clock.advance(days=1)
    assert detect(project, commit_record(project, drill_record(clock.now, "success"))).resolved == [
        incident.id
    ]


def test_detection_can_be_switched_off_and_never_raises(fault_repo, clock, monkeypatch, caplog):
    project = fault_repo
    path = commit_record(project, inspection(T0, DOWN))
    monkeypatch.setenv("OPSLEDGER_NO_INCIDENTS", "1")
    assert record_detection(project, [path]).status == DetectionStatus.DISABLED
    monkeypatch.delenv("OPSLEDGER_NO_INCIDENTS")
    policy = project.root / "policies" / "incidents.yml"
    data = yaml.safe_load(policy.read_text())
    data["detection"]["enabled"] = False
    policy.write_text(yaml.safe_dump(data))
    assert record_detection(project, [path]).status == DetectionStatus.DISABLED
    data["detection"]["enabled"] = "sometimes"  # invalid: logged, not raised
    policy.write_text(yaml.safe_dump(data))
    before = head(project)
    with caplog.at_level(logging.WARNING, logger="opsledger.faults"):
        result = record_detection(project, [path])
    assert result.status == DetectionStatus.FAILED
    assert "detection.enabled" in caplog.text and head(project) == before
    assert not (project.root / "incidents").exists()


@pytest.mark.slow  # two real inspections (ansible, local connection)
def test_the_operator_who_ran_the_check_is_told_which_incident_it_opened_and_resolved(
    local_env_repo, monkeypatch
):
    """`opsledger inspect` says the incident it opened (a P2 clock started) and resolved."""
    from click.testing import CliRunner

    from opsledger.cli import cli
    from opsledger.gitrepo import commit_paths

    project = local_env_repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    monkeypatch.setenv("OPSLEDGER_COMMITTER_NAME", "opsledger CI")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_EMAIL", "ci@example.org")
    monkeypatch.delenv("OPSLEDGER_NO_INCIDENTS", raising=False)
    plan = project.root / "policies" / "inspections.yml"

    def probe(critical):
        data = yaml.safe_load(plan.read_text())
        data["checks"]["disk"] = {"groups": ["all"], "critical": critical}
        data["schedules"]["probe"] = {"checks": ["disk"]}
        plan.write_text(yaml.safe_dump(data, sort_keys=False))
        commit_paths(project.root, [plan], "Probe", name="Alice", email="alice@example.org")
        return CliRunner().invoke(cli, ["inspect", "--schedule", "probe", "--env", "local"])

    full = probe(critical=0)  # every file system counts as full
    assert full.exit_code == 1, full.output
    assert "incidents: opened INC-0001 (opsledger incident show INC-0001)" in full.output
    clean = probe(critical=101)
    assert clean.exit_code == 0, clean.output
    assert "incidents: resolved by evidence INC-0001" in clean.output


# What a check printed is not one line: a warning before the error (sudo's "could not change
# directory" once made every title invalid, so the lab's stopped PostgreSQL opened no incident),
# a carriage return, a terminal escape, a NUL, a Unicode line separator.
@pytest.mark.parametrize(
    "message",
    [
        'could not change directory to "/home/opsadmin": Permission denied\npsql: error',
        "first line\r\nsecond line",
        "\x1b[31mred\x1b[0m and \x00 nul \x7f del",
        "tab\tand\u2028separator\u0085next",
        "x" * 400 + "\nend",
    ],
)
def test_a_multi_line_finding_still_opens_an_incident_with_a_one_line_title(
    fault_repo, clock, message
):
    project = fault_repo
    path = commit_record(project, inspection(T0, [("lab-db1", "postgres_up", "critical", message)]))
    result = detect(project, path)
    assert result.status == DetectionStatus.RECORDED and result.opened == ["INC-0001"], result
    title = load_incident(project, "INC-0001").data["title"]
    assert 5 <= len(title) <= 160 and title.isprintable(), repr(title)


@given(st.text(max_size=300))
def test_any_message_makes_a_title_the_incident_schema_accepts(message):
    signal = Signal("f", "inspection", "lab", "lab-db1", ("lab-db1",), "software", message)
    title = _title("inspection", [signal])
    assert 5 <= len(title) <= 160
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in title), repr(title)
