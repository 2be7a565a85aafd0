"""A hostile review of the block layout and decide's kept answers (task rl), on real git repos.

Alice can push any commit to a branch that a reviewed merge brings to main; she cannot write
CI's cache or git directory. Each test is a way she tried to make a reader of changes/ see
what is not there (or miss what is), refused or judged as the one reader of that evidence
judges it.
"""

from __future__ import annotations

import json

import pytest

from opsledger.apply import _already_applied
from opsledger.changes import check_change_id
from opsledger.ci import pr_check
from opsledger.errors import EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import git
from opsledger.pending import _candidates
from opsledger.records import head_runs, run_record_path

from .test_bypasses import INSIDE, STAGING_AT, approve, as_env, commit_as, request, run_record

# --- apply --pending sees a run as apply sees it: a record of its own folder ----------------


def test_a_record_in_another_changes_folder_does_not_mark_a_change_applied(repo):
    """A success record naming CHG-X but lying in CHG-Y's runs/ is no run of CHG-X: apply
    (records.runs_of) ignores it, so apply --pending must not skip CHG-X for it either."""
    project, change_id, keys = repo
    other = request(project, key=keys["alice"], targets="db", params={"tags": ["postgresql"]})
    forged = run_record(project, change_id, environment="lab")
    data = json.loads(forged.read_text())
    forged.unlink()
    started = STAGING_AT.replace(minute=7)
    path = run_record_path(project, other, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    commit_as(project, [path], f"Run {other}: success", "ci", key=keys["ci"])
    assert _already_applied(project, change_id) is None  # apply's own view: not applied
    pending = [c.id for c, _ in _candidates(project, head_runs(project), None)]
    assert change_id in pending


# --- ci pr: a change's folder in both layouts is refused, never skipped as removed ----------


def _flat_file_beside_block(project, change_id):
    """A branch that leaves `changes/<ID>/` (flat) beside the request's block folder."""
    from opsledger.layout import block_folder, flat_folder

    root = project.root
    assert block_folder(root, change_id).is_dir() and not flat_folder(root, change_id).exists()
    git(root, "checkout", "-q", "-b", "split")
    note = flat_folder(root, change_id) / "notes.md"
    note.parent.mkdir()
    note.write_text("looks harmless\n")
    commit_as(project, [note], "Notes", "alice")


def test_a_pr_leaving_a_flat_folder_beside_a_block_change_is_invalid(repo):
    """The flat folder wins every reader's lookup (layout.change_folder), the request lies in
    the block: once merged the change is in both layouts and refused (exit 2) by everyone.
    ci pr found no request in the flat folder and skipped it as removed by the PR (green)."""
    project, change_id, _ = repo
    _flat_file_beside_block(project, change_id)
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code == EXIT_INVALID
    assert any("both layouts" in p for i in report.items for p in i.problems)


def test_a_pr_moving_part_of_a_change_is_no_pure_move(repo):
    """A move of the same bytes between layouts is skipped by ci pr (nothing changed), but a
    move of the approvals alone leaves the id split across the layouts: refused, not skipped."""
    from opsledger.layout import block_folder, flat_folder

    project, change_id, _ = repo
    root = project.root
    approve(project, change_id, "bob")
    git(root, "checkout", "-q", "-b", "half-move")
    flat = flat_folder(root, change_id)
    flat.mkdir()
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    git(root, "mv", rel(block_folder(root, change_id) / "approvals"), rel(flat / "approvals"))
    git(root, "commit", "-q", "-m", "Tidy", env=as_env("alice"))
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code == EXIT_INVALID
    assert any("both layouts" in p for i in report.items for p in i.problems)


# --- ci pr: files in a change folder without a request are judged, never waved through -----


def _plant(project, relative, text):
    root = project.root
    git(root, "checkout", "-q", "-b", "plant")
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    commit_as(project, [path], "Notes", "alice")


def test_a_run_record_planted_for_a_future_id_is_invalid(repo):
    """`changes/CHG-00xx/CHG-0042/runs/<stamp>.json` before CHG-0042 exists: the next id lands
    in that folder (change_folder finds it) with a success already in it, and apply --pending
    and apply skip it. ci pr took the folder without a request for a change the PR removed."""
    project, change_id, _ = repo
    record = run_record(project, change_id, environment="lab").read_text()
    git(project.root, "clean", "-qfd", "changes")
    _plant(
        project,
        "changes/CHG-00xx/CHG-0042/runs/20261201T090000Z.json",
        record.replace(change_id, "CHG-0042"),
    )
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code == EXIT_INVALID
    assert any("no change CHG-0042" in p for i in report.items for p in i.problems)


def test_a_flat_folder_named_like_a_block_in_upper_case_is_invalid(repo):
    """`changes/CHG-00XX/CHG-0001/...`: no block (blocks end in lower-case xx), so a flat
    folder whose name is no id — and on a case-insensitive file system the very block of
    CHG-0001. ci pr must refuse it, as it refuses every path in no valid change folder."""
    project, change_id, _ = repo
    _plant(project, f"changes/CHG-00XX/{change_id}/approvals/bob/20261201T090000Z.yml", "x\n")
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code == EXIT_INVALID
    assert any("not a change id" in p for i in report.items for p in i.problems)


# --- lookalike ids --------------------------------------------------------------------------


OTHER_SCRIPT = "CHG-\u0660\u0660\u0660\u0661"  # Arabic-Indic 0001
FULLWIDTH = "CHG-\uff10\uff10\uff10\uff11"


@pytest.mark.parametrize("change_id", [OTHER_SCRIPT, FULLWIDTH, "CHG-00xx", "CHG-00XX"])
def test_an_id_in_digits_of_another_script_or_a_block_name_is_no_id(change_id):
    """`\\d` matched any script's digits: CHG- and Arabic-Indic digits passed the id check,
    while the schema and every path pattern (`[0-9]`) refuse them: readers disagreed on what
    is a change."""
    with pytest.raises(OpsledgerError) as refused:
        check_change_id(change_id)
    assert refused.value.exit_code == EXIT_INVALID


def test_a_policy_change_id_in_digits_of_another_script_is_no_id():
    from opsledger.policy.changes import is_policy_change

    assert not is_policy_change(OTHER_SCRIPT.replace("CHG", "POL"))


# --- held: a block folder that is a symlink or a file --------------------------------------


def test_a_block_folder_replaced_by_a_symlink_or_a_file_is_refused(repo):
    """The block holding CHG-0001 swapped for a symlink to a copy elsewhere (what is approved
    would differ from what git records under the change), or for a plain file: ci pr refuses
    the stray path and the request the branch took away stays judged."""
    project, _, _ = repo
    root = project.root
    git(root, "checkout", "-q", "-b", "swap")
    git(root, "mv", "changes/CHG-00xx", "elsewhere")
    (root / "changes").mkdir(exist_ok=True)
    (root / "changes" / "CHG-00xx").symlink_to("../elsewhere")
    _assert_block_refused(project, "Swap")
    git(root, "rm", "-q", "changes/CHG-00xx")
    (root / "changes").mkdir(exist_ok=True)
    (root / "changes" / "CHG-00xx").write_text("not a folder\n")
    _assert_block_refused(project, "File")


def _assert_block_refused(project, message: str) -> None:
    """Commit the tree as alice; ci pr refuses the block folder as a stray path (exit 2)."""
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", message, env=as_env("alice"))
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code == EXIT_INVALID
    assert "changes/CHG-00xx" in report.scope.stray
