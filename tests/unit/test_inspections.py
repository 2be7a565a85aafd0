"""The inspection plan, due and missed schedules, and reports — without hosts."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from opsledger.errors import OpsledgerError
from opsledger.inspections import (
    CHECKS,
    Finding,
    InspectionResult,
    due_states,
    load_plan,
    render,
)
from opsledger.policy import policy_check
from opsledger.records import Record, write_record

from .conftest import copy_project

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def _record(project, schedule, hours_ago, environment="lab"):
    started = NOW - dt.timedelta(hours=hours_ago)
    write_record(
        project.root / "records" / "inspections" / f"{started:%Y%m%dT%H%M%SZ}-{schedule}.json",
        Record(
            kind="inspection",
            environment=environment,
            result="success",
            started_at=started.isoformat(),
            finished_at=started.isoformat(),
            measurements={"schedule": schedule},
        ),
    )


def test_the_shipped_plan_loads_and_every_check_exists(tmp_path):
    plan = load_plan(copy_project(tmp_path / "p"))
    assert {"daily", "weekly", "monthly", "quarterly", "yearly", "pre-holiday"} <= set(
        plan.schedules
    )
    assert plan.schedules["pre-holiday"].every_hours is None
    assert set(plan.checks) <= set(CHECKS)
    assert plan.severities == {"critical": "P2", "warning": "P3"}


def test_plan_problems_are_listed_with_file_and_field(tmp_path):
    project = copy_project(tmp_path / "p")
    path = project.root / "policies" / "inspections.yml"
    data = yaml.safe_load(path.read_text())
    data["checks"]["teleport"] = {"groups": ["all"]}
    data["schedules"]["daily"]["checks"].append("ghost")
    data["severities"]["warning"] = "P9"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OpsledgerError) as err:
        load_plan(project)
    fields = sorted(p.field for p in err.value.problems)
    assert fields == ["checks.teleport", "schedules.daily.checks", "severities.warning"]
    assert all(p.file.endswith("inspections.yml") for p in err.value.problems)
    # policy check lints the plan too, and incidents.yml says the new check has no fault class
    linted = policy_check(project).problems
    assert len(linted) == 4 and "'teleport' has no fault class" in str(linted[-1])
    # The schema (opsledger policy schema inspections) is checked before the rest.
    data["schedules"]["weekly"]["every_hours"] = -1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(OpsledgerError) as err:
        load_plan(project)
    assert [p.field for p in err.value.problems] == ["schedules.weekly.every_hours"]


def test_due_and_missed_periods(tmp_path):
    project = copy_project(tmp_path / "p")
    _record(project, "daily", 24 * 5)  # then nothing for two days: two missed
    _record(project, "daily", 24 * 2)
    _record(project, "daily", 30)  # 30 h ago: today's is due; none missed since
    _record(project, "weekly", 24)
    _record(project, "daily", 1, environment="staging")
    states = {s.schedule: s for s in due_states(project, environment="lab", now=NOW)}
    assert states["daily"].due and states["daily"].missed == 2
    assert not states["weekly"].due and states["weekly"].missed == 0
    assert (
        states["monthly"].due and states["monthly"].last is None and states["monthly"].missed == 0
    )
    assert "pre-holiday" not in states  # on demand: never due, never missed
    later = {
        s.schedule: s
        for s in due_states(project, environment="lab", now=NOW + dt.timedelta(days=1))
    }
    assert later["daily"].missed == 3


def test_reports_name_host_check_severity_and_priority():
    result = InspectionResult(
        "daily",
        "lab",
        ["lab-db1"],
        [
            Finding(
                "lab-db1", "services", "critical", "service postgresql@15-main is inactive", "P2"
            )
        ],
        checks_run=13,
    )
    assert result.worst() == "critical"
    text = render(result)
    assert "[critical/P2] lab-db1 services: service postgresql@15-main is inactive" in text
    assert "| lab-db1 | services | critical | P2 |" in render(result, "md")
    assert '"worst": "critical"' in render(result, "json") and "<table>" in render(result, "html")
