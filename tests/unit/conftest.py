"""Fixtures for unit tests that need a real git repository of the project."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

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
# HYPOTHESIS_PROFILE=fuzz tries many more variants (minutes): for a bad-input campaign.
settings.register_profile("fuzz", parent=settings.get_profile("opsledger"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "opsledger"))

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
    return build_repo(tmp_path)


def build_repo(tmp_path):
    """What the `repo` fixture returns, built under tmp_path (for wider-scoped fixtures)."""
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


NOTE_RUNBOOK = """\
---
description: Write a note on the host (a test runbook with a free-form text parameter).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  required: [note]
  properties:
    note: {type: string, description: Any text at all.}
change_types: [normal, emergency]
risk: low
check_mode: true
roles: []
verification: {suites: []}
rollback: null
timeout: 300
"""

NOTE_PLAYBOOK = """\
---
- name: Write the note
  hosts: all
  gather_facts: false
  tasks:
    - name: Show the note
      ansible.builtin.debug:
        msg: "{{ opsledger_params.note }}"
    - name: Write the note
      ansible.builtin.copy:
        content: "{{ opsledger_params.note }}\\n"
        dest: "{{ note_file }}"
        mode: "0644"
"""


@pytest.fixture
def local_repo(tmp_path):
    """A git repo of the project with a `local` environment — one host, `here`, in group db,
    reached with ansible_connection=local (no lab) — and a runbook `note` whose `note` param
    is free text, written by the playbook to tmp_path/note.txt."""
    project = copy_project(tmp_path / "p")
    root = project.root
    inventory = root / "inventories" / "local"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "---\nall:\n  children:\n    db:\n      hosts:\n        here:\n"
        "          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
        f"          note_file: {tmp_path / 'note.txt'}\n"
    )
    windows = root / "policies" / "windows.yml"
    data = yaml.safe_load(windows.read_text())
    data["environments"]["local"] = {
        "windows": [
            {
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": "00:00",
                "end": "24:00",
                "timezone": "UTC",
            }
        ]
    }
    windows.write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "runbooks" / "note").mkdir()
    (root / "runbooks" / "note" / "runbook.yml").write_text(NOTE_RUNBOOK)
    (root / "runbooks" / "note" / "playbook.yml").write_text(NOTE_PLAYBOOK)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Initial state", env=ALICE_ENV)
    return project


ALICE_ENV = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}
