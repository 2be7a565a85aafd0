"""Where a project's top-level parts live on disk (inventories, roles, playbooks, policies).

A project is a directory with `ansible.cfg` and `inventories/`. Machine-local state that must
never reach git (lab keys, lab known_hosts, locks, fact cache) lives under `.opsledger/`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem, shown

DEFAULT_ENVIRONMENT = "lab"
_ENV = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # as change.schema.json says


@dataclass(frozen=True)
class Project:
    """Paths of one opsledger project checkout."""

    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / ".opsledger"

    @property
    def lab_state_dir(self) -> Path:
        return self.state_dir / "lab"

    @property
    def ansible_cfg(self) -> Path:
        return self.root / "ansible.cfg"

    def inventory_dir(self, environment: str = DEFAULT_ENVIRONMENT) -> Path:
        return self.root / "inventories" / environment

    def inventory_file(self, environment: str = DEFAULT_ENVIRONMENT) -> Path:
        return self.inventory_dir(environment) / "hosts.yml"

    def require_environment(self, environment: str) -> Path:
        """The environment's inventory file; a clear error (exit 2) when there is none.

        The name must be a folder name of inventories/ (`../x` would load another inventory).
        """
        inventory = self.inventory_file(environment)
        named = isinstance(environment, str) and _ENV.fullmatch(environment)
        if not named or not inventory.is_file():
            known = sorted(p.parent.name for p in self.root.glob("inventories/*/hosts.yml"))
            raise OpsledgerError(
                Problem(
                    f"no inventory for environment {shown(environment, 40)}",
                    str(inventory),
                    "env",
                    f"use one of: {', '.join(known)}",
                )
            )
        return inventory

    def ansible_env(self) -> dict[str, str]:
        """Environment for ansible subprocesses: this project's ansible.cfg, whatever the cwd."""
        env = dict(os.environ)
        env["ANSIBLE_CONFIG"] = str(self.ansible_cfg)
        return env


def find_project(start: Path | None = None) -> Project:
    """Find the project containing `start` (default: $OPSLEDGER_PROJECT or the cwd).

    Walking up like git does lets every command run from any subdirectory.
    """
    env_root = os.environ.get("OPSLEDGER_PROJECT")
    here = Path(start or env_root or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "ansible.cfg").is_file() and (candidate / "inventories").is_dir():
            return Project(candidate)
    raise OpsledgerError(
        Problem(
            f"no opsledger project at or above {here}",
            fix="run the command inside a checkout (a folder with ansible.cfg and inventories/) "
            "or set OPSLEDGER_PROJECT",
        )
    )
