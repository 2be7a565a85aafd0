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
