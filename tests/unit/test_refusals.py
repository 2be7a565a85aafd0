"""Mistakes refused where they are typed, with the fix, and the next step said (issue 23).

Real repositories in tmp_path and the real CLI in a subprocess: what a person sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from opsledger.decide import decide
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file
from opsledger.signoff import approve_change, sign_off

from .conftest import START

INSIDE = "2026-12-01T20:30:00+00:00"


def _cli(project, *args, person=None):
    env = {**os.environ, "OPSLEDGER_PROJECT": str(project.root)}
    env.pop("OPSLEDGER_PERSON", None)
    if person:
        env["OPSLEDGER_PERSON"] = person
    return subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _commits(project):
    return git(project.root, "rev-list", "--count", "HEAD").stdout.strip()


def _errors(done):
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), done.stderr
    assert "Traceback" not in done.stderr
    return lines


def test_approving_your_own_change_is_refused_and_names_who_can(repo):
    project, change_id, _ = repo
    before = _commits(project)
    done = _cli(project, "approve", change_id, "--as", "alice")
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = _errors(done)
    assert "alice requested the change and cannot approve it" in line
    assert "--as" in line and "ask someone whose approval counts: bob, carol, dave" in line
    assert _commits(project) == before  # nothing committed


def test_an_observer_can_neither_approve_nor_reject(repo):
    project, change_id, _ = repo
    before = _commits(project)
    for extra in ([], ["--reject"]):
        done = _cli(project, "approve", change_id, *extra, "--as", "erin")
        assert done.returncode == 2, done.stdout + done.stderr
        (line,) = _errors(done)
        assert "erin" in line and "approves nothing" in line
    assert _commits(project) == before


def test_an_observers_statement_made_by_hand_neither_counts_nor_vetoes(repo):
    project, change_id, _ = repo
    sign_off(project, change_id, person="erin", decision="rejected")  # by hand: no `approve`
    approve_change(project, change_id, person="bob")
    decision = decide(project, change_id, now=START.replace(minute=30))
    assert decision.allowed, [c for c in decision.checks if not c.passed]
    why = {c.rule: c.why for c in decision.checks}["approvals"]
    assert "erin's rejection does not count" in why


def test_an_approval_outside_the_rules_teams_is_refused(repo):
    """An emergency needs on-call or the CAB: bob (dba) would be committed and ignored."""
    project, _, _ = repo
    done = _cli(
        project,
        "change", "new", "--title", "Restart ssh now", "--runbook", "service-restart",
        "--type", "emergency", "--targets", "db", "--param", "service=ssh",
        "--requested-by", "carol", "--reason", "Sessions hang on the database hosts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    git(project.root, "add", "-A")
    git(project.root, "-c", "user.name=Carol Chen", "-c", "user.email=carol@example.org",
        "commit", "-qm", "Request")  # fmt: skip
    refused = _cli(project, "approve", "CHG-0002", "--as", "bob")
    assert refused.returncode == 2
    (line,) = _errors(refused)
    assert "bob is not in oncall or cab" in line and "alice, dave" in line


def test_change_show_labels_approvals_that_do_not_count(repo):
    project, change_id, _ = repo
    sign_off(project, change_id, person="alice")  # by hand, past `approve`
    sign_off(project, change_id, person="erin", decision="rejected")
    approve_change(project, change_id, person="bob")
    shown = _cli(project, "change", "show", change_id)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split(":")[0].strip(): line for line in shown.stdout.splitlines()}
    assert "DOES NOT COUNT: alice requested the change and cannot approve it" in lines["alice"]
    assert "DOES NOT COUNT: erin approves nothing" in lines["erin"]
    assert lines["bob"].endswith("(valid)")
    data = _cli(project, "change", "show", change_id, "--json")
    counts = {a["person"]: a["counts"] for a in __import__("json").loads(data.stdout)["approvals"]}
    assert counts == {"alice": False, "bob": True, "erin": False}


def test_an_unknown_requester_is_refused_by_new_and_flagged_by_validate(repo):
    project, change_id, _ = repo
    done = _cli(
        project, "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
        "--targets", "db", "--param", "tags=[postgresql]", "--requested-by", "zed",
        "--reason", "Sorts spill to disk nightly",
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = _errors(done)
    assert "--requested-by" in line and "'zed' is not a person" in line and "alice" in line
    assert not (change_folder(project.root, "CHG-0002")).exists()
    # the same mistake made by editing the file
    path = change_folder(project.root, change_id) / "change.yml"
    data = yaml.safe_load(path.read_text())
    data["requested_by"] = "zed"
    path.write_text(yaml.safe_dump(data))
    checked = _cli(project, "change", "validate", change_id)
    assert checked.returncode == 2, checked.stdout
    (line,) = _errors(checked)
    assert "requested_by" in line and "'zed' is not a person" in line


def test_a_production_window_outside_the_maintenance_windows_is_refused_with_the_next(repo):
    project, _, keys = repo
    args = [
        "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
        "--env", "production", "--targets", "db", "--param", "tags=[postgresql]",
        "--requested-by", "alice", "--reason", "Sorts spill to disk nightly",
        "--key", str(keys["alice"]),  # production: signed statements only
    ]  # fmt: skip
    done = _cli(project, *args, "--start", "2027-02-03T10:00:00+01:00")  # a Wednesday morning
    assert done.returncode == 3  # a policy denial, as decide's
    (line,) = _errors(done)
    assert "outside every maintenance window of production" in line
    assert "next window opens Thu 20:00 Europe/Berlin: --start 2027-02-04T20:00:00+01:00" in line
    assert not (change_folder(project.root, "CHG-0002")).exists()
    # without --start: the next window is taken, and said
    chosen = _cli(project, *args)
    assert chosen.returncode == 0, chosen.stderr
    # said on a line of its own when the window lies ahead (inside one now, nothing to say);
    # never searched for in the whole output: the test's own folder name has "window" in it
    said = [line for line in chosen.stdout.splitlines() if line.startswith("window")]
    assert said == [] or said[0].startswith("window: the next maintenance window"), said
    written = yaml.safe_load((change_folder(project.root, "CHG-0002") / "change.yml").read_text())
    from opsledger.policy.bundle import load_policies
    from opsledger.policy.windows import covered

    policies = load_policies(project)[0]
    import datetime as dt

    start = dt.datetime.fromisoformat(written["window"]["start"])
    end = dt.datetime.fromisoformat(written["window"]["end"])
    assert covered(policies.windows["production"], start, end)


def test_next_steps_after_new_approve_and_a_denying_decide(repo):
    project, _, _ = repo
    done = _cli(
        project, "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
        "--targets", "db", "--param", "tags=[postgresql]", "--risk", "high",
        "--start", "2026-12-01T20:00:00+00:00", "--reason", "Sorts spill to disk nightly",
        person="alice",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "next: commit it" in done.stdout
    assert "needs one approver from cab: carol" in done.stdout
    git(project.root, "add", "-A")
    git(project.root, "-c", "user.name=Alice Arnold", "-c", "user.email=alice@example.org",
        "commit", "-qm", "Request")  # fmt: skip
    denied = _cli(project, "decide", "CHG-0002", "--at", INSIDE)
    assert denied.returncode == 3
    assert "next: needs one approver from cab: carol" in denied.stdout
    approved = _cli(project, "approve", "CHG-0002", person="bob")
    assert approved.returncode == 0, approved.stderr
    assert "next: needs one approver from cab: carol" in approved.stdout
    assert "bob" not in approved.stdout.split("next:")[1]  # bob counted already
    last = _cli(project, "approve", "CHG-0002", person="carol")
    assert "next: approvals complete: opsledger decide CHG-0002" in last.stdout


def test_a_closed_window_says_when_the_next_one_opens(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    late = _cli(project, "decide", change_id, "--at", "2026-12-02T09:00:00+00:00")
    assert late.returncode == 3
    assert "next: the change window closed at 2026-12-01T22:00:00+00:00" in late.stdout
    # the file alice edits, where it is stored (its block), not the flat-form key
    request = stored_file(project.root, change_id, "change.yml")
    assert request.startswith("changes/CHG-00xx/")
    assert f"alice moves window in {request}" in late.stdout


def test_as_help_names_the_environment_variable():
    done = subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", "approve", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "env var: OPSLEDGER_PERSON" in done.stdout and "--as" in done.stdout


PRODUCTION = [
    "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
    "--env", "production", "--targets", "db", "--param", "tags=[postgresql]",
    "--requested-by", "alice", "--reason", "Sorts spill to disk nightly",
]  # fmt: skip


def test_a_window_inside_a_freeze_is_refused_by_new_with_the_first_window_after_it(repo):
    """Tue 22 Dec 2026 20:00 Berlin is a production window, inside the year-end freeze."""
    project, _, keys = repo
    key = ["--key", str(keys["alice"])]  # production: signed statements only
    before = _commits(project)
    done = _cli(project, *PRODUCTION, *key, "--start", "2026-12-22T20:00:00+01:00")
    assert done.returncode == 3, done.stdout + done.stderr  # a policy denial, nothing invalid
    (line,) = _errors(done)
    assert "--start" in line and "overlaps the freeze 'year-end freeze' of production" in line
    assert "2027-01-04T08:00:00+01:00 (Mon 08:00 Europe/Berlin)" in line  # when it ends, local
    assert "the first window after it opens Tue 20:00 Europe/Berlin" in line
    assert "--start 2027-01-05T20:00:00+01:00, or --type emergency" in line
    assert not (change_folder(project.root, "CHG-0002")).exists() and _commits(project) == before
    assert git(project.root, "status", "--porcelain").stdout == ""  # nothing written
    # invalid input and a freeze together: every problem, one line each, exit 2 (invalid)
    both = _cli(project, *PRODUCTION[:-4], "--requested-by", "zed", "--reason", "Sorts spill",
                *key, "--start", "2026-12-22T20:00:00+01:00")  # fmt: skip
    assert both.returncode == 2
    lines = _errors(both)
    assert len(lines) == 2 and "'zed' is not a person" in lines[0] and "freeze" in lines[1]
    # an emergency bypasses freezes (policies/windows.yml): written
    urgent = _cli(project, *PRODUCTION, *key, "--type", "emergency",
                  "--start", "2026-12-22T20:00:00+01:00")  # fmt: skip
    assert urgent.returncode == 0, urgent.stderr


def test_without_start_new_takes_the_first_window_after_a_freeze(repo):
    import datetime as dt

    from opsledger.signoff import request_change

    project, _, keys = repo
    change, _ = request_change(
        project,
        signing_key=keys["alice"],  # production: signed statements only
        title="Tune the db hosts",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk nightly",
        environment="production",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=None,
        window_end=None,
        check_policy=True,
        now=dt.datetime(2026, 12, 20, 12, 0, tzinfo=dt.UTC),  # a Sunday, the freeze is next
    )
    written = yaml.safe_load(change.file.read_text())["window"]
    assert dt.datetime.fromisoformat(written["start"]) == dt.datetime(
        2027, 1, 5, 19, 0, tzinfo=dt.UTC
    )  # Tue 5 Jan 20:00 Berlin, not Tue 22 Dec (frozen)
    assert change.note == "window: the next maintenance window, Tue 20:00 Europe/Berlin"


def test_window_hints_are_said_in_the_environments_own_zone(repo):
    """A production change's hints in Europe/Berlin time, not UTC only: a closed window, the
    next one, and a freeze with when it ends."""
    import datetime as dt

    from opsledger.gitrepo import commit_paths
    from opsledger.signoff import request_change

    project, _, _ = repo

    def production(start):
        change, _ = request_change(
            project, title="Tune production", runbook="converge", requested_by="alice",
            reason="Sorts spill to disk", environment="production", targets="db",
            params={"tags": ["postgresql"]}, window_start=start,
            window_end=start + dt.timedelta(hours=2),
        )  # fmt: skip
        commit_paths(project.root, [change.file.parent], "Request", name="Alice Arnold",
                     email="alice@example.org")  # fmt: skip
        return change.id

    closed = production(dt.datetime(2026, 12, 1, 19, 0, tzinfo=dt.UTC))  # Tue 20:00 Berlin
    late = _cli(project, "decide", closed, "--at", "2026-12-02T09:00:00+00:00")
    assert late.returncode == 3
    assert "closed at 2026-12-01T22:00:00+01:00 (Tue 22:00 Europe/Berlin)" in late.stdout
    assert "next window opens Thu 20:00 Europe/Berlin" in late.stdout
    frozen = production(dt.datetime(2026, 12, 22, 19, 0, tzinfo=dt.UTC))  # in the freeze
    denied = _cli(project, "decide", frozen, "--at", "2026-12-22T19:30:00+00:00")
    assert denied.returncode == 3
    assert (
        "next: the freeze 'year-end freeze' ends 2027-01-04T08:00:00+01:00 (Mon 08:00 "
        "Europe/Berlin); the next window after it opens Tue 20:00 Europe/Berlin" in denied.stdout
    )
    assert "+00:00" not in "".join(x for x in denied.stdout.splitlines() if "next:" in x)


def test_policies_that_do_not_decide_are_said_where_a_person_reads_them(repo):
    """policies/ edited without a policy change has no effect: the files say one thing and
    approve does another. policy check, change new and approve say so, and how to fix it."""
    project, change_id, _ = repo
    quiet = _cli(project, "policy", "check")
    assert quiet.returncode == 0 and "note:" not in quiet.stdout  # the files are what decides
    rules = project.root / "policies" / "changes.yml"
    rules.write_text(
        rules.read_text().replace("observers: [auditor]", "observers: [auditor, netops]")
    )
    git(project.root, "-c", "user.name=Alice Arnold", "-c", "user.email=alice@example.org",
        "commit", "-qam", "netops approve nothing")  # fmt: skip
    checked = _cli(project, "policy", "check")
    assert checked.returncode == 0, checked.stderr
    note = checked.stdout.split("note: ", 1)[1]
    assert note.startswith("policies/ here is not what decides: changes.yml differ")
    assert "1 later edit(s) of policies/ on main were never approved" in note
    assert "opsledger policy propose" in note and "1 of cab (carol) approve it" in note
    # dave (netops, oncall) approves nothing by the files, but by the rules in effect he may:
    approved = _cli(project, "approve", change_id, person="dave")
    assert approved.returncode == 0, approved.stderr
    assert "note: policies/ here is not what decides: changes.yml" in approved.stdout
    new = _cli(
        project, "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
        "--targets", "db", "--start", "2026-12-01T20:00:00+00:00",
        "--reason", "Sorts spill to disk nightly", person="alice",
    )  # fmt: skip
    assert new.returncode == 0, new.stderr
    assert "note: policies/ here is not what decides" in new.stdout


def test_a_statement_that_must_be_signed_is_refused_unsigned_where_it_is_typed(repo):
    """Production counts signed statements only: an unsigned approval was committed, then
    ignored by decide, and the next step went on naming the approver who had just approved.
    approve and change new refuse it (exit 2, nothing written) and say how to sign."""
    project, _, keys = repo
    args = [
        "change", "new", "--title", "Tune the db hosts", "--runbook", "converge",
        "--env", "production", "--targets", "db", "--start", "2026-12-01T20:00:00+01:00",
        "--reason", "Sorts spill to disk nightly",
    ]  # fmt: skip
    before = _commits(project)
    unsigned = _cli(project, *args, person="alice")
    assert unsigned.returncode == 2, unsigned.stdout + unsigned.stderr
    (line,) = _errors(unsigned)
    assert "--key: the request must be signed in production" in line
    assert "sign it: --key ~/.ssh/id_ed25519 (or set OPSLEDGER_SIGNING_KEY)" in line
    assert git(project.root, "status", "--porcelain").stdout == ""  # nothing written
    signed = _cli(project, *args, "--key", str(keys["alice"]), person="alice")
    assert signed.returncode == 0, signed.stderr
    git(project.root, "add", "-A")
    git(project.root, "-c", "user.name=Alice Arnold", "-c", "user.email=alice@example.org",
        "commit", "-qm", "Request")  # fmt: skip
    before = _commits(project)
    bob = _cli(project, "approve", "CHG-0002", person="bob")
    assert bob.returncode == 2
    (line,) = _errors(bob)
    assert "--key: an approval must be signed in production" in line and "bob's signing_key" in line
    assert _commits(project) == before
    assert (
        _cli(project, "approve", "CHG-0002", "--key", str(keys["bob"]), person="bob").returncode
        == 0
    )
    before = _commits(project)
    resubmit = _cli(project, "change", "submit", "CHG-0002", person="alice")
    assert resubmit.returncode == 2 and "--key: the request must be signed" in resubmit.stderr
    assert _commits(project) == before
    # erin has no signing_key in people.yml: no key of hers could verify; she is told so
    from opsledger.policy.bundle import load_policies
    from opsledger.signoff import unsigned_problem

    policies = load_policies(project)[0]
    assert policies.people["erin"].signing_key is None
    problem = unsigned_problem("in production", "erin", keys["bob"], policies, "an approval", "")
    assert problem is not None and problem.field == "people.erin.signing_key"
    assert "register your SSH public key there" in problem.fix
    assert unsigned_problem("", "erin", None, policies, "an approval", "") is None  # the lab
