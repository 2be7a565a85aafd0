"""Fixtures for unit tests that need a real git repository of the project."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
import yaml

from opsledger.gitrepo import commit_paths, git
from opsledger.project import Project
from opsledger.signoff import request_change

from ..conftest import REPO_ROOT

START = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)  # a Tuesday
PROJECT_PARTS = (
    "runbooks",
    "roles",
    "tests/infra",
    "inventories",
    "policies",
    "vault-passwords",
    "ansible.cfg",
    "plugins",
    "site.yml",
    "README.md",
)


def copy_project(root):
    """The parts of this repository a change workflow reads, copied to root (no git)."""
    for part in PROJECT_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / part)
    (root / "changes").mkdir(exist_ok=True)
    return Project(root)


def keypair(folder, name):
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


@pytest.fixture
def repo(tmp_path):
    """A git repo of the project with signing keys for alice, bob, carol, dave and ci, and
    CHG-0001 (alice's converge of db in the lab, 2026-12-01 20:00-22:00 UTC) requested by
    alice: its change.yml and her request statement, committed by her."""
    project = copy_project(tmp_path / "p")
    root = project.root
    keys = {name: keypair(tmp_path, name) for name in ("alice", "bob", "carol", "dave", "ci")}
    people = root / "policies" / "people.yml"
    data = yaml.safe_load(people.read_text())
    for person in data["people"]:
        if person["id"] in keys:
            person["signing_key"] = keys[person["id"]].with_suffix(".pub").read_text().strip()
    people.write_text(yaml.safe_dump(data, sort_keys=False))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    env = {
        "GIT_AUTHOR_NAME": "Alice Arnold",
        "GIT_AUTHOR_EMAIL": "alice@example.org",
        "GIT_COMMITTER_NAME": "Alice Arnold",
        "GIT_COMMITTER_EMAIL": "alice@example.org",
    }
    git(root, "commit", "-q", "-m", "Initial state", env=env)
    change, _ = request_change(
        project,
        title="Tune the database hosts",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk nightly",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(
        root,
        [change.file.parent],
        f"Request {change.id}",
        name="Alice Arnold",
        email="alice@example.org",
    )
    return project, change.id, keys
