"""Incident handling on a real git repository: every step a commit as the person who took it,
clocks on git time, resolution only with proof, closing with cause, class and root cause; bad
input exits 2 with one line per problem and writes nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.incidents import open_incident
from opsledger.faults.queries import list_incidents, show_incident
from opsledger.faults.store import incident_file, load_incident
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import stored_file
from opsledger.records import Record

from .conftest import T0, authors, commit_record, head


def run(*args):
    return CliRunner().invoke(cli, list(args))


def new_p2(*extra):
    return run(
        "incident", "new", "--title", "PostgreSQL down on lab-db1", "--class", "software",
        "--impact", "high", "--urgency", "medium", "--host", "lab-db1", "--service", "postgresql",
        "--as", "alice", *extra,
    )  # fmt: skip


def request_fix(project, clock):
    """alice's emergency change CHG-0001 restarting PostgreSQL on lab-db1, committed."""
    from opsledger.signoff import request_change

    change, _ = request_change(
        project,
        title="Restart PostgreSQL on lab-db1",
        runbook="service-restart",
        change_type="emergency",
        requested_by="alice",
        reason="PostgreSQL is down on lab-db1 (INC-0001)",
        targets="lab-db1",
        params={"service": "postgresql@15-main"},
        window_start=clock.now,
        window_end=clock.now + dt.timedelta(hours=2),
    )
    commit_paths(  # the change and alice's request statement
        project.root,
        [change.file.parent],
        "Request CHG-0001",
        name="Alice",
        email="alice@example.org",
    )
    return change.id


def run_record(
    project, change_id, started, *, result="success", verification="passed", hosts=("lab-db1",)
):
    """A run of request_fix's change as apply records it: its params and requested content."""
    from opsledger.signoff import subject

    return Record(
        kind="run",
        environment="lab",
        result=result,
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=2)).isoformat(),
        change=change_id,
        runbook="service-restart",
        params={"service": "postgresql@15-main"},
        content_sha256=subject(project, change_id)[1].sha256,
        targets="lab-db1",
        hosts=list(hosts),
        verification={"status": verification, "targets": "lab-db1", "suites": ["postgresql"]},
    )


def test_the_life_of_an_incident_is_a_series_of_commits_by_the_people_who_did_it(fault_repo, clock):
    project = fault_repo
    opened = new_p2("--note", "users report the reports page fails")
    assert opened.exit_code == 0, opened.output
    assert "INC-0001: opened, P2" in opened.output
    path = incident_file(project, "INC-0001")

    clock.advance(minutes=20)
    assert run("incident", "ack", "INC-0001", "--as", "bob").exit_code == 0
    clock.advance(minutes=5)
    assert run("incident", "assign", "INC-0001", "--to", "carol", "--as", "bob").exit_code == 0
    clock.advance(minutes=5)
    noted = run(
        "incident", "note", "INC-0001", "--text", "cluster stopped by hand", "--as", "carol"
    )
    assert noted.exit_code == 0

    # resolving needs proof: the change has not run yet -> denied, nothing written
    change_id = request_fix(project, clock)
    before = head(project)
    denied = run(
        "incident", "resolve", "INC-0001", "--change", change_id,
        "--summary", "restarted by the emergency change", "--as", "carol",
    )  # fmt: skip
    assert denied.exit_code == 3, denied.output
    assert "no successful, verified run" in denied.output and head(project) == before
    # a run without verification does not count either
    clock.advance(minutes=10)
    commit_record(project, run_record(project, change_id, clock.now, verification="skipped"))
    denied = run(
        "incident", "resolve", "INC-0001", "--change", change_id,
        "--summary", "restarted by the emergency change", "--as", "carol",
    )  # fmt: skip
    assert denied.exit_code == 3 and "verification skipped" in denied.output
    clock.advance(minutes=5)
    commit_record(project, run_record(project, change_id, clock.now))
    clock.advance(minutes=5)
    resolved = run(
        "incident", "resolve", "INC-0001", "--change", change_id,
        "--summary", "restarted by the emergency change", "--as", "carol",
    )  # fmt: skip
    assert resolved.exit_code == 0, resolved.output

    # a P2 closes only with a root cause; the class is confirmed by whoever closes it
    clock.advance(minutes=30)
    short = run(
        "incident", "close", "INC-0001", "--class", "software",
        "--cause", "PostgreSQL was stopped by hand", "--as", "alice",
    )  # fmt: skip
    assert short.exit_code == 2 and "--root-cause" in short.output
    closed = run(
        "incident", "close", "INC-0001", "--class", "software",
        "--cause", "PostgreSQL was stopped by hand",
        "--root-cause", "Maintenance ran on the primary instead of the standby; prompts now "
        "show each host's role", "--as", "alice",
    )  # fmt: skip
    assert closed.exit_code == 0, closed.output

    incident = load_incident(project, "INC-0001")
    assert incident.status == "closed" and incident.data["class_confirmed"] is True
    assert incident.data["assignee"] == "carol"
    assert incident.data["resolution"]["change"] == change_id
    assert incident.data["resolution"]["run"].startswith(
        stored_file(project.root, change_id, "runs") + "/"
    )
    assert [e["action"] for e in incident.timeline] == [
        "opened", "acknowledged", "assigned", "note", "resolved", "closed",
    ]  # fmt: skip
    # each step committed as its person (people.yml emails)
    assert authors(project, path) == [
        "alice@example.org", "bob@example.org", "bob@example.org", "carol@example.org",
        "carol@example.org", "alice@example.org",
    ]  # fmt: skip

    shown = json.loads(run("incident", "show", "INC-0001", "--json").output)
    assert shown["sla"]["state"] == "met"
    assert shown["sla"]["response"]["used_minutes"] == 20.0  # P2: 60 min
    assert shown["sla"]["resolution"]["used_minutes"] == 50.0  # P2: 8 h
    assert shown["sla"]["opened_at"] == T0.isoformat()
    assert [s["by"] for s in shown["steps"]][:2] == ["alice", "bob"]


