"""Keys and stored paths of changes/, never taken for each other (task kp), on real git repos.

A change's file has two names (layout.py): its key, the flat form `changes/<ID>/<file>` that
manifests, statements and findings use, and its stored path, where it lies now (the block
folder `changes/<KIND>-<n>xx/<ID>/` of every new change, or a legacy flat folder). Each test
is one place that opened, compared or showed the one where the other was meant, in either
layout, committed or not, and across `change migrate-layout`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from opsledger.audit import audit_check
from opsledger.changes import load_withdrawal, withdraw_change
from opsledger.cli import cli
from opsledger.content import repository_content
from opsledger.decide import decide
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git
from opsledger.joblog import LOG_SUFFIX, read_job_log
from opsledger.layout import (
    REQUEST,
    RUNS,
    WITHDRAWN,
    block_folder,
    flat_folder,
    flat_form,
    stored_file,
)
from opsledger.migrate import migrate_layout
from opsledger.origin_records import OriginRecords
from opsledger.project import Project
from opsledger.readguard import outside_content
from opsledger.reconcile import reconcile_runs
from opsledger.records import read_runs, stamp
from opsledger.signoff import approve_change

from .conftest import LOCAL_RUNBOOK, legacy_layout, record_run
from .test_apply_faults import _start, _steps, _wait_for
from .test_bypasses import INSIDE, approve, as_env, failed
from .test_migrate_layout import LATER, as_dave, legacy  # noqa: F401 (fixtures)

# --- readguard: what a run read is judged by its key -----------------------------------------


def test_a_run_reading_its_own_request_where_it_lies_reads_nothing_outside_the_content(repo):
    """apply's read watch named a change's own change.yml, read in its block folder, as a file
    "outside the approved content": the manifest holds it under its key (flat form)."""
    project, change_id, _ = repo
    root = project.root
    content = repository_content(project, change_id)
    request = stored_file(root, change_id, REQUEST)
    assert request.startswith("changes/CHG-00xx/")
    statement = next((block_folder(root, change_id) / "approvals" / "alice").iterdir())
    opened = {str(root / request), str(statement)}
    # its own request is content; its statement (bookkeeping) is still outside it
    assert outside_content(project, content, opened) == [statement.relative_to(root).as_posix()]


# --- content: a symlink to a block folder leads into other changes' bookkeeping --------------


@pytest.mark.parametrize("target", ["changes/CHG-01xx", "changes/CHG-01xx/CHG-0100"])
def test_a_symlink_to_another_block_or_change_folder_is_refused(repo, target):
    """A block folder holds other changes' folders (bookkeeping anyone may commit): a symlink
    to it is one to bookkeeping, as one to `changes/CHG-0100` is in the flat layout."""
    project, change_id, _ = repo
    root = project.root
    other = root / "changes" / "CHG-01xx" / "CHG-0100"
    other.mkdir(parents=True)
    (other / "notes.yml").write_text("x: 1\n")
    link = root / "roles" / "peek"
    os.symlink(os.path.relpath(root / target, link.parent), link)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Peek", env=as_env("alice"))
    with pytest.raises(OpsledgerError, match="bookkeeping, not content"):
        repository_content(project, change_id)


# --- a withdrawal is final in either layout ---------------------------------------------------


def _ignore_local_state(project):
    """`.opsledger/` ignored as the project's .gitignore has it (the migration wants a clean
    tree), without a commit that would change the content."""
    (project.root / ".git" / "info" / "exclude").write_text(".opsledger/\n")


def test_a_withdrawal_deleted_before_the_move_to_the_block_still_stands(legacy, as_dave):  # noqa: F811
    """load_withdrawal read the history of the folder the change lies in now: withdrawn in the
    flat layout, deleted, then moved by `change migrate-layout`, the change came back."""
    project, approved, _ = legacy
    root = project.root
    _ignore_local_state(project)
    withdraw_change(project, approved, person="carol", reason="Superseded")
    flat = flat_folder(root, approved) / WITHDRAWN
    assert flat.is_file()
    git(root, "rm", "-q", str(flat))
    git(root, "commit", "-q", "-m", "Tidy up", env=as_env("alice"))
    migrate_layout(project)
    assert not flat_folder(root, approved).exists()
    withdrawal = load_withdrawal(project, approved)
    assert withdrawal is not None and withdrawal.person == "carol"
    assert withdrawal.reason == "Superseded"
    assert "withdrawn" in failed(decide(project, approved, now=INSIDE))


def test_a_withdrawal_moved_to_the_block_names_the_withdrawer_and_where_it_lies(legacy, as_dave):  # noqa: F811
    project, approved, _ = legacy
    root = project.root
    _ignore_local_state(project)
    withdraw_change(project, approved, person="carol", reason="Superseded")
    migrate_layout(project)
    withdrawal = load_withdrawal(project, approved)
    assert withdrawal is not None
    assert (withdrawal.person, withdrawal.reason) == ("carol", "Superseded")
    assert withdrawal.path == block_folder(root, approved) / WITHDRAWN


# --- change show --json: a path a person can open, the key where it says key -----------------


def _shown(project, change_id):
    result = CliRunner().invoke(
        cli, ["change", "show", change_id, "--json"], env={"OPSLEDGER_PROJECT": str(project.root)}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _assert_paths_lie_on_disk(project, change_id, shown):
    root = project.root
    folder = stored_file(root, change_id)
    assert shown["folder"] == folder and (root / folder / REQUEST).is_file()
    assert shown["statements"]
    for statement in shown["statements"]:
        assert statement["path"].startswith(folder + "/")
        assert (root / statement["path"]).is_file(), statement["path"]
        assert statement["key"] == flat_form(statement["path"])
        assert statement["key"].startswith(f"changes/{change_id}/approvals/")


def test_change_show_names_where_a_statement_lies_and_its_key_in_the_block_layout(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    shown = _shown(project, change_id)
    assert shown["folder"].startswith("changes/CHG-00xx/")
    _assert_paths_lie_on_disk(project, change_id, shown)


def test_change_show_names_where_a_statement_lies_flat_and_after_the_move(legacy, as_dave):  # noqa: F811
    project, approved, _ = legacy
    _ignore_local_state(project)
    before = _shown(project, approved)
    assert before["folder"] == f"changes/{approved}"
    _assert_paths_lie_on_disk(project, approved, before)
    migrate_layout(project)
    after = _shown(project, approved)
    assert after["folder"] == f"changes/CHG-00xx/{approved}"
    _assert_paths_lie_on_disk(project, approved, after)
    assert [s["key"] for s in after["statements"]] == [s["key"] for s in before["statements"]]
    assert after["content_sha256"] == before["content_sha256"]


# --- evidence written after a move lands in the block folder ---------------------------------

GATE_PLAYBOOK = """\
---
- name: Wait for the test's go
  hosts: all
  gather_facts: false
  vars:
    steps_dir: "{{ playbook_dir }}/../../steps"
  tasks:
    - name: Say it started
      ansible.builtin.file:
        path: "{{ steps_dir }}/{{ inventory_hostname }}-started"
        state: touch
        mode: "0644"
    - name: Wait for the go
      ansible.builtin.wait_for: {path: "{{ steps_dir }}/go", timeout: 120}
