"""Helpers for lab tests: run Ansible the way a user would, and inspect what podman holds."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from opsledger.gitrepo import commit_paths, git
from opsledger.lab.ssh import ANSIBLE_CONTROL_DIR
from opsledger.project import Project
from opsledger.signoff import request_change as request

BIN = Path(sys.executable).parent


def ansible(
    project: Project, *args: str, env: str = "lab", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`ansible -i inventories/<env> ...` from the project root with its ansible.cfg."""
    return subprocess.run(
        [str(BIN / "ansible"), "-i", f"inventories/{env}", *args],
        cwd=project.root,
        env={**project.ansible_env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def opsledger(
    project: Project, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess on `project`, with extra environment variables if given."""
    return subprocess.run(
        [sys.executable, "-m", "opsledger", *args],
        cwd=project.root,
        env={**project.ansible_env(), "OPSLEDGER_PROJECT": str(project.root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def request_change(project: Project, files=(), *, signing_key=None, **fields) -> str:
    """alice requests a change open from five minutes ago for two hours: the change and her
    request statement (signed with `signing_key` when given), committed by her together with
    the desired-state files it changes; returns its id."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if files:  # the request binds what `git commit -a` would record: new files are added first
        git(project.root, "add", "--", *(str(f) for f in files))
    change, _ = request(
        project,
        signing_key=signing_key,
        requested_by="alice",
        window_start=now - dt.timedelta(minutes=5),
        window_end=now + dt.timedelta(hours=2),
        **fields,
    )
    commit_paths(
        project.root,
        [*files, change.file.parent],
        f"Request {change.id}",
        name="Alice Arnold",
        email="alice@example.org",
    )
    return change.id


def podman_json(*args: str) -> list[dict]:
    out = subprocess.run(
        ["podman", *args, "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out or "[]")


def live_processes_mentioning(*needles: str, wait: float = 15) -> list[str]:
    """Non-zombie processes whose command line mentions a needle, after up to `wait` seconds.

    conmon and aardvark-dns exit asynchronously after `podman rm`, so give them a moment.
    """
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
        found = [
            line
            for line in out.splitlines()
            if not line.lstrip().startswith("Z")
            and "ps -eo" not in line
            and any(n in line for n in needles)
        ]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def control_master_alive(port: int, user: str) -> bool:
    proc = subprocess.run(
        [
            "ssh",
            "-o",
            f"ControlPath={ANSIBLE_CONTROL_DIR}/%C",
            "-O",
            "check",
            "-p",
            str(port),
            f"{user}@127.0.0.1",
        ],
        capture_output=True,
    )
    return proc.returncode == 0
