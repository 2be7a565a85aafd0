"""The fast audit finds what the audit found before it was made fast (#16.4).

One history holds a case of each finding kind; audit check's findings and audit log's rows on
it are compared with those the previous implementation (two `git log` streams, PyYAML's
constructor, jsonschema's walk for every file, nothing read ahead) gave on the same history,
recorded below with commits named by their place in the history and times left out where the
clock sets them."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import yaml

from opsledger.audit import audit_check, audit_log, render_log
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder
from opsledger.records import Record, run_record_path, write_record
from opsledger.signoff import approve_change, request_change, sign_off

from .conftest import START, legacy_layout
from .test_compliance import ALICE, CI, LATER, _edit_role, _run


def _request(project, title, **fields):
    change, _ = request_change(
        project,
        title=title,
        runbook="converge",
        requested_by="alice",
        reason="A case for the audit to find",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
        now=START - dt.timedelta(hours=1),
        **fields,
    )
    commit_paths(project.root, [change.file.parent], f"Request {change.id}", **ALICE)
    return change.id


def _history(project, first, keys):
    """Each finding kind once (and a clean change), in one history."""
    root = project.root
    # clean: approved, run in its window
    approve_change(project, first, person="bob", now=START)
    _run(project, first)
    # evidence-edited: a run record rewritten by someone else
    edited = _request(project, "Record edited afterwards")
    approve_change(project, edited, person="bob", now=START)
    path, _ = _run(project, edited)
    path.write_text(path.read_text().replace('"success"', '"failed"'))
    commit_paths(root, [path], "Fix typo", name="Mallory", email="m@example.org")
    # evidence-edited: a statement deleted
    deleted = _request(project, "Statement deleted afterwards")
    result = approve_change(project, deleted, person="bob", now=START)
    git(root, "rm", "-q", str(result.path.relative_to(root)))
    git(root, "-c", "user.name=X", "-c", "user.email=x@example.org", "commit", "-qm", "rm")
    # approval-by-requester, approval-by-stranger (committed by another; not in people.yml)
    strangers = _request(project, "Approved by the wrong people")
    sign_off(project, strangers, person="alice", now=START)
    carol = sign_off(project, strangers, person="carol", commit=False, now=START)
    commit_paths(root, [carol.path], "Approve", name="Bob", email="bob@example.org")
    mallory = carol.path.parent.parent / "mallory" / carol.path.name
    mallory.parent.mkdir()
    mallory.write_text(carol.path.read_text().replace("person: carol", "person: mallory"))
    commit_paths(root, [mallory], "Approve", name="M", email="mallory@example.org")
    # applied-without-quorum, applied-outside-window
    _run(project, _request(project, "Run without approval"), started=START + dt.timedelta(hours=3))
    # evidence-forged: a second run of content nobody requested
    forged = _request(project, "Run of other content")
    approve_change(project, forged, person="bob", now=START)
    path, _ = _run(project, forged)
    data = json.loads(path.read_text())
    later = START + dt.timedelta(minutes=30)
    record = Record.from_dict({**data, "content_sha256": "0" * 64, "started_at": later.isoformat()})
    second = write_record(run_record_path(project, forged, later), record)
    commit_paths(root, [second], "Run again", **CI)
    # review-missing: an emergency run without its review
    emergency = _request(project, "Emergency without review", change_type="emergency")
    approve_change(project, emergency, person="dave", now=START)
    _run(project, emergency, approvers=("dave",))
    # unsigned: where signatures are required
    unsigned = _request(project, "Unsigned in staging", environment="staging")
    sign_off(project, unsigned, person="bob", now=START)
    approve_change(project, unsigned, person="carol", signing_key=keys["carol"], now=START)
    # change-not-applied: requested with a desired-state edit, never run
    role = _edit_role(project)
    change, _ = request_change(
        project,
        title="Tune PostgreSQL defaults",
        runbook="converge",
        requested_by="alice",
        reason="Defaults for the new hosts",
        targets="db",
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
        now=START - dt.timedelta(hours=1),
    )
    commit_paths(root, [role, change.file.parent], "Request", **ALICE)
    # unreadable: a committed change broken afterwards
    broken = _request(project, "Broken afterwards")
    file = change_folder(root, broken) / "change.yml"
    file.write_text(file.read_text() + "title: twice\n")
    commit_paths(root, [file], "Edit", **ALICE)
    # unauthorized-change, directly and through a merge
    commit_paths(root, [_edit_role(project, "# quick\n")], "Quick fix", name="Eve", email="e@x.org")
    git(root, "checkout", "-q", "-b", "feature")
    commit_paths(root, [_edit_role(project, "# branch\n")], "Branch", name="Eve", email="e@x.org")
    git(root, "checkout", "-q", "main")
    who = ["-c", "user.name=M", "-c", "user.email=m@example.org"]
    git(root, *who, "merge", "-q", "--no-ff", "-m", "Merge feature", "feature")
    # ci-commit-beyond-evidence
    workflow = root / ".github" / "workflows" / "apply.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text("name: apply\n")
    commit_paths(root, [workflow], "Run records", **CI)
    # waiver-expired (working tree), a record nobody committed
    waivers = root / "policies" / "waivers.yml"
    data = yaml.safe_load(waivers.read_text())
    data["waivers"][0]["expires"] = dt.date(2026, 1, 1)
    waivers.write_text(yaml.safe_dump(data))
    loose = run_record_path(project, first, START + dt.timedelta(hours=1))
    write_record(loose, Record.from_dict({**json.loads(path.read_text()), "change": first}))


def _named(project):
    """Each commit id (and its 10-character form) to its place in the history."""
    shas = git(project.root, "rev-list", "--reverse", "--topo-order", "HEAD").stdout.split()
    return {sha: f"@{i}" for i, sha in enumerate(shas)}


def _plain(text, names, root):
    text = text.replace(str(root), "<root>")
    text = re.sub(r"\b[0-9a-f]{40}\b", lambda m: names.get(m.group(), "@?"), text)
    short = {sha[:10]: name for sha, name in names.items()}
    return re.sub(r"\b[0-9a-f]{10}\b", lambda m: short.get(m.group(), m.group()), text)


def test_findings_and_log_rows_are_those_of_the_previous_audit(repo, monkeypatch):
    project, first, keys = repo
    # The history as an opsledger before the block layout wrote it (changes/<ID>/), beside the
    # fixture's CHG-0001 in its block: both layouts read, the same findings byte for byte (a
    # finding names a change's file by its key; only a message quoting a disk path differs).
    with legacy_layout(monkeypatch):
        _history(project, first, keys)
    root = project.root
    names = _named(project)
    findings = sorted(
        _plain(f"{f.rule} {f.severity} {f.file} {f.change} {f.message} {f.commits}", names, root)
        for f in audit_check(project, now=LATER).findings
    )
    rows = json.loads(render_log(audit_log(project), "json"))
    for row in rows:
        row["requested_at"] = bool(row["requested_at"])  # the commit's time: the clock's
        for approver in row["approvers"]:
            approver["at"] = bool(approver["at"])
    log = json.loads(_plain(json.dumps(rows, sort_keys=True), names, root))
    assert {f.split()[0] for f in findings} >= KINDS
    before = json.loads(BEFORE.read_text())
    assert findings == before["findings"]
    assert log == before["log"]


KINDS = {
    "evidence-edited",
    "evidence-forged",
    "approval-by-requester",
    "approval-by-stranger",
    "applied-without-quorum",
    "applied-outside-window",
    "review-missing",
    "unsigned",
    "change-not-applied",
    "change-unreadable",
    "unauthorized-change",
    "ci-commit-beyond-evidence",
    "waiver-expired",
}
# recorded by running `_history` and the normalisation below on the code of dd40d4b
BEFORE = Path(__file__).parent / "data" / "audit_before_16_4.json"
