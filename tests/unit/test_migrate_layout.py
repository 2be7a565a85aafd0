"""`change migrate-layout` and the two layouts of changes/ on real git repositories.

A legacy repository is made the way an opsledger before the block layout wrote it: every
change's file in `changes/<ID>/` (layout.block_folder patched to the flat folder while the
change is requested, approved and run). Then the migration moves it; what must hold is that
nothing a move cannot change changes: the content hash, the approvals, the run evidence.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from opsledger.approvals import collect
from opsledger.audit import audit_check
from opsledger.base import resolve_base
from opsledger.changes import change_ids
from opsledger.ci import pr_scope
from opsledger.cli import cli
from opsledger.commitlock import commit_lock
from opsledger.content import repository_content
from opsledger.decide import decide
from opsledger.errors import OpsledgerError
from opsledger.evidence import run_evidence
from opsledger.gitrepo import commit_paths, git, head
from opsledger.layout import APPROVALS, change_pathspecs, is_flat_change_folder
from opsledger.migrate import migrate_layout
from opsledger.signoff import approve_change

from .badinput import assert_refused, tree_state
from .conftest import START, legacy_layout
from .test_compliance import _run
from .test_decide import request

INSIDE = START + dt.timedelta(minutes=30)
LATER = START + dt.timedelta(days=1)
ALICE = {"name": "Alice Arnold", "email": "alice@example.org"}
CI = {"name": "opsledger CI", "email": "ci@example.org"}


@pytest.fixture
def as_dave(monkeypatch):
    """git's own identity for the migration's commit (made like any branch commit): dave,
    who requested and approved nothing, so nothing he moved may count as his."""
    for key, value in _env({"name": "Dave Dahl", "email": "dave@example.org"}).items():
        monkeypatch.setenv(key, value)


def _request(project, title):
    return request(project, title=title, now=START - dt.timedelta(hours=1))


@pytest.fixture
def legacy(repo, monkeypatch):
    """The repo with CHG-0002 (approved) and CHG-0003 (approved and run) in the flat layout."""
    project, _, _ = repo
    with legacy_layout(monkeypatch):
        approved = _request(project, "Approved, not run")
        approve_change(project, approved, person="bob", now=START)
        ran = _request(project, "Approved and run")
        approve_change(project, ran, person="bob", now=START)
        _run(project, ran)
    for change_id in (approved, ran):
        assert (project.root / "changes" / change_id / "change.yml").is_file()
        assert (project.root / "changes" / change_id / "approvals" / "bob").is_dir()
    assert (approved, ran) == ("CHG-0002", "CHG-0003")
    return project, approved, ran


def test_both_layouts_are_read_side_by_side(legacy):
    project, approved, _ = legacy
    assert change_ids(project) == ["CHG-0001", "CHG-0002", "CHG-0003"]
    assert (project.root / "changes" / "CHG-00xx" / "CHG-0001" / "change.yml").is_file()
    assert decide(project, approved, now=INSIDE).allowed
    assert decide(project, "CHG-0001", now=INSIDE).allowed is False  # not approved
    assert audit_check(project, now=LATER).findings == []


def test_migration_moves_every_flat_folder_in_one_commit_and_voids_nothing(legacy, as_dave):
    project, approved, ran = legacy
    root = project.root
    before = {c: repository_content(project, c) for c in (approved, ran)}
    decision = decide(project, approved, now=INSIDE)
    assert decision.allowed
    tip = head(root)

    done = migrate_layout(project)

    assert done.moves == [
        ("changes/CHG-0002", "changes/CHG-00xx/CHG-0002"),
        ("changes/CHG-0003", "changes/CHG-00xx/CHG-0003"),
    ]
    assert done.commit == head(root) and git(root, "rev-parse", "HEAD^").stdout.strip() == tip
    assert _status(root) == ""
    renamed = git(root, "show", "-M", "--name-status", "--format=", "HEAD").stdout.split("\n")
    assert all(line.startswith("R100\t") for line in renamed if line), renamed
    assert not (root / "changes" / approved).exists()
    assert (root / "changes" / "CHG-00xx" / ran / "runs").is_dir()
    # the same bytes under the same keys: the same hashes, the approvals still hold
    after = {c: repository_content(project, c) for c in (approved, ran)}
    assert after == before
    again = decide(project, approved, now=INSIDE)
    assert again.allowed and again.approvers == ["bob"]
    assert again.content_sha256 == decision.content_sha256
    # the move is no evidence deleted, no record added and no statement introduced by the mover
    assert audit_check(project, now=LATER).findings == []
    (evidence,) = run_evidence(project, resolve_base(project, "HEAD"))
    assert evidence.trusted and evidence.path == f"changes/{ran}/runs/{evidence.path[-21:]}"
    folders = tuple(f"{p}/" for p in change_pathspecs(approved, APPROVALS))
    versions = collect(project, folders, ["HEAD"])
    introducers = {i.author for f in versions for i in f.introduced_by}
    assert introducers == {"alice@example.org", "bob@example.org"}
    assert all(f.path.startswith(f"changes/{approved}/approvals/") for f in versions)
    # idempotent: nothing left to move, no second commit
    assert migrate_layout(project).moves == [] and head(root) == done.commit


def test_a_dirty_tree_or_an_id_in_both_layouts_is_refused_and_nothing_moves(legacy, as_dave):
    project, approved, _ = legacy
    root = project.root
    tip = head(root)
    (root / "changes" / approved / "notes.txt").write_text("draft\n")
    with pytest.raises(OpsledgerError) as err:
        migrate_layout(project)
    assert err.value.exit_code == 2
    assert "changes/CHG-0002/notes.txt: git: not committed" in str(err.value)
    (root / "changes" / approved / "notes.txt").unlink()
    copy = root / "changes" / "CHG-00xx" / approved
    copy.mkdir(parents=True)
    (copy / "change.yml").write_bytes((root / "changes" / approved / "change.yml").read_bytes())
    commit_paths(root, [copy], "A copy in the block", **ALICE)
    with pytest.raises(OpsledgerError) as err:
        migrate_layout(project)
    assert "CHG-0002 is in both layouts" in str(err.value)
    assert head(root) != tip and (root / "changes" / approved).is_dir()  # nothing moved
    # every reader refuses the duplicate: which folder is the change?
    result = CliRunner().invoke(
        cli, ["change", "validate", approved], env={"OPSLEDGER_PROJECT": str(root)}
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "changes/CHG-0002" in line and "changes/CHG-00xx/CHG-0002" in line


def test_a_change_in_the_wrong_block_is_refused(legacy):
    project, _, _ = legacy
    root = project.root
    wrong = root / "changes" / "CHG-05xx" / "CHG-0123"
    wrong.mkdir(parents=True)
    (wrong / "change.yml").write_text("id: CHG-0123\n")
    with pytest.raises(OpsledgerError) as err:
        change_ids(project)
    assert err.value.exit_code == 2
    assert str(err.value).startswith(
        "changes/CHG-05xx/CHG-0123: layout: CHG-0123 belongs in changes/CHG-01xx/CHG-0123"
    )


def test_a_dry_run_lists_the_moves_and_moves_nothing(legacy):
    project, _, _ = legacy
    tip = head(project.root)
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    result = CliRunner().invoke(cli, ["change", "migrate-layout", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "changes/CHG-0002 -> changes/CHG-00xx/CHG-0002",
        "changes/CHG-0003 -> changes/CHG-00xx/CHG-0003",
        "2 change folders would move (dry run: nothing moved)",
    ]
    shown = CliRunner().invoke(cli, ["change", "migrate-layout", "--dry-run", "--json"], env=env)
    assert json.loads(shown.stdout)["moves"][0] == {
        "from": "changes/CHG-0002",
        "to": "changes/CHG-00xx/CHG-0002",
    }
    assert head(project.root) == tip and (project.root / "changes" / "CHG-0002").is_dir()


def test_a_move_that_changes_the_bytes_is_an_edit(legacy):
    """Moving a run record to the block is nothing; moving it with other bytes is an edit."""
    project, _, ran = legacy
    root = project.root
    (record,) = (root / "changes" / ran / "runs").glob("*.json")
    block = root / "changes" / "CHG-00xx" / ran
    block.parent.mkdir(parents=True, exist_ok=True)
    git(root, "mv", f"changes/{ran}", str(block))
    moved = block / "runs" / record.name
    moved.write_text(moved.read_text().replace('"success"', '"failed"'))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Move, and rewrite history", env=_env(ALICE))
    findings = audit_check(project, now=LATER).findings
    assert [(f.rule, f.file) for f in findings] == [
        ("evidence-edited", f"changes/{ran}/runs/{record.name}")
    ]


def _env(who):
    return {
        "GIT_AUTHOR_NAME": who["name"],
        "GIT_AUTHOR_EMAIL": who["email"],
        "GIT_COMMITTER_NAME": who["name"],
        "GIT_COMMITTER_EMAIL": who["email"],
    }


def test_the_migration_pr_touches_no_change_but_an_edit_in_the_move_does(legacy, as_dave):
    """ci pr judges what a branch changes: a pure move changes nothing (no 10,000 changes to
    validate, decide and plan again); a move that edits a request is that change's edit."""
    project, approved, _ = legacy
    root = project.root
    git(root, "checkout", "-q", "-b", "migrate")
    migrate_layout(project)
    scope = pr_scope(project, "main")
    assert (scope.files, scope.changes, scope.stray) == ([], [], [])
    request = root / "changes" / "CHG-00xx" / approved / "change.yml"
    request.write_text(request.read_text().replace("Approved, not run", "Renamed in the move"))
    commit_paths(root, [request], "Rename", **ALICE)
    scope = pr_scope(project, "main")
    assert scope.changes == [approved] and scope.stray == []
    assert scope.files == [
        f"changes/{approved}/change.yml",
        f"changes/CHG-00xx/{approved}/change.yml",
    ]