"""


def test_a_run_whose_change_migrate_layout_moved_records_itself_in_the_block(
    local_repo, monkeypatch
):
    """apply chose its final record's path before the run: `change migrate-layout` moving the
    change meanwhile (the write-ahead record committed, the tree clean) made it write the
    record into a new flat folder beside the block one, an id in both layouts every reader
    refuses."""
    project, request = local_repo
    root = project.root
    folder = root / "runbooks" / "gate"
    folder.mkdir()
    (folder / "runbook.yml").write_text(LOCAL_RUNBOOK.replace("Local steps", "Gate"))
    (folder / "playbook.yml").write_text(GATE_PLAYBOOK)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Gate runbook", env=as_env("alice"))
    with legacy_layout(monkeypatch):
        change_id = request(runbook="gate")
    assert flat_folder(root, change_id).is_dir()
    approve_change(project, change_id, person="bob")
    apply = _start(project, "apply", change_id, "--skip-verify")
    try:
        _wait_for(lambda: "lab-db1-started" in _steps(project), what="the run to start")
        assert migrate_layout(project).moves == [
            (f"changes/{change_id}", f"changes/CHG-00xx/{change_id}")
        ]
        (root / "steps" / "go").touch()
        out, err = apply.communicate(timeout=180)
    finally:
        apply.kill()
    assert apply.returncode == 0, out + err
    assert not flat_folder(root, change_id).exists()
    assert git(root, "status", "--porcelain").stdout == ""
    (record,) = read_runs(project).committed
    assert record.result == "success"
    (final,) = (block_folder(root, change_id) / "runs").glob("*Z.json")
    assert final.name.endswith("Z.json")


# --- a claim on an origin that moved the change to its block ----------------------------------

EARLIER = "runs/20261201T190000Z.json"
STARTED = "runs/20261202T200000Z.started.json"


def _git_as_ci(monkeypatch):
    for key, value in as_env("ci").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPSLEDGER_COMMITTER_NAME", "opsledger CI")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_EMAIL", "ci@example.org")


def test_a_claim_on_an_origin_that_moved_the_change_to_its_block_is_not_lost(tmp_path, monkeypatch):
    """The origin moved CHG-0001 to its block (`change migrate-layout`) after this runner
    pulled. Its earlier run's record then lay under another path, the same key and bytes, and
    the claim took it for another controller's run (exit 4: nothing ran); rebased, the new
    write-ahead record stayed in the flat folder (a conflict, or the change in both layouts)."""
    _git_as_ci(monkeypatch)
    seed = tmp_path / "seed"
    flat = seed / "changes" / "CHG-0001"
    (flat / "runs").mkdir(parents=True)
    (flat / "change.yml").write_text("title: x\n")
    (flat / EARLIER).write_text('{"kind": "run", "result": "success"}\n')
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "CHG-0001 and its first run")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))
    runner = tmp_path / "runner"
    git(tmp_path, "clone", "-q", str(origin), str(runner))
    # the origin moves the change meanwhile
    (seed / "changes" / "CHG-00xx").mkdir()
    git(seed, "mv", "changes/CHG-0001", "changes/CHG-00xx/")
    git(seed, "commit", "-q", "-m", "Move into the block")
    git(seed, "push", "-q", str(origin), "main")
    # the runner writes its write-ahead record where the change lies in its clone: flat
    started = runner / "changes" / "CHG-0001" / STARTED
    started.write_text('{"kind": "run", "result": "started"}\n')
    git(runner, "add", "-A")
    git(runner, "commit", "-q", "-m", "Run CHG-0001: started")

    OriginRecords.of(Project(runner), "origin").claim("CHG-0001", started)

    held = git(origin, "ls-tree", "-r", "--name-only", "main").stdout.split()
    assert held == [
        "changes/CHG-00xx/CHG-0001/change.yml",
        f"changes/CHG-00xx/CHG-0001/{EARLIER}",
        f"changes/CHG-00xx/CHG-0001/{STARTED}",
    ]
    assert not flat_folder(runner, "CHG-0001").exists()
    assert (block_folder(runner, "CHG-0001") / STARTED).is_file()


# --- a move staged by hand is no uncommitted run --------------------------------------------


def test_a_run_record_moved_by_hand_and_staged_is_not_committed_again(legacy):  # noqa: F811
    """`git mv changes/CHG-0003 changes/CHG-00xx/` staged, not committed (as a fix line
    suggests for a folder in the wrong place): its run record on disk lay under another path
    than HEAD's, so it read as uncommitted, and the next command committed it alone — the
    block copy beside the flat one still in HEAD, the change in both layouts."""
    project, _, ran = legacy
    root = project.root
    _ignore_local_state(project)
    git(root, "mv", f"changes/{ran}", "changes/CHG-00xx/")  # CHG-0001 lives there already
    tip = git(root, "rev-parse", "HEAD").stdout
    assert read_runs(project).uncommitted == []
    done = reconcile_runs(project)
    assert (done.committed, done.problems) == ([], [])
    assert git(root, "rev-parse", "HEAD").stdout == tip


# --- audit check: a move not yet committed is no edit of evidence ----------------------------


@pytest.mark.parametrize("how", ["git mv", "mv"])
def test_a_move_to_the_block_not_yet_committed_is_no_edited_evidence(legacy, how):  # noqa: F811
    """Moved by hand (staged, or not even staged), a run record read as "changed in the
    working tree" (evidence-edited, critical): the same bytes under the same key are no edit."""
    project, _, ran = legacy
    root = project.root
    if how == "git mv":
        git(root, "mv", f"changes/{ran}", "changes/CHG-00xx/")
    else:
        os.rename(flat_folder(root, ran), block_folder(root, ran))
    assert audit_check(project, now=LATER).findings == []
    (record,) = (block_folder(root, ran) / "runs").glob("*Z.json")
    record.write_text(record.read_text().replace('"success"', '"failed"'))
    findings = audit_check(project, now=LATER).findings
    assert [(f.rule, f.file) for f in findings] == [
        ("evidence-edited", f"changes/{ran}/runs/{record.name}")
    ]


