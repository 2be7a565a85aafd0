"""layout.py: the one owner of where a change's files and the policy files live.

The paths it builds must be what git names (pathspecs tried on a real repository), the parsers
must be strict where a guard leans on them (a trailing newline, another folder, a file right
under changes/), and no module may build such a path by hand again.
"""

from __future__ import annotations

import ast
import importlib.machinery
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from opsledger import layout
from opsledger.layout import (
    APPROVALS,
    REQUEST,
    RUNS,
    block_file,
    block_of,
    change_file,
    change_file_pattern,
    change_folder,
    change_folder_name,
    change_id_of,
    change_pathspecs,
    changes_root,
    every_change_glob,
    flat_form,
    folder_of_kind,
    folders_on_disk,
    in_policies,
    misplaced,
    other_changes_pathspec,
    policies_folder,
    policy_file,
    stored_file,
    within_change,
)

from ..conftest import REPO_ROOT


def test_relative_and_absolute_paths_name_the_same_file(tmp_path: Path) -> None:
    assert change_file("CHG-0001") == "changes/CHG-0001"
    assert change_file("CHG-0001", REQUEST) == "changes/CHG-0001/change.yml"
    assert change_file("CHG-0001", APPROVALS, "alice") == "changes/CHG-0001/approvals/alice"
    absolute = change_folder(tmp_path, "CHG-0001", RUNS, "x.json")  # a new change: its block
    assert absolute == tmp_path / "changes" / "CHG-00xx" / "CHG-0001" / "runs" / "x.json"
    assert absolute.relative_to(tmp_path).as_posix() == block_file("CHG-0001", RUNS, "x.json")
    assert stored_file(tmp_path, "CHG-0001", RUNS) == "changes/CHG-00xx/CHG-0001/runs"
    (tmp_path / "changes" / "CHG-0002").mkdir(parents=True)  # a legacy flat change stays flat
    absolute = change_folder(tmp_path, "CHG-0002", RUNS, "x.json")
    assert absolute == tmp_path / "changes" / "CHG-0002" / "runs" / "x.json"
    assert absolute.relative_to(tmp_path).as_posix() == change_file("CHG-0002", RUNS, "x.json")
    assert stored_file(tmp_path, "CHG-0002", RUNS) == "changes/CHG-0002/runs"
    assert changes_root(tmp_path) == tmp_path / "changes"
    assert policy_file("people.yml") == "policies/people.yml"
    assert policy_file() == "policies"
    assert policies_folder(tmp_path, "dr.yml") == tmp_path / "policies" / "dr.yml"
    assert policies_folder(tmp_path) == tmp_path / "policies"


@pytest.mark.parametrize(
    ("path", "folder", "change_id", "inside"),
    [
        ("changes/CHG-0001/change.yml", "CHG-0001", "CHG-0001", ("CHG-0001", "change.yml")),
        (
            "changes/POL-0002/approvals/a/b.yml",
            "POL-0002",
            "POL-0002",
            ("POL-0002", "approvals/a/b.yml"),
        ),
        ("changes/CHG-0001", "CHG-0001", "CHG-0001", None),
        ("changes/README.md", "README.md", "", None),
        ("changes/junk/x", "junk", "", ("junk", "x")),
        ("policies/changes/CHG-0001/x", "", "", None),
        ("records/drift/x.json", "", "", None),
        ("changes/CHG-0001\n/x", "CHG-0001\n", "", ("CHG-0001\n", "x")),
    ],
)
def test_parsers_find_the_folder_a_path_lies_in(
    path: str, folder: str, change_id: str, inside: tuple[str, str] | None
) -> None:
    assert change_folder_name(path) == folder
    assert change_id_of(path) == change_id
    assert within_change(path) == inside


@pytest.mark.parametrize(
    ("change_id", "block"),
    [
        ("CHG-0001", "CHG-00xx"),
        ("CHG-0099", "CHG-00xx"),
        ("CHG-0100", "CHG-01xx"),
        ("CHG-0123", "CHG-01xx"),
        ("CHG-12345", "CHG-123xx"),
        ("CHG-123456789", "CHG-1234567xx"),
        ("POL-0007", "POL-00xx"),
    ],
)
def test_the_block_is_the_id_with_its_last_two_digits_replaced(change_id: str, block: str) -> None:
    assert block_of(change_id) == block
    assert block_file(change_id, REQUEST) == f"changes/{block}/{change_id}/change.yml"
    assert change_pathspecs(change_id, RUNS) == (
        f"changes/{change_id}/runs",
        f"changes/{block}/{change_id}/runs",
    )


