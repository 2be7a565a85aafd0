"""Fixtures for end-to-end change workflow tests: a git repo of the project in a tmp dir
that reaches the repository's lab (same hosts, same keys), so nothing touches this checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opsledger.gitrepo import git
from opsledger.lab.service import load_spec
from opsledger.project import Project
from opsledger.runsettings import run_settings

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


PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def lab_env(project: Project) -> dict[str, str]:
    """A plain ansible-playbook's environment as opsledger runs the lab: its opt-in to Mitogen
    and its forks (inventories/lab/group_vars/all/runs.yml), which ansible.cfg alone does not
    carry."""
    return {**project.ansible_env(), **run_settings(project.inventory_file("lab")).env()}


# Past ansible.cfg's task_timeout (1800 s): a stuck task is failed by Ansible itself, naming
# the host and the task, before this bound kills the whole run.
CONVERGE_TIMEOUT = 2700


def converge(project, *args: str) -> dict[str, dict[str, int]]:
    try:
        proc = subprocess.run(
            [PLAYBOOK, "site.yml", *args],
            cwd=project.root,
            env=lab_env(project),
            capture_output=True,
            text=True,
            timeout=CONVERGE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        # The heartbeat callback's "still running" lines at the end name the stuck task and hosts.
        tail = (exc.stdout or b"")[-6000:]
        text = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        pytest.fail(f"site.yml did not finish in {CONVERGE_TIMEOUT} s; its last output:\n{text}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    recap = {}
    for host, stats in re.findall(r"^(\S+)\s+: (ok=.*)$", proc.stdout, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", stats)}
    recap["_changed_tasks"] = changed_tasks(proc.stdout)
    return recap


def changed_tasks(output: str) -> list[str]:
    """'TASK name -> host' for every change, so a failed idempotence check says what moved."""
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            changed.append(f"{task} -> {line.split('[', 1)[1].split(']', 1)[0]}")
    return changed


@pytest.fixture(scope="session")
def converged_lab(lab):
    """The lab converged to site.yml once per session (plan and site tests need real state)."""
    recap = converge(lab)
    recap.pop("_changed_tasks")
    assert set(recap) == {h.name for h in load_spec(lab).hosts}
    return lab


@pytest.fixture
def restore_db(lab):
    """Put the database hosts back to this checkout's desired state after a test changed it."""
    yield
    converge(lab, "--tags", "postgresql", "--limit", "db")
