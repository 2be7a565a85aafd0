"""Fixtures for unit tests that need a real git repository of the project."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, settings

from opsledger.changes import new_change
from opsledger.gitrepo import commit_paths, git
from opsledger.project import Project

from ..conftest import REPO_ROOT

# Property-based tests: no deadline on a shared 2-core machine, no example database written
# into the checkout, and fixtures shared across examples (each test restores what it edits).
settings.register_profile(
    "opsledger",
    deadline=None,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("opsledger")

START = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)  # a Tuesday
PROJECT_PARTS = (
    "runbooks",
    "roles",
    "tests/infra",
    "inventories",
    "policies",
    "vault-passwords",
    "ansible.cfg",
    "site.yml",
    "README.md",
)


def copy_project(root):
    """The parts of this repository a change workflow reads, copied to root (no git)."""
    for part in PROJECT_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part)
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
    """A git repo of the project with signing keys for bob and carol, and CHG-0001 (alice's
    converge of db in the lab, 2026-12-01 20:00-22:00 UTC) committed by alice."""
    project = copy_project(tmp_path / "p")
    root = project.root
    keys = {name: keypair(tmp_path, name) for name in ("bob", "carol")}
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
    change = new_change(
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
        root, [change.file], f"Request {change.id}", name="Alice Arnold", email="alice@example.org"
    )
    return project, change.id, keys