# --- a job log is found in HEAD whichever layout the working tree shows ----------------------


def test_a_job_log_is_read_from_head_while_a_move_is_staged(legacy):  # noqa: F811
    """read_job_log asked HEAD for the log at the path of the folder on disk: with a move to
    the block staged, HEAD still holds it flat, and the run "has no committed job log"."""
    project, _, ran = legacy
    root = project.root
    started = dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.UTC)
    name = f"{stamp(started)}{LOG_SUFFIX}"
    data = gzip.compress(b'{"phase": "run", "message": "ran"}\n')
    log = flat_folder(root, ran) / RUNS / name
    log.write_bytes(data)
    git(root, "add", "--", str(log))
    git(root, "commit", "-q", "-m", "Log", env=as_env("ci"))
    record_run(
        project,
        ran,
        started,
        runner={"run": f"{ran}/{stamp(started)}"},
        log={"file": name, "sha256": hashlib.sha256(data).hexdigest()},
    )
    git(root, "mv", f"changes/{ran}", "changes/CHG-00xx/")
    (found,) = read_job_log(project, ran)
    assert found.verified and found.entries == [{"phase": "run", "message": "ran"}]
    assert found.log == f"changes/CHG-00xx/{ran}/runs/{name}"  # where it lies
    assert (root / found.log).is_file()