def test_bad_input_exits_2_one_line_per_problem_and_writes_nothing(fault_repo):
    project = fault_repo
    before = head(project)
    result = run(
        "incident", "new", "--title", "Disk full", "--class", "plumbing", "--impact", "high",
        "--urgency", "low", "--env", "lab", "--host", "lab-db9", "--source", "gossip",
        "--assignee", "mallory", "--as", "zed",
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines)
    for word in ("'zed'", "'mallory'", "'plumbing'", "'gossip'", "'lab-db9'"):
        assert sum(word in line for line in lines) == 1, word
    assert "Traceback" not in result.output
    assert head(project) == before and not (project.root / "incidents").exists()
    # steps on an incident that does not exist, or by a stranger, also exit 2
    assert run("incident", "ack", "INC-0042", "--as", "bob").exit_code == 2
    assert new_p2().exit_code == 0
    stranger = run("incident", "ack", "INC-0001", "--as", "mallory")
    assert stranger.exit_code == 2 and "mallory" in stranger.stderr
    closed_too_soon = run(
        "incident", "close", "INC-0001", "--class", "software", "--cause", "x" * 20, "--as", "bob"
    )
    assert closed_too_soon.exit_code == 2 and "is open" in closed_too_soon.stderr
    # what is not an id never becomes a path: one line, nothing written
    (project.root / "incidents" / "INC-0002").mkdir()
    before = head(project)
    for given in ("INC-0002/../INC-0001", "../../policies", "INC-1", "inc-0001"):
        for args in (("incident", "ack", given), ("problem", "new", "--title", "Odd id here",
                                                  "--incident", given)):  # fmt: skip
            odd = run(*args, "--as", "bob")
            assert odd.exit_code == 2, (args, odd.output)
            assert odd.stderr.strip().splitlines() == [
                f"error: INCIDENT_ID: {given!r} is not an incident id — write it as INC-0001 "
                "(see opsledger incident list)"
            ]
    odd = run("problem", "show", "PRB-0001/..")
    assert odd.exit_code == 2 and "is not a problem id" in odd.stderr
    # an empty alert fingerprint is refused, not read as "no fingerprint"
    empty = new_p2("--fingerprint", " ")
    assert empty.exit_code == 2 and "--fingerprint: the fingerprint is empty" in empty.stderr
    # an empty text is one problem, said once (not as too short *and* not matching a pattern)
    for args, where in (
        (("incident", "new", "--title", "", "--class", "software", "--impact", "low",
          "--urgency", "low"), "title: 0 characters"),
        (("incident", "new", "--title", "Shop is slow", "--class", "software", "--impact",
          "low", "--urgency", "low", "--service", ""), "services[0]: 0 characters"),
        (("problem", "new", "--title", "", "--incident", "INC-0001"), "title: 0 characters"),
    ):  # fmt: skip
        said = run(*args, "--as", "bob")
        assert said.exit_code == 2 and where in said.stderr, said.output
        assert len(said.stderr.strip().splitlines()) == 1, said.stderr
    assert head(project) == before


