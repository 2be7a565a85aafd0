"""decide on real git repos: allowed when every rule holds; each refusal names its rule."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from opsledger.changes import withdraw_change
from opsledger.cli import cli
from opsledger.decide import decide
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder
from opsledger.records import Record, run_record_path, write_record
from opsledger.signoff import approve_change, request_change, sign_off, subject

from .conftest import START, record_run

INSIDE = START + dt.timedelta(minutes=30)


def failed(decision):
    return {c.rule: c.why for c in decision.checks if not c.passed}


PEOPLE = {"alice": "Alice Arnold", "bob": "Bob Brandt"}


def request(project, key=None, **overrides):
    """A change as `change new` writes it (with the request statement), committed by its
    requester; signed with `key` where signatures are required."""
    args = dict(
        title="Patch or tune something",
        runbook="converge",
        requested_by="alice",
        reason="Needed for the quarterly baseline",
        targets="app",
        params={"tags": ["os_baseline"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=1),
    )
    args.update(overrides)
    change_type = args.pop("type", "normal")
    change, _ = request_change(project, change_type=change_type, signing_key=key, **args)
    person = args["requested_by"]
    commit_paths(
        project.root,
        [change.file.parent],
        f"Request {change.id}",
        name=PEOPLE[person],
        email=f"{person}@example.org",
    )
    return change.id


def test_approved_change_inside_its_window_is_allowed(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    decision = decide(project, change_id, now=INSIDE)
    assert decision.allowed, failed(decision)
    assert decision.approvers == ["bob"] and decision.priority == "P4"
    assert len(decision.policy_sha256) == len(decision.content_sha256) == 64


def test_no_approvals(repo):
    project, change_id, _ = repo
    assert "0 of 1 approval(s)" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_self_approval_does_not_count(repo):
    project, change_id, _ = repo
    # approve refuses it; a statement made by hand must not count either
    sign_off(project, change_id, person="alice")
    why = failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "alice requested the change and cannot approve it" in why


def test_approval_from_outside_the_required_team(repo):
    project, _, _ = repo
    change_id = request(project, risk="high")  # high risk: two approvals, one from the CAB
    approve_change(project, change_id, person="bob")
    approve_change(project, change_id, person="dave")
    assert "no approver from cab" in failed(decide(project, change_id, now=INSIDE))["approvals"]
    approve_change(project, change_id, person="carol")
    assert decide(project, change_id, now=INSIDE).allowed


def test_runbook_owners_must_approve(repo):
    project, _, _ = repo
    change_id = request(project, runbook="pg-backup", targets="db", params={})
    approve_change(project, change_id, person="dave")
    why = failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "no approver from dba (owners of pg-backup)" in why


def test_change_edited_after_approval(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    path = change_folder(project.root, change_id) / "change.yml"
    path.write_text(path.read_text().replace("Sorts spill", "Sorts really spill"))
    assert "content changed" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_role_edited_after_approval(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    with open(project.root / "roles/postgresql/tasks/config.yml", "a") as handle:
        handle.write("\n# changed after the approval\n")
    why = failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "roles/postgresql/tasks/config.yml" in why


def test_outside_the_change_window(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    late = START + dt.timedelta(hours=3)
    assert (
        "outside the change's window"
        in failed(decide(project, change_id, now=late))["change window"]
    )


def test_outside_every_maintenance_window(repo):
    project, _, _ = repo
    # Production windows: Tue/Thu 20:00-23:30 and Sat 06:00-10:00 Berlin. Tuesday 09:00 is not.
    morning = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    change_id = request(
        project,
        environment="production",
        targets="all",
        window_start=morning,
        window_end=morning + dt.timedelta(hours=1),
    )
    assert "maintenance window" in failed(
        decide(project, change_id, now=morning + dt.timedelta(minutes=5))
    )


def test_in_a_freeze(repo):
    project, _, keys = repo
    frozen = dt.datetime(2026, 12, 22, 19, 30, tzinfo=dt.UTC)  # Tuesday 20:30 Berlin
    change_id = request(
        project,
        keys["alice"],
        environment="production",
        targets="all",
        runbook="pg-backup",
        params={},
        window_start=frozen,
        window_end=frozen + dt.timedelta(hours=1),
    )
    for person in ("bob", "carol"):
        approve_change(project, change_id, person=person, signing_key=keys[person])
    decision = decide(project, change_id, now=frozen + dt.timedelta(minutes=5))
    assert failed(decision) == {"freeze": "in freeze 'year-end freeze'"}


def test_unsigned_approval_where_signatures_are_required(repo):
    project, _, keys = repo
    at = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)  # staging: weekdays 07-19 Berlin
    change_id = request(
        project,
        keys["alice"],
        environment="staging",
        targets="all",
        window_start=at,
        window_end=at + dt.timedelta(hours=1),
    )
    with pytest.raises(OpsledgerError, match="must be signed in staging"):
        approve_change(project, change_id, person="bob")  # refused where it is typed
    sign_off(project, change_id, person="bob")  # written past approve, as by hand
    why = failed(decide(project, change_id, now=at))["approvals"]
    assert "0 of 1" in why and "not signed, and signatures are required here" in why
    approve_change(project, change_id, person="carol", signing_key=keys["carol"])
    assert decide(project, change_id, now=at).allowed


def test_production_needs_a_recent_staging_run_recorded_by_ci(repo):
    project, _, keys = repo
    at = START + dt.timedelta(minutes=10)
    staged = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
    staging = request(
        project,
        keys["alice"],
        environment="staging",
        targets="all",
        window_start=staged,
        window_end=staged + dt.timedelta(hours=1),
    )
    change_id = request(project, keys["alice"], environment="production", targets="all")
    for person in ("bob", "carol"):
        approve_change(project, change_id, person=person, signing_key=keys[person])
    assert "no successful staging run" in failed(decide(project, change_id, now=at))["promotion"]
    path = write_record(
        run_record_path(project, staging, staged),
        Record(
            kind="run",
            change=staging,
            environment="staging",
            runbook="converge",
            params={"tags": ["os_baseline"]},
            result="success",
            started_at=staged.isoformat(),
            finished_at=(staged + dt.timedelta(minutes=5)).isoformat(),
            content_sha256=subject(project, staging)[1].sha256,
        ),
    )
    ci = {"name": "opsledger CI", "email": "ci@example.org"}
    commit_paths(project.root, [path], "Run", **ci)  # staging wants signed records
    assert (
        "not signed with the CI identity's key"
        in failed(decide(project, change_id, now=at))["promotion"]
    )
    git(project.root, "reset", "-q", "--soft", "HEAD~1")
    commit_paths(project.root, [path], "Run", **ci, signing_key=keys["ci"])
    decision = decide(project, change_id, now=at)
    assert decision.allowed, failed(decision)
    assert staging in {c.rule: c.why for c in decision.checks}["promotion"]


def test_emergency_needs_one_oncall_or_cab_approval_and_bypasses_windows(repo):
    project, _, _ = repo
    change_id = request(
        project,
        type="emergency",
        runbook="service-restart",
        params={"service": "ssh"},
        requested_by="bob",
    )
    sign_off(project, change_id, person="erin")  # an auditor approves nothing
    why = failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "erin is only in auditor, which approves nothing" in why
    approve_change(project, change_id, person="alice")  # on call
    decision = decide(project, change_id, now=INSIDE)
    assert decision.allowed, failed(decision)
    checks = {c.rule: c.why for c in decision.checks}
    assert checks["maintenance window"] == "emergency change: windows bypassed"
    assert "due within 72 h" in checks["post-implementation review"]


def test_two_approved_overlapping_changes_are_ordered_not_deadlocked(repo):
    """Both used to deny each other for their whole windows."""
    project, first, _ = repo
    second = request(project, targets="lab-db1", params={"tags": ["postgresql"]})
    approve_change(project, first, person="bob")
    approve_change(project, second, person="bob")
    decision = decide(project, first, now=INSIDE)
    assert decision.allowed, failed(decision)
    assert {c.rule: c.why for c in decision.checks}[
        "conflicts"
    ] == f"goes before {second}, should they run"
    why = failed(decide(project, second, now=INSIDE))["conflicts"]
    assert why.startswith(f"waits for {first} (lab-db1), which can still run and go first")
    record_run(project, first, INSIDE)  # the first one ran
    assert decide(project, second, now=INSIDE).allowed


def test_changes_that_go_after_are_not_judged_so_pending_changes_stay_linear(repo, monkeypatch):
    """Every overlapping change was judged (content manifest, approvals, withdrawal walk, ~50
    ms each), also those that go after the one decided: `apply --pending` of N overlapping
    changes, taken in run order, was quadratic. Only those that go first are judged now."""
    import opsledger.decide as deciding

    project, first, _ = repo
    later = [
        request(project, targets="lab-db1", params={"tags": ["postgresql"]}) for _ in range(12)
    ]
    approve_change(project, first, person="bob")
    judged: list[str] = []
    real = deciding._still_runs

    def counted(project, other, *args):
        judged.append(other.id)
        return real(project, other, *args)

    monkeypatch.setattr(deciding, "_still_runs", counted)
    decision = decide(project, first, now=INSIDE)
    assert decision.allowed, failed(decision)
    assert judged == []  # none of the twelve goes first
    shown = ", ".join(sorted(later)[:10])
    assert {c.rule: c.why for c in decision.checks}["conflicts"] == (
        f"goes before {shown} and 2 more, should they run"
    )
    why = failed(decide(project, later[-1], now=INSIDE))["conflicts"]
    assert sorted(judged) == sorted([first, *later[:-1]])  # all twelve that go first
    assert why.startswith(f"waits for {first} (lab-db1), which can still run")


def test_only_changes_that_can_still_run_hold_their_hosts(repo):
    """An unapproved request, a rolled-back change or a withdrawn one blocked every change on
    their hosts."""
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    unapproved = request(project, targets="lab-db1", params={"tags": ["postgresql"]})
    assert decide(project, change_id, now=INSIDE).allowed  # CHG-0001 goes first anyway
    waiting = request(project, targets="lab-db1", params={"tags": ["postgresql"]})
    approve_change(project, waiting, person="bob")
    assert f"waits for {change_id}" in failed(decide(project, waiting, now=INSIDE))["conflicts"]
    content = decide(project, change_id, now=INSIDE).content_sha256
    record_run(project, change_id, INSIDE, result="rolled_back", content_sha256=content)
    assert decide(project, waiting, now=INSIDE).allowed  # the rolled-back one holds nothing
    withdraw_change(project, unapproved, person="alice", reason="Not needed")
    assert failed(decide(project, unapproved, now=INSIDE))["withdrawn"].startswith(
        "withdrawn by alice at "
    )


def test_an_emergency_is_never_held_back_and_the_overlap_is_recorded(repo):
    """After rollback_failed the README said "fix forward with an emergency": it was refused."""
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    content = decide(project, change_id, now=INSIDE).content_sha256
    record_run(project, change_id, INSIDE, result="rollback_failed", content_sha256=content)
    pending = request(project, targets="lab-db1", params={"tags": ["postgresql"]})
    approve_change(project, pending, person="bob")  # approved, can still run, goes first
    emergency = request(
        project,
        type="emergency",
        runbook="service-restart",
        params={"service": "postgresql@15-main"},
        targets="lab-db1",
        requested_by="bob",
        window_start=START + dt.timedelta(minutes=10),
    )
    approve_change(project, emergency, person="carol")
    decision = decide(project, emergency, now=INSIDE)
    assert decision.allowed, failed(decision)
    conflicts = {c.rule: c.why for c in decision.checks}["conflicts"]
    assert conflicts == f"emergency change: runs despite {pending} (lab-db1) (recorded)"
    # Emergencies go first: the normal change waits for it while it can still run.
    assert f"waits for {emergency}" in failed(decide(project, pending, now=INSIDE))["conflicts"]


def test_cli_exit_codes(repo, monkeypatch):
    project, change_id, _ = repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    at = ["--at", INSIDE.isoformat()]
    assert CliRunner().invoke(cli, ["decide", change_id, *at]).exit_code == 3
    assert CliRunner().invoke(cli, ["approve", change_id, "--as", "bob"]).exit_code == 0
    result = CliRunner().invoke(cli, ["decide", change_id, *at, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["allowed"] is True
    assert CliRunner().invoke(cli, ["decide", "CHG-9999"]).exit_code == 2


def test_plan_of_a_runbook_check_mode_cannot_predict_runs_nothing(repo):
    from opsledger.plan import plan, render

    project, _, _ = repo
    change_id = request(
        project, type="standard", runbook="service-restart", params={"service": "chrony"}
    )
    result = plan(project, change_id, now=INSIDE)  # no lab here: nothing may be run
    assert result.decision.allowed and not result.predicted
    assert {h.host: h.status for h in result.hosts} == {
        "lab-app1": "cannot predict",
        "lab-app2": "cannot predict",
    }
    assert "is not predictable in check mode" in render(result, "text")
