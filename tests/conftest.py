"""Shared fixtures: throwaway projects in tmp_path, and the real lab for `lab` tests."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opsledger.project import Project

REPO_ROOT = Path(__file__).resolve().parents[1]

CONNECTION_VARS = textwrap.dedent(
    """\
    ---
    ansible_host: 127.0.0.1
    ansible_user: opsadmin
    ansible_ssh_private_key_file: "{{ inventory_dir }}/../../.opsledger/lab/id_ed25519"
    ansible_ssh_common_args: >-
      -o UserKnownHostsFile={{ inventory_dir }}/../../.opsledger/lab/known_hosts
      -o StrictHostKeyChecking=yes
    lab_capabilities: [NET_ADMIN]
    """
)


@pytest.fixture(autouse=True)
def machine_locks(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own machine-wide lock folder, as a fresh machine would.

    Tests never take the real /run/lock/opsledger (the lab's lead engineer may be applying);
    processes a test starts inherit the variable, so they share the test's folder.
    """
    folder = tmp_path_factory.mktemp("machine-locks")
    monkeypatch.setenv("OPSLEDGER_LOCK_DIR", str(folder))
    return folder


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    """Write a minimal project (ansible.cfg + lab inventory) and return it."""

    def make(hosts_yml: str, group_vars: str = CONNECTION_VARS, name: str = "proj") -> Project:
        root = tmp_path / name
        inv = root / "inventories" / "lab"
        (inv / "group_vars" / "all").mkdir(parents=True)
        (root / "ansible.cfg").write_text("[defaults]\ninventory = inventories/lab/hosts.yml\n")
        (inv / "hosts.yml").write_text(textwrap.dedent(hosts_yml))
        (inv / "group_vars" / "all" / "connection.yml").write_text(group_vars)
        return Project(root)

    return make


@pytest.fixture(scope="session")
def repo_project() -> Project:
    return Project(REPO_ROOT)


@pytest.fixture(scope="session")
def lab(repo_project: Project) -> Iterator[Project]:
    """The repository's lab, up for the whole session, down at the end (unless kept).

    Lab tests need root and podman; they fail loudly rather than skip, because a skipped lab
    test would let CI pass without ever touching a real host.
    """
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (rootful podman); run `pytest -m 'not lab'` otherwise")
    from opsledger.lab.service import lab_down, lab_up

    lab_up(repo_project)
    yield repo_project
    if not os.environ.get("OPSLEDGER_KEEP_LAB"):
        lab_down(repo_project)
