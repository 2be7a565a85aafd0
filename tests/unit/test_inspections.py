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
    load_inspection_plan,
    render,
)
from opsledger.policycheck import policy_check
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
    plan = load_inspection_plan(copy_project(tmp_path / "p"))
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
        load_inspection_plan(project)
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
        load_inspection_plan(project)
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


# --- #19.5: pending security updates, counted per host, severity from age ------------------

SIMULATED = """\
Reading package lists...
Inst libssl3 [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.11-1~deb12u2] (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64]) []
Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable-updates [all])
Inst newpkg (1.0-1 Debian-Security:12/stable-security [amd64])
Conf libssl3 (3.0.15-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""


def test_only_security_origins_count_as_pending_security_updates():
    from opsledger.inspections import _INST

    found = {n: v for n, v, o in _INST.findall(SIMULATED) if "security" in o.lower()}
    assert found == {
        "libssl3": "3.0.15-1~deb12u1",
        "openssl": "3.0.15-1~deb12u1",
        "newpkg": "1.0-1",
    }


def _seen(days_ago, pending, host="lab-app1", environment="lab"):
    started = NOW - dt.timedelta(days=days_ago)
    return Record(
        kind="inspection",
        environment=environment,
        result="success",
        started_at=started.isoformat(),
        finished_at=started.isoformat(),
        measurements={"schedule": "weekly", "pending_security": {host: pending}},
    )


def test_an_update_is_as_old_as_the_unbroken_run_of_inspections_that_saw_it():
    from opsledger.inspections import pending_since

    records = [
        _seen(40, {"openssl": "3.0.14"}),  # an older version: another update
        _seen(30, {}),  # nothing pending: the streak starts after this
        _seen(20, {"openssl": "3.0.15"}),
        _seen(13, {"openssl": "3.0.15", "tzdata": "2025b"}),
        _seen(6, {"openssl": "3.0.15", "tzdata": "2025b"}),
        _seen(3, {"openssl": "3.0.15"}),  # tzdata went, came back later: a new streak
        _seen(1, {"openssl": "3.0.15", "tzdata": "2025b"}),
        _seen(-1, {"future": "1"}),  # after now: not evidence yet
    ]
    since = pending_since(records, NOW)["lab-app1"]
    assert since == {
        "openssl=3.0.15": NOW - dt.timedelta(days=20),
        "tzdata=2025b": NOW - dt.timedelta(days=1),
    }


def test_severity_comes_from_the_age_of_the_oldest_pending_update():
    from opsledger.inspections import grade_security_updates

    spec = {"warning": 1, "warning_days": 7, "critical_days": 21}
    pending = {"openssl": "3.0.15", "libssl3": "3.0.15"}
    assert grade_security_updates({}, {}, spec, NOW) == []

    ((severity, message),) = grade_security_updates(pending, {}, spec, NOW)
    assert severity == "warning"  # one pending is a warning by count
    assert message.startswith("2 pending security update(s): libssl3 3.0.15, openssl 3.0.15")
    assert "first seen by this inspection" in message

    old = {"openssl=3.0.15": NOW - dt.timedelta(days=25), "libssl3=3.0.15": NOW}
    ((severity, message),) = grade_security_updates(pending, old, spec, NOW)
    assert severity == "critical"
    assert "oldest (openssl) pending since 2026-10-27, 25 day(s)" in message
    assert message.endswith("(by age) (critical at 21)")

    nine = {"openssl=3.0.15": NOW - dt.timedelta(days=9)}
    ((severity, message),) = grade_security_updates(pending, nine, {"warning_days": 7}, NOW)
    assert severity == "warning" and "9 day(s)" in message  # no count threshold: by age alone


def test_the_shipped_plan_grades_security_updates_by_age(tmp_path):
    spec = load_inspection_plan(copy_project(tmp_path / "p")).checks["security_updates"]
    assert spec["warning_days"] < spec["critical_days"]
    assert "critical" not in spec  # a count does not make it critical: the age does


def test_an_inspection_keeps_what_it_saw_pending_for_the_next_one_to_date(tmp_path):
    """On this machine (ansible_connection=local; apt-get -s is read-only): the record keeps the
    host's pending security updates, whatever they are, and any finding dates them."""
    import sys

    from opsledger.gitrepo import git
    from opsledger.inspections import inspect

    project = copy_project(tmp_path / "p")
    inventory = project.root / "inventories" / "local"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    plan = project.root / "policies" / "inspections.yml"
    data = yaml.safe_load(plan.read_text())
    data["schedules"]["patches"] = {"checks": ["security_updates"]}
    plan.write_text(yaml.safe_dump(data))
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "init", env={**ALICE})

    result = inspect(project, schedule="patches", environment="local")
    assert result.checks_run == 1
    record = yaml.safe_load(result.record_path.read_text())
    pending = record["measurements"]["pending_security"]["here"]
    assert isinstance(pending, dict)
    for finding in result.findings:
        assert finding.check == "security_updates"
        assert f"{len(pending)} pending security update(s)" in finding.message