def test_clocks_run_on_git_time_not_on_what_the_file_says(fault_repo, clock):
    project = fault_repo
    # the file claims the incident was opened five hours earlier than git recorded it
    open_incident(
        project, title="Replication lag on lab-db2", person="alice", klass="software",
        impact="high", urgency="high", hosts=("lab-db2",), now=T0 - dt.timedelta(hours=5),
    )  # fmt: skip
    view = show_incident(project, "INC-0001", now=T0 + dt.timedelta(minutes=10))
    assert view.incident.timeline[0]["at"] == (T0 - dt.timedelta(hours=5)).isoformat()
    assert view.clocks.opened_at == T0  # the commit's time
    assert view.clocks.response.due == T0 + dt.timedelta(minutes=15)  # P1
    assert view.clocks.state.value == "running"
    later = show_incident(project, "INC-0001", now=T0 + dt.timedelta(minutes=13))
    assert later.clocks.state.value == "near_breach"  # 13 of 15 minutes used (75 % in sla.yml)


def test_list_breaching_and_due_soonest_first(fault_repo, clock):
    project = fault_repo
    open_incident(
        project,
        title="Checkout fails for all users",
        person="alice",
        klass="software",
        impact="high",
        urgency="high",
        hosts=("lab-app1",),
    )  # fmt: skip  P1: respond within 15 min (24x7)
    open_incident(
        project,
        title="Nightly report slow",
        person="alice",
        klass="software",
        impact="medium",
        urgency="medium",
        hosts=("lab-app2",),
    )  # fmt: skip  P3: 4 business hours
    now = T0 + dt.timedelta(hours=1)
    breaching = list_incidents(project, breaching=True, now=now)
    assert [i.id for i, _ in breaching.items] == ["INC-0001"]
    due = list_incidents(project, due_within=dt.timedelta(hours=4), now=now)
    # INC-0001 is overdue (due T0+15m), INC-0002 due at 13:00 Berlin = T0+4h
    assert [(i.id, c.next_due) for i, c in due.items] == [
        ("INC-0001", T0 + dt.timedelta(minutes=15)),
        ("INC-0002", T0 + dt.timedelta(hours=4)),
    ]
    assert [
        i.id for i, _ in list_incidents(project, due_within=dt.timedelta(hours=1), now=now).items
    ] == ["INC-0001"]
    from opsledger.views.faults import list_rows

    left = {r["incident"]: r["left"] for r in list_rows(list_incidents(project, now=now), now)}
    assert left == {"INC-0001": "45 min overdue", "INC-0002": "3.0 h left"}
    later = now + dt.timedelta(hours=4)
    left = {r["incident"]: r["left"] for r in list_rows(list_incidents(project, now=later), later)}
    assert left == {"INC-0001": "4.8 h overdue", "INC-0002": "60 min overdue"}
    cli_breaching = run("incident", "list", "--breaching")
    assert cli_breaching.exit_code == 1 and "INC-0001" in cli_breaching.output


