"""`audit check` reads incidents: SLA breaches and near breaches, and the append-only ledger —
timeline entries edited after their commit, steps committed by someone else, states typed
instead of earned."""

from __future__ import annotations

import datetime as dt

import yaml
from click.testing import CliRunner

from opsledger.audit import audit_check
from opsledger.cli import cli
from opsledger.faults.incidents import acknowledge, open_incident
from opsledger.faults.store import incident_file
from opsledger.gitrepo import commit_paths

from .conftest import T0


def rules(project, now):
    return sorted((f.rule, f.severity) for f in audit_check(project, now=now).findings
                  if f.rule.startswith(("incident", "problem")))  # fmt: skip


def open_p1(project):
    open_incident(
        project, title="Checkout fails for all users", person="alice", klass="software",
        impact="high", urgency="high", hosts=("lab-app1",),
    )  # fmt: skip


def test_breaches_and_near_breaches_are_findings(fault_repo, clock):
    project = fault_repo
    open_p1(project)  # respond within 15 min, resolve within 4 h
    assert rules(project, T0 + dt.timedelta(minutes=5)) == []
    assert rules(project, T0 + dt.timedelta(minutes=12)) == [("incident-sla-near-breach", "low")]
    assert rules(project, T0 + dt.timedelta(minutes=20)) == [("incident-sla-breached", "high")]
    clock.advance(minutes=30)
    acknowledge(project, "INC-0001", person="bob")  # late: the breach stays, as history
    later = T0 + dt.timedelta(hours=3, minutes=30)
    assert rules(project, later) == [
        ("incident-sla-breached", "medium"),  # response, met late
        ("incident-sla-near-breach", "low"),  # resolution: 3.5 of 4 h used
    ]
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    out = CliRunner().invoke(cli, ["audit", "check", "--fail-on", "medium"], env=env)
    assert out.exit_code == 1 and "incident-sla-breached" in out.output


def test_the_timeline_is_append_only_and_each_step_is_its_persons(fault_repo, clock):
    project = fault_repo
    open_p1(project)
    clock.advance(minutes=5)
    acknowledge(project, "INC-0001", person="bob")
    now = T0 + dt.timedelta(minutes=10)
    assert rules(project, now) == []
    path = incident_file(project, "INC-0001")
    # alice rewrites history: the acknowledgement now says carol, and it is earlier
    data = yaml.safe_load(path.read_text())
    data["timeline"][1]["by"] = "carol"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    clock.advance(minutes=1)
    commit_paths(project.root, [path], "fix typo", name="Alice", email="alice@example.org")
    found = audit_check(project, now=now).findings
    edited = [f for f in found if f.rule == "incident-timeline-edited"]
    assert len(edited) == 1 and edited[0].severity == "critical"
    assert "timeline entry 2 changed or removed" in edited[0].message
    # and a step written in carol's name, committed by alice, is a stranger's step
    stranger = [f for f in found if f.rule == "incident-step-by-stranger"]
    assert stranger and "committed by alice@example.org" in stranger[0].message


def test_a_state_typed_by_hand_is_unproven(fault_repo, clock):
    project = fault_repo
    open_p1(project)
    path = incident_file(project, "INC-0001")
    data = yaml.safe_load(path.read_text())
    data["status"] = "closed"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    clock.advance(minutes=1)
    commit_paths(project.root, [path], "close it", name="Alice", email="alice@example.org")
    unproven = [
        f for f in audit_check(project, now=T0 + dt.timedelta(minutes=2)).findings
        if f.rule == "incident-state-unproven"
    ]  # fmt: skip
    assert [f.message for f in unproven] == [
        "closed without a resolving step",
        "closed without a closing step",
    ]


def test_a_resolution_typed_back_after_a_reopening_is_unproven(fault_repo, clock):
    """A reopening withdraws the resolution: writing `resolved` back by hand is not earned."""
    from opsledger.faults.detect import record_detection
    from opsledger.faults.resolution import reopen

    from .conftest import commit_record, inspection

    project = fault_repo
    down = [("lab-db1", "postgres_up", "critical", "PostgreSQL does not answer")]
    record_detection(project, [commit_record(project, inspection(T0, down))])
    clock.advance(minutes=30)
    record_detection(project, [commit_record(project, inspection(clock.now, []), "ok.json")])
    clock.advance(minutes=30)
    reopen(project, "INC-0001", person="alice", reason="users still cannot log in")
    assert not [f for f in rules(project, clock.now) if f[0] == "incident-state-unproven"]
    path = incident_file(project, "INC-0001")
    data = yaml.safe_load(path.read_text())
    data["status"] = "resolved"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    clock.advance(minutes=1)
    commit_paths(project.root, [path], "fixed", name="Alice", email="alice@example.org")
    unproven = [
        f.message for f in audit_check(project, now=clock.now).findings
        if f.rule == "incident-state-unproven"
    ]  # fmt: skip
    assert unproven == ["resolved without a resolving step since it was reopened"]
