"""Fixtures for end-to-end change workflow tests: a git repo of the project in a tmp dir
that reaches the repository's lab (same hosts, same keys), so nothing touches this checkout."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from opsledger.gitrepo import git
from opsledger.project import Project

from ..conftest import REPO_ROOT

ALICE = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


@pytest.fixture
def workflow_repo(lab, tmp_path):
    """A fresh git repo of this project's tracked files, committed by alice, with the lab's
    SSH material so its lab inventory reaches the running lab."""
    root = tmp_path / "repo"
    files = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-co", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = REPO_ROOT / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(lab.lab_state_dir, root / ".opsledger" / "lab")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Desired state as of the test", env=ALICE)
    return Project(root)