def test_pauses_only_where_sla_allows_and_they_move_the_deadline(fault_repo, clock):
    project = fault_repo
    open_incident(
        project,
        title="PDF export broken",
        person="alice",
        klass="software",
        impact="high",
        urgency="high",
    )  # fmt: skip  P1: sla.yml lets only P3/P4 pause
    clock.advance(minutes=5)
    assert run("incident", "ack", "INC-0001", "--as", "bob").exit_code == 0
    denied = run("incident", "pause", "INC-0001", "--reason", "waiting on customer", "--as", "bob")
    assert denied.exit_code == 3 and "P1 clocks do not pause" in denied.stderr

    clock.set(T0)
    open_incident(
        project,
        title="Monthly export slow",
        person="alice",
        klass="software",
        impact="medium",
        urgency="medium",
    )  # fmt: skip  P3: 72 business hours, pausable
    clock.advance(hours=1)
    assert run("incident", "ack", "INC-0002", "--as", "bob").exit_code == 0
    plain = show_incident(project, "INC-0002").clocks.resolution.due
    clock.advance(hours=1)  # Monday 11:00 Berlin
    paused = run("incident", "pause", "INC-0002", "--reason", "waiting on customer", "--as", "bob")
    assert paused.exit_code == 0, paused.output
    assert (
        show_incident(project, "INC-0002", now=T0 + dt.timedelta(days=3)).clocks.resolution.due
        is None
    )
    clock.advance(hours=24)  # Tuesday 11:00: one business day (10 h) waited
    assert run("incident", "resume", "INC-0002", "--as", "bob").exit_code == 0
    moved = show_incident(project, "INC-0002").clocks.resolution.due
    assert moved is not None and plain is not None
    # the deadline moved by the ten business hours the customer took (a whole business day)
    from opsledger.faults.clock import elapsed
    from opsledger.faults.policy import load_fault_policy

    calendar = load_fault_policy(project).calendar
    assert elapsed(plain, moved, calendar=calendar) == dt.timedelta(hours=10)


def test_an_alert_fingerprint_updates_the_open_incident_instead_of_a_duplicate(fault_repo, clock):
    project = fault_repo
    args = ("--source", "alert", "--fingerprint", "alertmanager:PostgresDown:lab-db1")
    assert new_p2(*args).exit_code == 0
    clock.advance(minutes=3)
    again = new_p2(*args)
    assert again.exit_code == 0 and "INC-0001: updated" in again.output
    assert not incident_file(project, "INC-0002").exists()
    assert [e["action"] for e in load_incident(project, "INC-0001").timeline] == [
        "opened",
        "detected",
    ]


def test_resolving_by_recovery_test_needs_a_passing_one_after_the_last_sighting(fault_repo):
    project = fault_repo
    assert new_p2().exit_code == 0
    before = head(project)
    denied = run(
        "incident", "resolve", "INC-0001", "--recovery-test", "--summary", "it works again",
        "--as", "bob",
    )  # fmt: skip
    assert denied.exit_code == 3 and "no passing recovery test" in denied.stderr
    neither = run("incident", "resolve", "INC-0001", "--summary", "it works again", "--as", "bob")
    assert neither.exit_code == 2 and "--change CHG" in neither.stderr
    assert head(project) == before


def test_an_invalid_incident_file_is_named_not_a_traceback(fault_repo):
    project = fault_repo
    assert new_p2().exit_code == 0
    path = incident_file(project, "INC-0001")
    data = yaml.safe_load(path.read_text())
    data["status"] = "fixed"
    data["priority"] = 2
    path.write_text(yaml.safe_dump(data))
    shown = run("incident", "show", "INC-0001")
    assert shown.exit_code == 2
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 2 and all("incident.yml" in line for line in lines)
    assert any(": status: " in line for line in lines) and any(
        ": priority: " in line for line in lines
    )
    git(project.root, "checkout", "--", str(path))


def test_a_run_record_a_person_committed_proves_no_fix(fault_repo, clock):
    """A run record is a file anyone can write: only what the CI identity committed counts, for
    resolving an incident and for a problem's permanent fix alike (as promotion and audit)."""
    from opsledger.records import run_record_path, write_record

    project = fault_repo
    assert new_p2().exit_code == 0
    change_id = request_fix(project, clock)
    clock.advance(minutes=10)
    forged = run_record(project, change_id, clock.now)
    path = write_record(run_record_path(project, change_id, clock.now), forged)
    commit_paths(project.root, [path], "Run", name="Carol Chen", email="carol@example.org")
    clock.advance(minutes=5)
    before = head(project)
    resolve = (
        "incident", "resolve", "INC-0001", "--change", change_id,
        "--summary", "restarted by the emergency change", "--as", "carol",
    )  # fmt: skip
    denied = run(*resolve)
    assert denied.exit_code == 3, denied.output
    assert "not the CI identity ci@example.org" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1 and head(project) == before
    opened = run("problem", "new", "--title", "PostgreSQL stops", "--incident", "INC-0001",
                 "--as", "bob")  # fmt: skip
    assert opened.exit_code == 0, opened.output
    before = head(project)
    fix = run("problem", "fix", "PRB-0001", "--change", change_id, "--as", "bob")
    assert fix.exit_code == 3 and "not the CI identity" in fix.stderr
    assert head(project) == before
    # the same run committed by CI is evidence: both steps pass
    clock.advance(minutes=5)
    commit_record(project, run_record(project, change_id, clock.now))
    assert run(*resolve).exit_code == 0
    assert run("problem", "fix", "PRB-0001", "--change", change_id, "--as", "bob").exit_code == 0


