"""`opsledger policy check` lints the fault-handling policy: sla.yml's business hours, pauses
and near-breach share, and incidents.yml's classes, detection, diagnostics and thresholds —
one line per problem, exit 2."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.policy import load_fault_policy
from opsledger.policycheck import policy_check

from ..conftest import copy_project


def _edit(project, name, change):
    path = project.root / "policies" / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_the_shipped_fault_policy_is_consistent(tmp_path):
    project = copy_project(tmp_path / "p")
    assert policy_check(project).problems == []
    policy = load_fault_policy(project)
    assert policy.priority("high", "medium") == "P2"  # what a critical finding opens
    assert policy.terms["P1"].business_hours is False and policy.terms["P3"].business_hours
    assert [t.priority for t in policy.terms.values() if t.pausable] == ["P3", "P4"]
    assert policy.root_cause_priorities == ("P1", "P2")


def test_every_fault_policy_problem_is_one_line_naming_file_and_field(tmp_path, monkeypatch):
    project = copy_project(tmp_path / "p")

    def incidents(data):
        data["detection"]["sources"]["drift"]["class"] = "plumbing"
        data["detection"]["sources"]["inspection"]["impact"] = "low"  # P3, not the P2 promised
        del data["detection"]["inspection_classes"]["journal_errors"]
        data["detection"]["inspection_classes"]["teleport"] = "network"
        data["diagnostics"]["classes"]["software"].append("systemctl restart postgresql")
        data["diagnostics"]["classes"]["network"].append({"run": "ip route", "groups": ["dbz"]})

    def sla(data):
        data["business_hours"]["timezone"] = "Mars/Olympus"
        data["business_hours"]["end"] = "07:00"
        data["pauses"]["priorities"] = ["P9"]
        data["priorities"]["P4"]["hours"] = "weekdays"
        data["near_breach_percent"] = 150

    _edit(project, "incidents.yml", incidents)
    _edit(project, "sla.yml", sla)
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["policy", "check"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    expected = {
        "incidents.yml: detection.sources.drift.class": "unknown class 'plumbing'",
        "incidents.yml: detection.sources.inspection": "a critical finding is P2",
        "incidents.yml: detection.inspection_classes.teleport": "no inspection check 'teleport'",
        "incidents.yml: detection.inspection_classes:": "'journal_errors' has no fault class",
        "incidents.yml: diagnostics.classes.software[": "restart is not read-only",
        "incidents.yml: diagnostics.classes.network[7].groups": "unknown group 'dbz'",
        "sla.yml: business_hours.timezone": "unknown timezone 'Mars/Olympus'",
        "sla.yml: business_hours.end": "end before they start",
        "sla.yml: pauses.priorities": "unknown priority 'P9'",
        "sla.yml: priorities.P4.hours": "24x7 or business",
        "sla.yml: near_breach_percent": "between 0 and 100",
    }
    for where, what in expected.items():
        assert sum(where in line and what in line for line in lines) == 1, (where, lines)
    assert len(lines) == len(expected), lines
    assert all(line.startswith("error: ") for line in lines)


def test_a_malformed_incident_policy_is_named_by_its_schema(tmp_path):
    project = copy_project(tmp_path / "p")
    _edit(project, "incidents.yml", lambda d: d["problems"].update(repeat=1, every="week"))
    problems = policy_check(project).problems
    assert sorted(p.field for p in problems) == ["problems", "problems.repeat"]
