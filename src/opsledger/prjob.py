"""What a pull-request job may hold: no secret, no connection another job can reuse.

A PR job runs the PR's own code: its playbooks in check mode (a lookup, a `check_mode: false`
task, a callback plugin all run on the controller), its `opsledger`, its scripts. Whatever
the job can read, the PR can read and send anywhere — the attack Atlantis documents for
`plan`. So the pipelines give PR jobs no staging or production secret and run them on
runners of their own (README, "Pipelines"); this module is the job's own check of that
promise, so a misconfigured pipeline fails loudly instead of leaking:

- `refuse_secrets`: exit 2, nothing run, while the job can see a vault password of an
  environment that is not committed (a file under `vault-passwords/` git does not track),
  a variable that carries one (`OPSLEDGER_VAULT_*`, `ANSIBLE_VAULT_PASSWORD_FILE`), the CI
  signing key, the deploy key that may push to the protected branch, a push or forge token, an
  SSH agent, or push credentials a checkout left in the repository's git config (a token in
  `http.<url>.extraheader`, a key in `core.sshCommand`: `persist-credentials` not false);
- `isolated_connections`: plans open SSH masters in a folder of their own
  (`ANSIBLE_SSH_CONTROL_PATH_DIR`), closed and removed when the plan ends, so a PR job neither
  reuses another job's live connection nor leaves one behind for the next job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem
from opsledger.gitrepo import git
from opsledger.project import Project

SECRET_VARIABLES = (
    "OPSLEDGER_VAULT_",  # prefix: OPSLEDGER_VAULT_PASSWORD, _STAGING, _PRODUCTION
    "ANSIBLE_VAULT_PASSWORD_FILE",
    "ANSIBLE_VAULT_IDENTITY_LIST",
    "OPSLEDGER_CI_SIGNING_KEY",
    "OPSLEDGER_SIGNING_KEY",
    "OPSLEDGER_PUSH_TOKEN",
    # The key the protected branch lets push (GitLab: a file variable; GitHub: checkout's
    # `ssh-key`): a PR holding it could push anything the hook lets CI push, and rewrite
    # history where no hook runs.
    "OPSLEDGER_DEPLOY_KEY",
    "GH_TOKEN",  # the GitHub CLI's token, and the workflow token when a job passes it
    "GITHUB_TOKEN",
    "OPSLEDGER_NOTIFY_",  # prefix: channel URLs carry tokens
    "SSH_AUTH_SOCK",
)


def secrets_in_reach(project: Project, environ: dict[str, str] | None = None) -> list[Problem]:
    """Every secret this process can see that a PR job must not hold."""
    environ = dict(os.environ if environ is None else environ)
    found = []
    for name in sorted(environ):
        if environ[name] and any(
            name == s or (s.endswith("_") and name.startswith(s)) for s in SECRET_VARIABLES
        ):
            found.append(
                Problem(
                    f"the PR job holds the secret variable ${name}",
                    field="environment",
                    fix="give PR jobs no secrets: remove it from the job (GitHub: no "
                    "`secrets.` and no `environment:`; GitLab: make it a protected variable)",
                )
            )
    folder = project.root / "vault-passwords"
    tracked = set(
        git(project.root, "ls-files", "-z", "--", "vault-passwords", check=False).stdout.split("\0")
    )
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        relative = path.relative_to(project.root).as_posix()
        if path.is_file() and relative not in tracked:
            found.append(
                Problem(
                    f"the PR job holds the vault password of {path.name!r}",
                    relative,
                    "vault",
                    "only committed (lab) vault passwords belong in a PR job: the protected "
                    "plan job writes the others",
                )
            )
    return found + _persisted_credentials(project)


# Git config keys through which a checkout hands its credentials to every later git command.
_CREDENTIAL_KEYS = r"^(http\..*\.?extraheader|core\.sshcommand)$"


def _persisted_credentials(project: Project) -> list[Problem]:
    """Push credentials the job's checkout left in git config.

    actions/checkout without `persist-credentials: false` writes its token as an extraheader,
    or its `ssh-key` as core.sshCommand: the PR's code reads `.git/config` like any variable.
    """
    listed = git(project.root, "config", "-z", "--get-regexp", _CREDENTIAL_KEYS, check=False)
    found = []
    for item in listed.stdout.split("\0"):
        key, _, value = item.partition("\n")
        if key.endswith("extraheader") and "authorization" in value.lower():
            what = f"a token in git config {key}"
        elif key == "core.sshcommand" and " -i" in f" {value}":
            what = f"an SSH key in git config {key}"
        else:
            continue
        found.append(
            Problem(
                f"the PR job holds push credentials: {what}",
                field="git config",
                fix="check the PR's code out with `persist-credentials: false` and no `ssh-key`",
            )
        )
    return found


def refuse_secrets(project: Project) -> None:
    """Exit 2 (nothing run) when the job holds a secret a PR's code could read.

    Example:
        refuse_secrets(find_project())
    """
    found = secrets_in_reach(project)
    if found:
        raise OpsledgerError(found, EXIT_INVALID)


@contextlib.contextmanager
def isolated_connections() -> Iterator[Path]:
    """SSH masters of this block in a private folder, closed and removed at its end."""
    folder = Path(tempfile.mkdtemp(prefix="opsledger-cp-"))
    previous = os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR")
    os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("ANSIBLE_SSH_CONTROL_PATH_DIR", None)
        else:
            os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"] = previous
        for socket in folder.iterdir():
            subprocess.run(
                ["ssh", "-O", "exit", "-o", f"ControlPath={socket}", "closing"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        shutil.rmtree(folder, ignore_errors=True)
