"""Problems: recurring incidents found by fingerprint within policy thresholds, grouped under a
root cause and known error (with a runbook as workaround), fixed only by a verified change."""

from __future__ import annotations

import datetime as dt

from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.detect import record_detection
from opsledger.faults.problems import suggest_problems
from opsledger.faults.store import load_incident, load_problem
from opsledger.records import Record

from .conftest import T0, authors, commit_record, head, inspection

FULL = [("lab-db1", "disk", "critical", "/var/lib/postgresql disk 95% used (critical at 90)")]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def recurring(project, clock, times=3, every_days=5, first=0):
    """The same disk fault on lab-db1 `times` times, each resolved by a clean inspection."""
    for n in range(first, first + times):
        clock.set(T0 + dt.timedelta(days=every_days * n))
        record_detection(project, [commit_record(project, inspection(clock.now, FULL))])
        clock.advance(hours=2)
        record_detection(
            project, [commit_record(project, inspection(clock.now, []), f"clean-{n}.json")]
        )


def test_suggest_finds_a_fingerprint_repeated_within_the_window(fault_repo, clock):
    project = fault_repo
    recurring(project, clock, times=2)
    assert suggest_problems(project, now=clock.now) == []  # policy: 3 within 30 days
    recurring(project, clock, times=1, first=2)  # INC-0003: a third one within 30 days
    found = suggest_problems(project, now=clock.now)
    assert [(s.fingerprint, s.incidents) for s in found] == [
        ("inspection:lab:lab-db1:disk", ["INC-0001", "INC-0002", "INC-0003"])
    ]
    # 40 days later the first two are out of the window
    assert suggest_problems(project, now=clock.now + dt.timedelta(days=40)) == []
    out = run("problem", "suggest")
    assert out.exit_code == 0
    assert "opsledger problem new --title" in out.output and "--incident INC-0003" in out.output


def test_a_problem_links_its_incidents_and_moves_to_known_error_fixed_closed(fault_repo, clock):
    project = fault_repo
    recurring(project, clock, times=3)
    clock.advance(hours=1)
    opened = run(
        "problem", "new", "--title", "lab-db1 data disk fills up", "--incident", "INC-0001",
        "--incident", "INC-0002", "--as", "bob",
    )  # fmt: skip
    assert opened.exit_code == 0, opened.output
    problem = load_problem(project, "PRB-0001")
    assert problem.incidents == ["INC-0001", "INC-0002"] and problem.data["owner"] == "bob"
    assert load_incident(project, "INC-0001").data["problem"] == "PRB-0001"
    assert load_incident(project, "INC-0001").timeline[-1]["action"] == "linked"
    assert authors(project, problem.path) == ["bob@example.org"]
    # the next suggestion proposes linking the third occurrence, not a second problem
    found = suggest_problems(project, now=clock.now)
    assert [(s.problem, s.unlinked) for s in found] == [("PRB-0001", ["INC-0003"])]
    assert run("problem", "link", "PRB-0001", "INC-0003", "--as", "bob").exit_code == 0
    assert suggest_problems(project, now=clock.now) == []
    # a known error's workaround names a runbook that exists
    bad = run(
        "problem", "known-error", "PRB-0001", "--root-cause", "WAL kept for a dead slot",
        "--workaround", "drop the slot and checkpoint", "--runbook", "no-such-runbook",
        "--as", "bob",
    )  # fmt: skip
    assert bad.exit_code == 2 and "--runbook" in bad.stderr
    known = run(
        "problem", "known-error", "PRB-0001", "--root-cause", "WAL kept for a dead slot",
        "--workaround", "take a full backup to expire old WAL", "--runbook", "pg-backup",
        "--as", "bob",
    )  # fmt: skip
    assert known.exit_code == 0, known.output
    # the permanent fix is a change with a successful, verified run
    from .test_incidents import request_fix, run_record

    change_id = request_fix(project, clock)
    before = head(project)
    denied = run("problem", "fix", "PRB-0001", "--change", change_id, "--as", "bob")
    assert denied.exit_code == 3 and head(project) == before
    clock.advance(minutes=10)
    commit_record(project, run_record(project, change_id, clock.now))
    assert run("problem", "fix", "PRB-0001", "--change", change_id, "--as", "bob").exit_code == 0
    closed = run("problem", "close", "PRB-0001", "--summary", "No recurrence in 30 days", "--as",
                 "carol")  # fmt: skip
    assert closed.exit_code == 0
    problem = load_problem(project, "PRB-0001")
    assert problem.status == "closed" and problem.data["fix_change"] == change_id
    assert [e["action"] for e in problem.timeline] == [
        "opened", "linked", "known_error", "fixed", "closed",
    ]  # fmt: skip
    shown = run("problem", "show", "PRB-0001")
    assert (
        "workaround: take a full backup" in shown.output and "(runbook pg-backup)" in shown.output
    )
    assert "PRB-0001 [closed]" in run("problem", "list").output


def test_an_incident_belongs_to_one_problem(fault_repo, clock):
    project = fault_repo
    recurring(project, clock, times=1)
    assert run("problem", "new", "--title", "First idea", "--incident", "INC-0001", "--as",
               "bob").exit_code == 0  # fmt: skip
    again = run("problem", "new", "--title", "Second idea", "--incident", "INC-0001", "--as", "bob")
    assert again.exit_code == 2 and "already belongs to PRB-0001" in again.stderr
    assert not (project.root / "problems" / "PRB-0002").exists()
    _ = Record  # records are what detections read; see conftest.inspection
