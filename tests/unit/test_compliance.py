"""audit check on tmp git repos: each seeded violation is found with its commit; a clean
history has none."""

from __future__ import annotations

import datetime as dt
import json

import yaml
from click.testing import CliRunner

from opsledger.audit import audit_check
from opsledger.changes import load_change
from opsledger.cli import cli
from opsledger.gitrepo import commit_paths, git, head
from opsledger.layout import change_folder, flat_form
from opsledger.records import Record, run_record_path, write_record
from opsledger.reviews import open_review
from opsledger.signoff import (
    approve_change,
    propose_policy_change,
    request_change,
    sign_off,
    subject,
    submit_change,
)

from .conftest import START

LATER = START + dt.timedelta(days=1)
ALICE = {"name": "Alice Arnold", "email": "alice@example.org"}
CI = {"name": "opsledger CI", "email": "ci@example.org"}


def _run(project, change_id, *, started=START + dt.timedelta(minutes=10), approvers=("bob",)):
    """A run record of the change's current content as CI's apply writes and commits it."""
    content = subject(project, change_id)[1].sha256
    record = Record(
        kind="run",
        environment="lab",
        result="success",
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=3)).isoformat(),
        change=change_id,
        runbook="converge",
        params=load_change(project, change_id).params,
        git_commit=head(project.root),
        content_sha256=content,
        decision={"allowed": True, "approvers": list(approvers), "risk": "medium"},
    )
    path = write_record(run_record_path(project, change_id, started), record)
    sha = commit_paths(project.root, [path], f"Run {change_id}", **CI)
    return path, sha


def _rules(result):
    return sorted((f.rule, f.commits[0][:10] if f.commits else "") for f in result.findings)


