"""Verification reaches SSH hosts on a fresh machine: Testinfra shares Ansible's SSH masters
(`~/.ansible/cp/%C`), a folder only Ansible's ssh plugin makes — never plays run over Mitogen —
so a controller that had never run the ssh plugin failed every check ("unix_listener: cannot
bind to path"). Real sshd on 127.0.0.1, real ssh, HOME with no ~/.ansible."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from opsledger.project import Project
from opsledger.testinfra_hosts import resolve_targets

from .conftest import point_lab_at_sshd

pytestmark = pytest.mark.slow  # a real sshd and an SSH session


@pytest.mark.parametrize("where", ["home", "ANSIBLE_SSH_CONTROL_PATH_DIR"])
def test_verification_connects_where_no_control_folder_exists_yet(
    fault_repo, sshd, tmp_path, monkeypatch, where
):
    project: Project = fault_repo
    point_lab_at_sshd(project, sshd)
    short = Path(tempfile.mkdtemp(prefix="cp", dir="/tmp"))  # a socket path has 107 bytes
    home = short / "h"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    folder = home / ".ansible" / "cp"
    if where != "home":
        folder = short / "job" / "cp"
        monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(folder))
    (target,) = resolve_targets(
        project.root / "inventories" / "lab",
        pattern="lab-db1",
        roles_dir=project.root / "roles",
        environment="lab",
    )
    try:
        assert target.host.run("echo reached").stdout.strip() == "reached"
        assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
        assert list(folder.iterdir()), "the SSH master's socket is in the folder"
    finally:
        for socket in folder.glob("*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(short, ignore_errors=True)