def _status(root):
    """git status but the checkout's machine-local folder (the commit lock's empty file, which
    this test project's .gitignore does not name)."""
    return git(root, "status", "--porcelain", "-uall", "--", ".", ":(exclude).opsledger").stdout


def _migrate_cli(root):
    return CliRunner().invoke(
        cli, ["change", "migrate-layout"], env={"OPSLEDGER_PROJECT": str(root)}
    )


def test_a_migration_killed_half_way_is_finished_by_running_it_again(legacy, as_dave):
    """kill -9 between two blocks' `git mv` (moves staged) or inside one (moved on disk, the
    index not yet written): every reader still finds each change once, and running the
    migration again finishes it in one commit of pure moves that voids nothing."""
    project, approved, ran = legacy
    root = project.root
    decision = decide(project, approved, now=INSIDE)
    tip = head(root)
    git(root, "mv", f"changes/{approved}", f"changes/CHG-00xx/{approved}")  # staged
    (root / "changes" / ran / "runs").rename(root / "changes" / "CHG-00xx" / "runs-half")
    (root / "changes" / ran).rename(root / "changes" / "CHG-00xx" / ran)  # disk only
    (root / "changes" / "CHG-00xx" / "runs-half").rename(
        root / "changes" / "CHG-00xx" / ran / "runs"
    )
    assert change_ids(project) == ["CHG-0001", approved, ran]

    result = _migrate_cli(root)

    assert result.exit_code == 0, result.output
    assert git(root, "rev-parse", "HEAD^").stdout.strip() == tip
    assert _status(root) == ""
    renamed = git(root, "show", "-M", "--name-status", "--format=", "HEAD").stdout.split("\n")
    assert all(line.startswith("R100\t") for line in renamed if line), renamed
    assert not [p for p in (root / "changes").iterdir() if is_flat_change_folder(p.name)]
    again = decide(project, approved, now=INSIDE)
    assert again.allowed and again.content_sha256 == decision.content_sha256
    assert audit_check(project, now=LATER).findings == []