def test_clean_history_has_no_findings(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    _run(project, change_id)
    assert audit_check(project, now=LATER).findings == []


def test_edited_run_record_is_found_with_the_editing_commit(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    path, _ = _run(project, change_id)
    path.write_text(path.read_text().replace('"success"', '"failed"'))
    sha = commit_paths(project.root, [path], "Fix typo", name="Mallory", email="m@example.org")
    (finding,) = audit_check(project, now=LATER).findings
    assert finding.rule == "evidence-edited" and finding.commits == (sha,)
    assert finding.file.endswith(".json") and "m@example.org" in finding.message


def test_deleted_statement_is_found(repo):
    project, change_id, _ = repo
    result = approve_change(project, change_id, person="bob", now=START)
    git(project.root, "rm", "-q", str(result.path.relative_to(project.root)))
    git(project.root, "-c", "user.name=X", "-c", "user.email=x@example.org", "commit", "-qm", "rm")
    sha = head(project.root)
    rules = _rules(audit_check(project, now=LATER))
    assert ("evidence-edited", sha[:10]) in rules


def test_self_approval_and_stranger_statements_are_found(repo):
    project, change_id, _ = repo
    # approve refuses it; a statement made by hand must not count either
    alice = sign_off(project, change_id, person="alice", now=START)
    # carol's statement, but committed by bob; a statement of someone not in people.yml
    carol = sign_off(project, change_id, person="carol", commit=False)
    commit_paths(project.root, [carol.path], "Approve", name="Bob", email="bob@example.org")
    mallory = carol.path.parent.parent / "mallory" / carol.path.name
    mallory.parent.mkdir()
    mallory.write_text(carol.path.read_text().replace("person: carol", "person: mallory"))
    commit_paths(project.root, [mallory], "Approve", name="M", email="mallory@example.org")
    result = audit_check(project, now=LATER)
    messages = {f.rule + ": " + f.message for f in result.findings}
    assert ("approval-by-requester", alice.commit[:10]) in _rules(result)
    assert any(
        m.startswith("approval-by-stranger: carol's") and "bob@example.org" in m for m in messages
    )
    assert any(m.startswith("approval-by-stranger: mallory's") for m in messages)


def test_run_without_quorum_and_outside_its_window(repo):
    project, change_id, _ = repo
    _, sha = _run(project, change_id, started=START + dt.timedelta(hours=3), approvers=("bob",))
    rules = _rules(audit_check(project, now=LATER))
    assert ("applied-without-quorum", sha[:10]) in rules
    assert ("applied-outside-window", sha[:10]) in rules


def test_run_with_approval_of_other_content_has_no_quorum(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    path, _ = _run(project, change_id)
    data = json.loads(path.read_text())
    assert data["content_sha256"]
    # a second run of edited content, recorded as if bob's approval still counted
    record = Record.from_dict(
        {
            **data,
            "content_sha256": "0" * 64,
            "started_at": (START + dt.timedelta(minutes=30)).isoformat(),
        }
    )
    second = write_record(
        run_record_path(project, change_id, START + dt.timedelta(minutes=30)), record
    )
    sha2 = commit_paths(project.root, [second], "Run again", **CI)
    # CI never runs content its requester did not request: such a record is no evidence
    assert _rules(audit_check(project, now=LATER)) == [("evidence-forged", sha2[:10])]


def test_emergency_review_missing_then_late(repo):
    project, change_id, _ = repo
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text().replace("type: normal", "type: emergency"))
    commit_paths(project.root, [file], "Emergency", name="Alice Arnold", email="alice@example.org")
    submit_change(project, change_id, person="alice")  # the request names the content
    approve_change(project, change_id, person="dave", now=START)
    _, sha = _run(project, change_id, approvers=("dave",))
    assert ("review-missing", sha[:10]) in _rules(audit_check(project, now=LATER))
    open_review(project, load_change(project, change_id), START + dt.timedelta(minutes=13))
    assert audit_check(project, now=LATER).findings == []
    late = audit_check(project, now=START + dt.timedelta(days=4)).findings
    assert [f.rule for f in late] == ["review-late"]


def test_unsigned_approval_where_signatures_are_required(repo):
    project, change_id, keys = repo
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text().replace("environment: lab", "environment: staging"))
    commit_paths(project.root, [file], "Staging", name="Alice Arnold", email="alice@example.org")
    sign_off(project, change_id, person="bob", now=START)  # past approve, which refuses it
    unsigned = head(project.root)
    approve_change(project, change_id, person="carol", signing_key=keys["carol"], now=START)
    rules = _rules(audit_check(project, now=LATER))
    assert rules == [("unsigned", unsigned[:10])]


def test_expired_and_self_approved_waivers(repo):
    project, _, _ = repo
    path = project.root / "policies" / "waivers.yml"
    data = yaml.safe_load(path.read_text())
    data["waivers"][0]["expires"] = dt.date(2026, 1, 1)
    path.write_text(yaml.safe_dump(data))
    (expired,) = audit_check(project, now=LATER).findings
    assert expired.rule == "waiver-expired" and "W-0001" in expired.message
    data["waivers"][1]["approved_by"] = data["waivers"][1]["author"]
    path.write_text(yaml.safe_dump(data))
    (invalid,) = audit_check(project, now=LATER).findings
    assert invalid.rule == "waiver-invalid" and "approved by its author" in invalid.message


def test_cli_exit_code_follows_the_threshold(repo):
    project, change_id, _ = repo
    sign_off(project, change_id, person="alice", now=START)
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    high = CliRunner().invoke(cli, ["audit", "check"], env=env)
    assert high.exit_code == 1 and "approval-by-requester" in high.output
    critical = CliRunner().invoke(
        cli, ["audit", "check", "--fail-on", "critical", "--json"], env=env
    )
    assert critical.exit_code == 0
    assert json.loads(critical.output)[0]["rule"] == "approval-by-requester"


def _edit_role(project, text="# tuned\n"):
    path = project.root / "roles" / "postgresql" / "defaults" / "main.yml"
    path.write_text(path.read_text() + text)
    return path


def test_desired_state_commit_without_a_change_is_unauthorized(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    _run(project, change_id)
    path = _edit_role(project)
    sha = commit_paths(project.root, [path], "Quick fix", name="Eve", email="eve@example.org")
    (finding,) = audit_check(project, now=LATER).findings
    assert finding.rule == "unauthorized-change" and finding.commits == (sha,)
    assert (
        finding.file == "roles/postgresql/defaults/main.yml"
        and "eve@example.org" in finding.message
    )


def test_desired_state_edit_with_its_change_is_covered_once_applied(repo):
    project, _, _ = repo
    path = _edit_role(project)
    change, _ = request_change(
        project,
        title="Tune PostgreSQL defaults",
        runbook="converge",
        requested_by="alice",
        reason="Defaults for the new hosts",
        targets="db",
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    sha = commit_paths(project.root, [path, change.file.parent], "Request", **ALICE)
    rules = _rules(audit_check(project, now=LATER))
    assert rules == [("change-not-applied", sha[:10])]
    approve_change(project, change.id, person="bob", now=START)
    _run(project, change.id)
    assert audit_check(project, now=LATER).findings == []


def test_a_merge_is_judged_by_what_it_brought(repo):
    project, _, _ = repo
    root = project.root
    git(root, "checkout", "-q", "-b", "feature")
    path = _edit_role(project)
    commit_paths(root, [path], "Edit on a branch", name="Eve", email="eve@example.org")
    git(root, "checkout", "-q", "main")
    git(
        root,
        "-c",
        "user.name=M",
        "-c",
        "user.email=m@example.org",
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge feature",
        "feature",
    )
    merge = head(root)
    (finding,) = audit_check(project, now=LATER).findings
    assert finding.rule == "unauthorized-change" and finding.commits == (merge,)
    assert "same merge" in finding.message


def test_history_before_adoption_is_the_baseline(repo):
    project, _, _ = repo
    path = _edit_role(project)
    commit_paths(project.root, [path], "Before adoption", name="Eve", email="eve@example.org")
    assert [f.rule for f in audit_check(project, now=LATER).findings] == ["unauthorized-change"]
    rules = project.root / "policies" / "changes.yml"
    adopted = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    rules.write_text(rules.read_text() + f"audit:\n  from: {adopted.isoformat()}\n")
    # an edit of policies/ takes effect only as an approved policy change
    assert [f.rule for f in audit_check(project, now=LATER).findings] == ["unauthorized-change"]
    proposal, _ = propose_policy_change(
        project, title="Adopt opsledger", requested_by="alice", reason="Audit from now on"
    )
    commit_paths(project.root, [rules, proposal.file.parent], "Adopt", **ALICE)
    assert "policy-change-unapproved" in _rules_only(audit_check(project, now=LATER))
    approve_change(project, proposal.id, person="carol")
    assert audit_check(project, now=LATER).findings == []


def _rules_only(result):
    return {f.rule for f in result.findings}


def test_role_documentation_is_not_desired_state(repo):
    project, _, _ = repo
    readme = project.root / "roles" / "postgresql" / "README.md"
    readme.write_text("# postgresql\n\nGenerated from argument specs.\n")
    index = project.root / "roles" / "README.md"
    index.write_text("# Roles\n")
    commit_paths(project.root, [readme, index], "Docs", name="Eve", email="eve@example.org")
    assert audit_check(project, now=LATER).findings == []


def test_without_a_baseline_the_check_says_how_to_set_one(repo):
    project, _, _ = repo
    path = _edit_role(project)
    commit_paths(project.root, [path], "Before adoption", name="Eve", email="eve@example.org")
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    result = CliRunner().invoke(cli, ["audit", "check"], env=env)
    assert result.exit_code == 1
    hints = [line for line in result.output.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and "audit: {from: <ISO time>}" in hints[0]
    assert "policies/changes.yml" in hints[0]
    rules = project.root / "policies" / "changes.yml"
    adopted = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    rules.write_text(rules.read_text() + f"audit:\n  from: {adopted.isoformat()}\n")
    # setting the baseline is a policy change: in effect once its owners approve it
    proposal, _ = propose_policy_change(
        project, title="Adopt opsledger", requested_by="alice", reason="Audit from now on"
    )
    commit_paths(project.root, [rules, proposal.file.parent], "Adopt", **ALICE)
    approve_change(project, proposal.id, person="carol")
    clean = CliRunner().invoke(cli, ["audit", "check"], env=env)
    assert clean.exit_code == 0 and "hint:" not in clean.output


def test_a_ci_commit_that_is_more_than_evidence_is_found(repo):
    """The CI's commits reach the branch without review (the deploy key bypasses protection):
    one that edits the pipelines or the tool changed what judges changes, and no finding said
    so (`unauthorized-change` sees desired state only; on github.com the pushed workflow may
    have dropped its own records-only check)."""
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    record, _ = _run(project, change_id)
    assert audit_check(project, now=LATER).findings == []  # evidence: nothing to say
    workflow = project.root / ".github" / "workflows" / "apply.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text("name: apply\n")
    edit = commit_paths(project.root, [workflow], "Run records", **CI)
    git(project.root, "rm", "-q", str(record))
    as_ci = {f"GIT_{who}_{key}": CI[key.lower()] for who in ("AUTHOR", "COMMITTER")
             for key in ("NAME", "EMAIL")}  # fmt: skip
    git(project.root, "commit", "-q", "--no-gpg-sign", "-m", "Tidy", env=as_ci)
    gone = head(project.root)
    found = [f for f in audit_check(project, now=LATER).findings
             if f.rule == "ci-commit-beyond-evidence"]  # fmt: skip
    assert [(f.commits, f.file, f.severity) for f in found] == [
        ((edit,), ".github/workflows/apply.yml", "high"),
        # the audit names a change's file by its key (its flat form), whichever layout holds it
        ((gone,), flat_form(record.relative_to(project.root).as_posix()), "high"),
    ]
    assert "added .github/workflows/apply.yml" in found[0].message
    assert "ci@example.org" in found[0].message and "deleted" in found[1].message


def test_commits_no_rule_reads_are_counted_and_what_follows_them_still_judged(repo):
    """The history is streamed and only commits a rule reads are kept: a note by a person is
    dropped (counted), a note committed by the CI identity is kept and found."""
    project, _, _ = repo
    before = audit_check(project, now=LATER).commits_read
    note = project.root / "notes.md"
    for number in range(3):
        note.write_text(f"note {number}\n")
        commit_paths(project.root, [note], f"Note {number}", **ALICE)
    note.write_text("by CI\n")
    by_ci = commit_paths(project.root, [note], "Note by CI", **CI)
    path = _edit_role(project)
    edit = commit_paths(project.root, [path], "Role edit", name="Eve", email="eve@example.org")
    result = audit_check(project, now=LATER)
    assert result.commits_read == before + 5
    assert _rules(result) == sorted(
        [("ci-commit-beyond-evidence", by_ci[:10]), ("unauthorized-change", edit[:10])]
    )
