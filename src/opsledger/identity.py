"""Who runs operations and who commits their evidence.

Apply, drift and inspections all write a record and commit it; this is the one place that
says which identity commits it (CI's, or the engineer's git identity), whether it is signed,
and how the runner is described inside the record.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Any

from opsledger import __version__
from opsledger.gitrepo import commit_paths, git
from opsledger.project import Project


def runner_identity() -> dict[str, Any]:
    """Who and what runs the operation: person, machine, CI job, tool versions."""
    import ansible.release

    ci = None
    if os.environ.get("GITHUB_ACTIONS"):
        ci = f"github:{os.environ.get('GITHUB_REPOSITORY', '')}#{os.environ.get('GITHUB_RUN_ID')}"
    elif os.environ.get("GITLAB_CI"):
        ci = f"gitlab:{os.environ.get('CI_PROJECT_PATH', '')}#{os.environ.get('CI_PIPELINE_ID')}"
    elif os.environ.get("CI"):
        ci = "ci"
    return {
        "person": os.environ.get("OPSLEDGER_PERSON") or getpass.getuser(),
        "machine": socket.gethostname(),
        "pid": os.getpid(),
        "ci": ci,
        "opsledger": __version__,
        "ansible_core": ansible.release.__version__,
    }


def committer(project: Project) -> tuple[str, str]:
    """The identity that commits records.

    $OPSLEDGER_COMMITTER_NAME/EMAIL (the CI identity), else git's user.name/user.email, else a
    machine identity.
    """
    name = os.environ.get("OPSLEDGER_COMMITTER_NAME")
    email = os.environ.get("OPSLEDGER_COMMITTER_EMAIL")
    if not name:
        name = git(project.root, "config", "user.name", check=False).stdout.strip()
    if not email:
        email = git(project.root, "config", "user.email", check=False).stdout.strip()
    return name or "opsledger runner", email or f"opsledger@{socket.gethostname()}"


def signing_key() -> Path | None:
    """$OPSLEDGER_SIGNING_KEY: the SSH key that signs evidence commits, when set."""
    key = os.environ.get("OPSLEDGER_SIGNING_KEY")
    return Path(key).expanduser() if key else None


def commit_evidence(project: Project, paths: list[Path], message: str) -> str:
    """Commit records as the committer identity, signed when a key is configured."""
    name, email = committer(project)
    return commit_paths(
        project.root, paths, message, name=name, email=email, signing_key=signing_key()
    )