ALICE = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


LOAD_SPEC = {"groups": ["all"], "warning": 2.0, "critical": 4.0}


def test_a_container_is_judged_by_its_own_load_not_the_machines():
    """A container reads the machine's load average (shared kernel): 10 on 2 CPUs made every
    idle lab container critical. Its own runnable tasks per CPU are what counts."""
    from opsledger.inspections import grade_load

    idle = {"container": True, "load5": 10.0, "runnable": 0.3, "cpus": 2}
    assert grade_load(idle, LOAD_SPEC) == []
    busy = {"container": True, "load5": 0.5, "runnable": 9.0, "cpus": 2}
    ((severity, message),) = grade_load(busy, LOAD_SPEC)
    assert severity == "critical"
    assert "load 9.00 per 2 CPU(s) of this container" in message


def test_a_machine_is_judged_by_its_load_average_per_cpu():
    from opsledger.inspections import grade_load

    four = {"container": False, "load5": 6.0, "runnable": 50.0, "cpus": 4}
    assert grade_load(four, LOAD_SPEC) == []  # 1.5 per CPU
    one = {"container": False, "load5": 3.0, "runnable": 0.0, "cpus": 1}
    assert grade_load(one, LOAD_SPEC) == [("warning", "load 3.00 on 1 CPU(s) (warning at 2.0)")]
    # a CPU quota of half a CPU doubles the load per CPU
    half = {"container": False, "load5": 1.5, "runnable": 0.0, "cpus": 0.5}
    assert grade_load(half, LOAD_SPEC)[0][0] == "warning"


def test_the_load_check_measures_this_machine_for_real(tmp_path):
    """The probe the check runs on each host, run here through a real inspection
    (ansible_connection=local): a threshold of 0 makes the measured value a finding."""
    import os
    import sys

    from opsledger.inspections import inspect

    project = copy_project(tmp_path / "p")
    inventory = project.root / "inventories" / "local"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    plan = project.root / "policies" / "inspections.yml"
    data = yaml.safe_load(plan.read_text())
    data["checks"]["load"] = {"groups": ["all"], "critical": 0}
    data["schedules"]["probe"] = {"checks": ["load"]}
    plan.write_text(yaml.safe_dump(data))
    result = inspect(project, schedule="probe", environment="local", record=False)
    ((finding,),) = [result.findings]
    assert finding.check == "load" and finding.severity == "critical"
    cpus = len(os.sched_getaffinity(0))
    in_container = any(
        os.path.exists(p) for p in ("/run/.containerenv", "/.dockerenv", "/run/systemd/container")
    )
    if in_container:
        assert f"per {cpus:g} CPU(s) of this container" in finding.message
        assert "the machine's load average" in finding.message
    else:
        assert f"on {cpus:g} CPU(s)" in finding.message