def test_a_resolved_incident_reopens_and_needs_new_proof(fault_repo, clock):
    """Reopening withdraws the resolution: the fix that ran before it proves nothing more, the
    resolution clock resumes (the time it stood resolved is not counted), closed stays closed."""
    project = fault_repo
    assert new_p2().exit_code == 0
    clock.advance(minutes=10)
    assert run("incident", "ack", "INC-0001", "--as", "bob").exit_code == 0
    change_id = request_fix(project, clock)
    clock.advance(minutes=10)
    commit_record(project, run_record(project, change_id, clock.now))
    clock.advance(minutes=10)
    resolve = (
        "incident", "resolve", "INC-0001", "--change", change_id,
        "--summary", "restarted by the emergency change", "--as", "carol",
    )  # fmt: skip
    assert run(*resolve).exit_code == 0  # T0 + 30 min
    clock.advance(minutes=60)
    before = head(project)
    for incident_id, reason, person, why in (
        ("INC-0001", "no", "alice", "--reason: say why it is not fixed"),
        ("INC-0001", "the reports still fail", "mallory", "'mallory'"),
        ("INC-0009", "the reports still fail", "alice", "no incident INC-0009"),
    ):
        bad = run("incident", "reopen", incident_id, "--reason", reason, "--as", person)
        assert bad.exit_code == 2 and why in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1
    assert head(project) == before
    reopened = run(
        "incident", "reopen", "INC-0001", "--reason", "users say the reports still fail",
        "--as", "alice",
    )  # fmt: skip
    assert reopened.exit_code == 0, reopened.output  # T0 + 90 min
    incident = load_incident(project, "INC-0001")
    assert incident.status == "acknowledged" and incident.data["resolution"] is None
    assert incident.timeline[-1]["action"] == "reopened"
    assert authors(project, incident.path)[-1] == "alice@example.org"
    # the run before the reopening did not fix it
    again = run(*resolve)
    assert again.exit_code == 3 and "before the incident was reopened" in again.stderr
    clock.advance(minutes=20)
    commit_record(project, run_record(project, change_id, clock.now))
    clock.advance(minutes=10)
    assert run(*resolve).exit_code == 0  # T0 + 120 min
    shown = json.loads(run("incident", "show", "INC-0001", "--json").output)
    assert shown["sla"]["resolved_at"] == (T0 + dt.timedelta(minutes=120)).isoformat()
    assert shown["sla"]["resolution"]["used_minutes"] == 60.0  # 30 + 30: not the 60 resolved
    clock.advance(minutes=10)
    closed = run(
        "incident", "close", "INC-0001", "--class", "software", "--cause", "PostgreSQL was down",
        "--root-cause", "The unit was masked by hand; the baseline now unmasks it", "--as", "bob",
    )  # fmt: skip
    assert closed.exit_code == 0, closed.output
    final = run("incident", "reopen", "INC-0001", "--reason", "it failed again", "--as", "alice")
    assert final.exit_code == 2 and "INC-0001 is closed" in final.stderr


PROBE_SUITE = '''"""probe: the marker says healthy."""

SUITE = "probe"
APPLIES_TO = "all"


def test_marker_says_healthy(host):
    assert host.file({path!r}).content_string.strip() == "healthy"
'''