@pytest.mark.parametrize(
    ("path", "key", "folder", "change_id", "inside", "kind"),
    [
        (
            "changes/CHG-00xx/CHG-0001/runs/x.json",
            "changes/CHG-0001/runs/x.json",
            "CHG-0001",
            "CHG-0001",
            ("CHG-0001", "runs/x.json"),
            "CHG-0001",
        ),
        ("changes/CHG-01xx/CHG-0123", "changes/CHG-0123", "CHG-0123", "CHG-0123", None, "CHG-0123"),
        (
            "changes/POL-00xx/POL-0007/policy.yml",
            "changes/POL-0007/policy.yml",
            "POL-0007",
            "POL-0007",
            ("POL-0007", "policy.yml"),
            "POL-0007",
        ),
        # the wrong block: never the change it names
        (
            "changes/CHG-05xx/CHG-0123/change.yml",
            "changes/CHG-05xx/CHG-0123/change.yml",
            "CHG-05xx/CHG-0123",
            "",
            ("CHG-05xx/CHG-0123", "change.yml"),
            "",
        ),
        # a file in a block but in no change, a block folder itself, junk in a block
        (
            "changes/CHG-00xx/README.md",
            "changes/CHG-00xx/README.md",
            "CHG-00xx/README.md",
            "",
            None,
            "",
        ),
        ("changes/CHG-00xx", "changes/CHG-00xx", "CHG-00xx", "", None, ""),
        (
            "changes/CHG-00xx/junk/x",
            "changes/CHG-00xx/junk/x",
            "CHG-00xx/junk",
            "",
            ("CHG-00xx/junk", "x"),
            "",
        ),
        # flat paths and paths outside changes/ are their own keys
        (
            "changes/CHG-0001/x",
            "changes/CHG-0001/x",
            "CHG-0001",
            "CHG-0001",
            ("CHG-0001", "x"),
            "CHG-0001",
        ),
        ("policies/CHG-00xx/CHG-0001/x", "policies/CHG-00xx/CHG-0001/x", "", "", None, ""),
    ],
)
def test_block_paths_read_as_their_change_and_misplaced_ones_as_none(
    path: str, key: str, folder: str, change_id: str, inside: tuple[str, str] | None, kind: str
) -> None:
    assert flat_form(path) == key
    assert change_folder_name(path) == folder
    assert change_id_of(path) == change_id
    assert within_change(path) == inside
    assert folder_of_kind(path) == kind
    assert bool(misplaced(path)) == (path.startswith("changes/") and folder != change_id)


def test_folders_on_disk_reads_both_layouts_and_refuses_duplicates_and_wrong_blocks(
    tmp_path: Path,
) -> None:
    for folder in (
        "CHG-0001",  # flat
        "CHG-00xx/CHG-0002",  # block
        "CHG-01xx/CHG-0100",
        "CHG-0003",  # in both layouts
        "CHG-00xx/CHG-0003",
        "CHG-05xx/CHG-0123",  # the wrong block
        "CHG-00xx/CHG-0004",  # no change.yml: not a change (yet)
    ):
        (tmp_path / "changes" / folder).mkdir(parents=True)
        if not folder.endswith("0004"):
            (tmp_path / "changes" / folder / REQUEST).write_text("x\n")
    found, wrong = folders_on_disk(tmp_path, REQUEST)
    assert found == {
        "CHG-0001": "changes/CHG-0001",
        "CHG-0002": "changes/CHG-00xx/CHG-0002",
        "CHG-0003": "changes/CHG-0003",
        "CHG-0100": "changes/CHG-01xx/CHG-0100",
    }
    assert [path for path, _ in wrong] == ["changes/CHG-00xx/CHG-0003", "changes/CHG-05xx/CHG-0123"]
    assert "both layouts (changes/CHG-0003 and changes/CHG-00xx/CHG-0003)" in wrong[0][1]
    assert "belongs in changes/CHG-01xx/CHG-0123" in wrong[1][1]