def test_a_half_migration_with_another_edit_is_refused_naming_both_sides_of_a_rename(legacy):
    """A staged rename is two paths in `git status -z`: each is named whole (the old one once
    lost its first three characters), and an edit that is no move is never committed with it."""
    project, approved, _ = legacy
    root = project.root
    git(root, "mv", f"changes/{approved}", f"changes/CHG-00xx/{approved}")
    git(root, "mv", "README.md", "READ-ME.md")
    before = tree_state(root)

    result = _migrate_cli(root)

    lines = assert_refused(result)
    assert any(" READ-ME.md: " in line for line in lines), lines
    assert any(" README.md: " in line for line in lines), lines
    assert not any(": ADME.md" in line or ": nges/" in line for line in lines), lines
    assert tree_state(root) == before


@pytest.mark.parametrize("obstacle", ["index.lock", "block file", "flat file", "empty folder"])
def test_what_would_stop_a_migration_half_way_is_refused_before_anything_moves(legacy, obstacle):
    """git's index lock held (another git running, or one killed), a file where a block
    folder goes, a file where a change folder should be: refused up front (exit 2, one line
    naming it), never a traceback or a move stopped half-way."""
    project, _, _ = legacy
    root = project.root
    (root / "changes" / "CHG-0150").mkdir()  # a flat change of another block
    (root / "changes" / "CHG-0150" / "change.yml").write_bytes(
        (root / "changes" / "CHG-0002" / "change.yml").read_bytes().replace(b"0002", b"0150")
    )
    commit_paths(root, [root / "changes" / "CHG-0150"], "A flat change of block 01", **ALICE)
    if obstacle == "index.lock":
        (root / ".git" / "index.lock").write_bytes(b"")
        named = ".git/index.lock"
    elif obstacle == "block file":
        (root / "changes" / "CHG-01xx").write_text("not a folder\n")
        commit_paths(root, [root / "changes" / "CHG-01xx"], "A file", **ALICE)
        named = "changes/CHG-01xx"
    elif obstacle == "flat file":
        (root / "changes" / "CHG-0004").write_text("not a folder\n")
        commit_paths(root, [root / "changes" / "CHG-0004"], "A file", **ALICE)
        named = "changes/CHG-0004"
    else:  # git records no empty folder: `git mv` of it fails after other blocks moved
        (root / "changes" / "CHG-0004" / "runs").mkdir(parents=True)
        named = "changes/CHG-0004"
    before = tree_state(root)
    folders = sorted(p.name for p in (root / "changes").iterdir())

    lines = assert_refused(_migrate_cli(root), expect=named)

    assert len([line for line in lines if named in line]) == 1, lines
    assert tree_state(root) == before
    assert sorted(p.name for p in (root / "changes").iterdir()) == folders


def test_a_second_migration_while_one_runs_is_refused_and_moves_nothing(legacy):
    """Two at once: the second finds the checkout's commit lock held and says so, instead of
    reading the first one's moves as a dirty tree (or undoing them on its way out)."""
    project, _, _ = legacy
    root = project.root
    before = tree_state(root)
    with commit_lock(project.root):  # what a running migration (or evidence commit) holds
        lines = assert_refused(_migrate_cli(root), expect="another opsledger command")
    assert len(lines) == 1 and tree_state(root) == before
