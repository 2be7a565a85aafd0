"""audit log from git history on real repos: rows, signatures, formats round-trip."""

from __future__ import annotations

import datetime as dt
import json

from click.testing import CliRunner

from opsledger.approvals import allowed_signers
from opsledger.audit import audit_log, parse_csv, render_log
from opsledger.changes import load_change
from opsledger.cli import cli
from opsledger.gitlog import read_history
from opsledger.gitrepo import commit_paths, git, head
from opsledger.layout import flat_form
from opsledger.policy.bundle import load_policies
from opsledger.records import Record, run_record_path, write_record
from opsledger.signoff import approve_change, subject

from .conftest import START


def _record(project, change_id, result="success", approvers=("carol",)):
    """A run record as apply writes it (apply itself is tested against the lab)."""
    started = START + dt.timedelta(minutes=10)
    record = Record(
        kind="run",
        environment="lab",
        result=result,
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=3)).isoformat(),
        change=change_id,
        runbook="converge",
        params=load_change(project, change_id).params,
        content_sha256=subject(project, change_id)[1].sha256,
        runner={"person": "ci"},
        git_commit=head(project.root),
        decision={"allowed": True, "approvers": list(approvers)},
        verification={"status": "passed"},
    )
    path = write_record(run_record_path(project, change_id, started), record)
    commit_paths(
        project.root, [path], f"Run {change_id}: {result}", name="CI", email="ci@example.org"
    )  # as CI: only CI's records are evidence


def test_history_is_read_in_one_stream_with_files_and_signatures(repo):
    project, change_id, keys = repo
    approve_change(project, change_id, person="carol", signing_key=keys["carol"], now=START)
    bob = approve_change(project, change_id, person="bob", now=START)
    policies, _ = load_policies(project)
    (project.root / "notes.md").write_text("signed by carol\n")
    signed = commit_paths(
        project.root,
        [project.root / "notes.md"],
        "Note",
        name="Carol Chen",
        email="carol@example.org",
        signing_key=keys["carol"],
    )
    commits = read_history(project, allowed_signers=allowed_signers(policies))
    assert [c.subject.split(" ")[0] for c in commits] == [
        "Initial",
        "Request",
        "Approve",
        "Approve",
        "Note",
    ]
    assert commits[0].parents == () and commits[1].parents == (commits[0].sha,)
    note, unsigned = commits[4], commits[3]
    assert note.sha == signed and note.signature == "G" and note.signer == "carol@example.org"
    assert unsigned.signature == "N"
    relative = str(bob.path.relative_to(project.root))
    ((status, path, blob),) = [(f.status, f.path, f.blob) for f in unsigned.files]
    assert (status, path) == ("A", flat_form(relative))  # a change's file: named by its key
    assert blob == git(project.root, "rev-parse", f"HEAD:{relative}").stdout.strip()
    assert read_history(project, paths=("policies/",))[0].sha == commits[0].sha


def test_audit_log_row_comes_from_history_and_the_run_record(repo):
    project, change_id, keys = repo
    approve_change(project, change_id, person="carol", signing_key=keys["carol"], now=START)
    _record(project, change_id)
    (row,) = audit_log(project).rows
    assert (row.change, row.type, row.requester, row.result) == (
        change_id,
        "normal",
        "alice",
        "success",
    )
    assert row.priority == "P4" and row.verification == "passed" and row.review == "n/a"
    (approver,) = row.approvers
    assert approver.person == "carol" and approver.signature == "good" and approver.counted
    assert approver.author == "carol@example.org"
    assert row.applied_by == "ci" and len(row.commits) == 3
    assert audit_log(project, environment="staging").rows == []
    assert audit_log(project, change_type="emergency").rows == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert audit_log(project, since=later).rows == []


def test_csv_and_json_round_trip(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    log = audit_log(project)
    rows = parse_csv(render_log(log, "csv"))
    assert rows == [{k: str(v) for k, v in r.flat().items()} for r in log.rows]
    data = json.loads(render_log(log, "json"))
    assert data[0]["approvers"][0]["person"] == "bob"
    assert data[0]["result"] == "not applied"
    assert "<table>" in render_log(log, "html") and "| change |" in render_log(log, "md")


def test_audit_log_cli(repo):
    project, change_id, _ = repo
    result = CliRunner().invoke(
        cli, ["audit", "log", "--format", "csv"], env={"OPSLEDGER_PROJECT": str(project.root)}
    )
    assert result.exit_code == 0, result.output
    assert parse_csv(result.output)[0]["change"] == change_id
    bad = CliRunner().invoke(
        cli, ["audit", "log", "--since", "yesterday"], env={"OPSLEDGER_PROJECT": str(project.root)}
    )
    assert bad.exit_code == 2 and "--since" in bad.output


def test_an_approval_no_run_has_weighed_is_not_called_not_counted(repo):
    """Before the change runs nothing has counted or discounted an approval: the log must not
    say "(not counted)" of a valid approval a manager is about to rely on."""
    project, change_id, keys = repo
    approve_change(project, change_id, person="carol", signing_key=keys["carol"], now=START)
    (row,) = audit_log(project).rows
    (approver,) = row.approvers
    assert approver.counted is None and approver.label() == "carol [good]"
    _record(project, change_id)
    (row,) = audit_log(project).rows
    assert row.approvers[0].counted is True