def test_patterns_match_a_block_path_as_its_key_and_never_a_misplaced_one() -> None:
    runs = change_file_pattern("CHG-[0-9]+", r"runs/([0-9TZ]+)\.json")
    match = runs.fullmatch("changes/CHG-00xx/CHG-0001/runs/20261201T000000Z.json")
    assert match and match.groups() == ("CHG-0001", "20261201T000000Z")
    assert not runs.fullmatch("changes/CHG-05xx/CHG-0001/runs/20261201T000000Z.json")
    assert not runs.fullmatch("changes/CHG-00xx/CHG-0001/runs/20261201T000000Z.json\n")


def test_folder_of_kind_keeps_malformed_ids_of_a_kind_for_validation_to_refuse() -> None:
    # A pull request touching changes/CHG-abc/ must be judged (and refused), not ignored.
    assert folder_of_kind("changes/CHG-abc/change.yml") == "CHG-abc"
    assert folder_of_kind("changes/POL-0001/policy.yml") == "POL-0001"
    assert folder_of_kind("changes/POL-0001/policy.yml", ("CHG",)) == ""
    assert folder_of_kind("changes/README.md") == ""
    assert folder_of_kind("policies/CHG-0001") == ""


def test_file_patterns_are_anchored_at_both_ends() -> None:
    runs = change_file_pattern("CHG-[0-9]+", r"runs/([0-9TZ]+)\.json")
    match = runs.match("changes/CHG-0001/runs/20261201T000000Z.json")
    assert match and match.groups() == ("CHG-0001", "20261201T000000Z")
    assert not runs.match("changes/CHG-0001/runs/20261201T000000Z.json\n")
    assert not runs.match("x/changes/CHG-0001/runs/20261201T000000Z.json")
    assert not runs.match("changes/POL-0001/runs/20261201T000000Z.json")
    assert not runs.match("changes/CHG-0001/x/runs/20261201T000000Z.json")
    prefix = change_file_pattern("[^/]+", r"approvals/[\s\S]*")
    assert prefix.match("changes/CHG-0001/approvals/alice/x.yml")
    assert not prefix.match("changes/CHG-0001/runs/x.json")


def test_policy_paths_are_told_apart_from_lookalikes() -> None:
    assert in_policies("policies/people.yml")
    assert not in_policies("policies")
    assert not in_policies("changes/POL-0001/policies/x")
    assert not in_policies("policiesx/people.yml")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout


def test_pathspecs_select_what_git_names(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    files = [
        change_file("CHG-0001", REQUEST),
        change_file("CHG-0001", RUNS, "20261201T000000Z.json"),
        block_file("CHG-0002", REQUEST),
        block_file("CHG-0002", RUNS, "20261201T000000Z.json"),
        change_file("POL-0001", "policy.yml"),
        block_file("POL-0002", "policy.yml"),
        "changes/README.md",
        policy_file("people.yml"),
        "roles/x/tasks/main.yml",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    _git(tmp_path, "add", "-A")
    requests = _git(tmp_path, "ls-files", "--", *every_change_glob(REQUEST)).split()
    assert requests == [change_file("CHG-0001", REQUEST), block_file("CHG-0002", REQUEST)]
    outside = _git(tmp_path, "ls-files", "--", ".", other_changes_pathspec()).split()
    assert outside == ["changes/README.md", "policies/people.yml", "roles/x/tasks/main.yml"]
    for change_id, mine in (("CHG-0001", files[:2]), ("CHG-0002", files[2:4])):
        listed = _git(tmp_path, "ls-files", "--", *change_pathspecs(change_id)).split()
        assert listed == mine


# Strings that are paths under changes/ or policies/ when they begin a literal; a message that
# names a policy file in a sentence ("is not in policies/people.yml") is prose, not a path.
_PATH_STARTS = ("changes/", "policies/", "^changes/", ":(glob)changes", ":(exclude,glob)changes")


def _hand_built(tree: ast.AST) -> list[int]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            text = first.value if isinstance(first, ast.Constant) else ""
            if isinstance(text, str) and text.startswith(_PATH_STARTS):
                lines.append(node.lineno)
            for part in node.values:
                part.__dict__["_in_fstring"] = True
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and not node.__dict__.get("_in_fstring")
            and node.value.startswith(_PATH_STARTS)
        ):
            lines.append(node.lineno)
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.right, ast.Constant)
            and node.right.value in (layout.CHANGES, layout.POLICIES)
        ):
            lines.append(node.lineno)  # root / "changes"
    return sorted(set(lines))


