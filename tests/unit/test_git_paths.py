"""Paths from git are read NUL-separated everywhere (#14.8): without -z git quotes unusual names
(`"z\\303\\251.yml"`) and a split on whitespace cuts a name with a space in two, so a file read that
way is not the file git means."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from opsledger.base import _trees
from opsledger.gitrepo import git, log_paths, nul_paths

from .conftest import REPO_ROOT, copy_project

LISTS_PATHS = {"--name-only", "--name-status", "ls-files", "ls-tree", "--raw"}
ODD_NAMES = ["read me.md", "zé.md", "line\nbreak.md", "tab\there.md", '"quoted".md']


def _git_argument_lists() -> list[tuple[str, int, set[str]]]:
    """The string constants of every call and list literal in src/ that mention a git command
    listing paths."""
    found = []
    for path in sorted((REPO_ROOT / "src" / "opsledger").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            items = node.args if isinstance(node, ast.Call) else getattr(node, "elts", None)
            if not isinstance(node, ast.Call | ast.List) or items is None:
                continue
            words = {a.value for a in items if isinstance(a, ast.Constant)}
            if words & LISTS_PATHS or {"status", "--porcelain"} <= words:
                found.append((str(path.relative_to(REPO_ROOT)), node.lineno, words))
    return found


def test_every_git_command_that_lists_paths_uses_z():
    calls = _git_argument_lists()
    assert len(calls) >= 10  # the scan sees them
    missing = [f"{file}:{line}" for file, line, words in calls if "-z" not in words]
    assert not missing, f"git lists paths without -z at {missing}"


def _repo(tmp_path: Path) -> Path:
    project = copy_project(tmp_path / "p")
    root = project.root
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-qm", "one")
    return root


def test_odd_names_come_back_whole(tmp_path):
    root = _repo(tmp_path)
    for name in ODD_NAMES:
        (root / "policies" / name).write_text("notes\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-qm", "two")
    listed = nul_paths(git(root, "ls-tree", "--name-only", "-z", "HEAD", "policies/").stdout)
    assert {f"policies/{n}" for n in ODD_NAMES} <= set(listed)
    log = git(root, "log", "--name-only", "-z", "--format=%x1e%H", "-1").stdout
    [(sha, paths)] = log_paths(log)
    assert len(sha) == 40 and sorted(paths) == sorted(f"policies/{n}" for n in ODD_NAMES)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_policy_document_with_an_odd_name_is_not_a_policy_version(tmp_path, name):
    """_trees ids a commit's policy rules, documentation (.md) left out: a quoted name ends in
    `"`, not `.md`, and made a new policy version of a documentation edit."""
    root = _repo(tmp_path)
    from opsledger.project import Project

    project = Project(root)
    first = git(root, "rev-parse", "HEAD").stdout.strip()
    (root / "policies" / name).write_text("notes\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-qm", "doc")
    second = git(root, "rev-parse", "HEAD").stdout.strip()
    trees = _trees(project, [first, second])
    assert trees[first] == trees[second]


def _raw_git_calls() -> list[tuple[str, int, bool]]:
    """Every subprocess call in src/ whose command list starts with "git": (file, line, whether
    it passes env=git_env(...))."""
    found = []
    for path in sorted((REPO_ROOT / "src" / "opsledger").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            if not (
                isinstance(first, ast.List)
                and first.elts
                and isinstance(first.elts[0], ast.Constant)
                and first.elts[0].value == "git"
            ):
                continue
            env = next((k.value for k in node.keywords if k.arg == "env"), None)
            ok = (
                isinstance(env, ast.Call)
                and isinstance(env.func, ast.Name)
                and env.func.id == "git_env"
            )
            found.append((str(path.relative_to(REPO_ROOT)), node.lineno, ok))
    return found


def test_every_git_process_ignores_replace_objects():
    """`git replace` swaps an object's bytes for every reader that does not opt out: the run
    records' reader (cat-file) honoured it, so a local replacement turned a failed run into a
    success. Every git process opsledger starts gets GIT_NO_REPLACE_OBJECTS (git_env)."""
    calls = _raw_git_calls()
    assert len(calls) >= 8  # the scan sees them
    missing = [f"{file}:{line}" for file, line, ok in calls if not ok]
    assert not missing, f"git runs without git_env() at {missing}"


def test_a_replaced_run_record_reads_as_committed(tmp_path):
    import datetime as dt

    from opsledger.gitrepo import commit_paths
    from opsledger.project import Project
    from opsledger.records import Record, read_runs, run_record_path, write_record

    root = tmp_path / "r"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    project = Project(root)
    started = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)
    fields = dict(kind="run", environment="lab", change="CHG-0001", runbook="converge")
    times = dict(started_at=started.isoformat(), finished_at=started.isoformat())
    path = write_record(
        run_record_path(project, "CHG-0001", started), Record(result="failed", **fields, **times)
    )
    commit_paths(root, [path], "Run", name="CI", email="ci@example.org")
    failed = git(root, "rev-parse", f"HEAD:{path.relative_to(root)}").stdout.strip()
    forged = root / "forged.json"
    forged.write_text(Record(result="success", **fields, **times).to_json())
    success = git(root, "hash-object", "-w", str(forged)).stdout.strip()
    git(root, "replace", failed, success)
    assert [r.result for r in read_runs(project).committed] == ["failed"]