@pytest.mark.slow  # real Testinfra runs on this machine (local connection)
def test_a_passing_recovery_test_resolves_until_the_fault_is_seen_again(
    local_env_repo, monkeypatch, tmp_path
):
    """The recovery test really runs `verify` on the affected host: a failing one is recorded
    and proves nothing, a passing one resolves; a sighting or a reopening after it voids it."""
    project = local_env_repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    marker = tmp_path / "marker"
    marker.write_text("broken\n")
    suite = project.root / "tests" / "infra" / "test_probe.py"
    suite.write_text(PROBE_SUITE.format(path=str(marker)))
    commit_paths(project.root, [suite], "Probe suite", name="Alice", email="alice@example.org")
    alert = (
        "incident", "new", "--title", "Orders fail on here", "--class", "software",
        "--impact", "medium", "--urgency", "low", "--env", "local", "--host", "here",
        "--fingerprint", "alert:orders", "--as", "alice",
    )  # fmt: skip
    assert run(*alert).exit_code == 0
    verify = ("incident", "verify", "INC-0001", "--suite", "probe", "--as", "bob")
    resolve = (
        "incident", "resolve", "INC-0001", "--recovery-test",
        "--summary", "the marker is healthy again", "--as", "bob",
    )  # fmt: skip
    failed = run(*verify)
    assert failed.exit_code == 1 and "test_marker_says_healthy" in failed.output
    assert run(*resolve).exit_code == 3
    marker.write_text("healthy\n")
    assert run(*verify).exit_code == 0
    assert run(*alert).exit_code == 0  # the alert fires again after the test: it proves nothing
    seen_again = run(*resolve)
    assert seen_again.exit_code == 3 and "since the fault was last seen" in seen_again.stderr
    assert run(*verify).exit_code == 0
    assert run(*resolve).exit_code == 0
    assert load_incident(project, "INC-0001").data["resolution"]["how"] == "recovery_test"
    reopened = run(
        "incident", "reopen", "INC-0001", "--reason", "customers still see failed orders",
        "--as", "alice",
    )  # fmt: skip
    assert reopened.exit_code == 0 and load_incident(project, "INC-0001").status == "open"
    assert run(*resolve).exit_code == 3  # the test before the reopening does not count
    assert run(*verify).exit_code == 0
    assert run(*resolve).exit_code == 0
    actions = [e["action"] for e in load_incident(project, "INC-0001").timeline]
    assert actions == [
        "opened", "recovery_test", "recovery_test", "detected", "recovery_test", "resolved",
        "reopened", "recovery_test", "resolved",
    ]  # fmt: skip


def test_a_pause_ends_at_resolution_so_a_reopened_clock_runs(fault_repo, clock):
    """Paused while waiting on the customer, then resolved: reopened, the clock runs again."""
    project = fault_repo
    opened = run(
        "incident", "new", "--title", "Nightly export slow", "--class", "software",
        "--impact", "medium", "--urgency", "medium", "--host", "lab-db1", "--as", "alice",
    )  # fmt: skip
    assert opened.exit_code == 0 and "P3" in opened.output
    clock.advance(minutes=10)
    assert run("incident", "ack", "INC-0001", "--as", "bob").exit_code == 0
    clock.advance(minutes=10)
    paused = run("incident", "pause", "INC-0001", "--reason", "waiting on the customer",
                 "--as", "bob")  # fmt: skip
    assert paused.exit_code == 0, paused.output
    change_id = request_fix(project, clock)
    clock.advance(minutes=10)
    commit_record(project, run_record(project, change_id, clock.now))
    clock.advance(minutes=10)
    resolved = run("incident", "resolve", "INC-0001", "--change", change_id, "--summary",
                   "restarted by the change", "--as", "bob")  # fmt: skip
    assert resolved.exit_code == 0, resolved.output
    clock.advance(minutes=10)
    assert run("incident", "reopen", "INC-0001", "--reason", "the export is still slow",
               "--as", "alice").exit_code == 0  # fmt: skip
    clocks = show_incident(project, "INC-0001", now=clock.now + dt.timedelta(minutes=5)).clocks
    assert clocks.state.value == "running" and clocks.resolution.due is not None
    # 20 min until the pause and 5 since the reopening: the pause, and the time it stood
    # resolved, do not count
    assert clocks.resolution.used == dt.timedelta(minutes=25)


def test_an_unknown_environment_is_refused_not_read_as_nothing_to_tell(fault_repo):
    """`--env prodution` in a scheduled job would otherwise never tell a breach (exit 0)."""
    assert new_p2().exit_code == 0
    for args in (
        ("incident", "list", "--env", "prodution"),
        ("incident", "list", "--breaching", "--env", "prodution"),
        ("notify", "breaches", "--env", "prodution"),
        ("problem", "suggest", "--env", "prodution"),
        ("incident", "list", "--env", "../lab"),
    ):
        said = run(*args)
        assert said.exit_code == 2, (args, said.output)
        lines = said.stderr.strip().splitlines()
        assert len(lines) == 1 and "no inventory for environment" in lines[0], lines
    assert run("incident", "list", "--env", "lab").exit_code == 0