def test_no_module_builds_a_changes_or_policies_path_by_hand() -> None:
    found = {}
    for path in sorted((REPO_ROOT / "src" / "opsledger").rglob("*.py")):
        if path.name == "layout.py":
            continue
        lines = _hand_built(ast.parse(path.read_text()))
        if lines:
            found[path.relative_to(REPO_ROOT).as_posix()] = lines
    assert found == {}, "ask opsledger.layout for these paths"


def test_the_scan_sees_each_way_of_building_a_path_by_hand() -> None:
    source = (
        'a = f"changes/{cid}/change.yml"\n'
        'b = root / "changes" / cid\n'
        'c = ":(glob)changes/*/change.yml"\n'
        'd = "policies/people.yml"\n'
        'e = re.compile(r"^changes/(CHG-[0-9]+)/runs/")\n'
        'f = f"{x} is not in policies/people.yml"\n'
    )
    assert _hand_built(ast.parse(source)) == [1, 2, 3, 4, 5]


def _protect_main() -> ModuleType:
    """scripts/forge/protect-main as a module: it runs on the git server without opsledger."""
    path = REPO_ROOT / "scripts" / "forge" / "protect-main"
    loader = importlib.machinery.SourceFileLoader("protect_main", str(path))
    module = ModuleType(loader.name)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "path",
    [
        change_file("CHG-0001", RUNS, "20261201T000000Z.json"),
        change_file("CHG-0001", RUNS, "20261201T000000Z.started.json"),
        change_file("CHG-0001", RUNS, "20261201T000000Z.log.jsonl.gz"),
        change_file("CHG-0001", "shards", "001-1of2.json"),
        change_file("CHG-0001", "shards", "001-1of2.log.jsonl.gz"),
        change_file("CHG-0001", "review.yml"),
        change_file("CHG-0001", "review.yml") + "\n",
        change_file("CHG-0001", REQUEST),
        change_file("CHG-0001", APPROVALS, "alice", "20261201T000000Z.yml"),
        change_file("CHG-0001", RUNS, "x", "20261201T000000Z.json"),
        "changes/2026/CHG-0001/runs/20261201T000000Z.json",
        block_file("CHG-0001", RUNS, "20261201T000000Z.json"),
        block_file("CHG-12345", RUNS, "20261201T000000Z.started.json"),
        block_file("CHG-0001", RUNS, "20261201T000000Z.log.jsonl.gz"),
        block_file("POL-0001", "shards", "001-1of2.json"),
        block_file("CHG-0001", "review.yml"),
        block_file("CHG-0001", REQUEST),
        block_file("CHG-0001", APPROVALS, "alice", "20261201T000000Z.yml"),
        "changes/CHG-05xx/CHG-0123/runs/20261201T000000Z.json",  # the wrong block
        "changes/CHG-01xx/CHG-0023/review.yml",
        "changes/CHG-00xx/runs/20261201T000000Z.json",
        "changes/CHG-xx/CHG-0001/runs/20261201T000000Z.json",
        "changes/README.md",
        "records/drift/20261201T000000Z-x.json",
        "records/drift/x/y.json",
        policy_file("people.yml"),
    ],
)
def test_the_protected_branch_hook_lets_ci_add_what_audit_check_lets_it_add(path: str) -> None:
    # Two copies of one rule (the hook needs nothing of opsledger): a layout change must move
    # both, or CI's records are refused on push while audit accepts them, or the reverse.
    from opsledger.compliance import CI_MAY_ADD

    hook = _protect_main()
    assert any(p.match(path) for p in hook.ADDED_ONLY) == any(p.fullmatch(path) for p in CI_MAY_ADD)


def test_shown_path_names_where_a_keyed_file_lies(tmp_path):
    from opsledger.layout import shown_path

    assert shown_path(tmp_path, "changes/CHG-0001/change.yml") == (
        "changes/CHG-00xx/CHG-0001/change.yml"
    )
    assert shown_path(tmp_path, "changes/CHG-0001") == "changes/CHG-00xx/CHG-0001"
    for unchanged in ("changes/CHG-00xx/CHG-0001/x", "roles/a", "changes/README.md", "changes/x/y"):
        assert shown_path(tmp_path, unchanged) == unchanged
    (tmp_path / "changes" / "CHG-0002").mkdir(parents=True)  # a legacy flat folder stays flat
    assert shown_path(tmp_path, "changes/CHG-0002/change.yml") == "changes/CHG-0002/change.yml"
