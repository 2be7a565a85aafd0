"""Verification targets: inventory hosts as Testinfra hosts, with what each host should be.

The Testinfra suites under tests/infra take their expectations from here — the inventory value
where one is set, otherwise the role default — so one suite verifies a Molecule instance, the
lab, staging or production without a hard-coded copy of any value. Hosts are reached the way
Ansible reaches them (same user, key, known_hosts, SSH master), or through podman for Molecule.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.inventory import InventoryHost, load_inventory
from opsledger.yamlio import load_yaml

PODMAN_CONNECTIONS = {"podman", "containers.podman.podman"}
SSH_CONNECTIONS = {"ssh", "ansible.builtin.ssh", "smart", "paramiko", "ansible.builtin.paramiko"}


def control_path() -> str:
    """Where Testinfra's SSH masters live, the folder made first.

    The same sockets ansible.cfg's control_path makes (`~/.ansible/cp/%C`, or under
    ANSIBLE_SSH_CONTROL_PATH_DIR as a PR job sets it). Ansible's ssh plugin makes the folder,
    but plays run over Mitogen never do, and ssh will not bind a master in a missing folder:
    every verification on a fresh machine failed so.
    """
    folder = Path(os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR") or "~/.ansible/cp").expanduser()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"{folder}/%C"


@functools.cache
def role_defaults(roles_dir: Path) -> dict[str, Any]:
    """Every role's defaults/main.yml merged (role-prefixed names cannot collide)."""
    merged: dict[str, Any] = {}
    for path in sorted(roles_dir.glob("*/defaults/main.yml")):
        merged.update(load_yaml(path, what="role defaults"))
    return merged


class Expectations:
    """What a host should be: its inventory value for a variable, else the role default."""

    def __init__(self, host: InventoryHost, defaults: dict[str, Any]):
        self._host = host
        self._defaults = defaults

    def __getitem__(self, key: str) -> Any:
        if key in self._host:
            return self._host.get(key)
        if key in self._defaults:
            return self._host.render(self._defaults[key])
        raise KeyError(f"{key} is neither set in the inventory nor a role default")

    def keys(self) -> list[str]:
        """Every variable name known for the host: inventory values and role defaults."""
        return sorted({*self._host.keys(), *self._defaults})

    def __iter__(self):
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class Target:
    """One host to verify: its name, groups, expectations and how Testinfra reaches it."""

    name: str
    groups: tuple[str, ...]
    environment: str
    expect: Expectations = field(repr=False)
    hostspec: str
    host_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    # The inventory the host came from: a suite that checks what a host knows of its peers
    # (Prometheus' scrape targets) reads them there.
    inventory: Path | None = None

    @functools.cached_property
    def host(self) -> Any:
        import testinfra

        return testinfra.get_host(self.hostspec, **self.host_kwargs)


def _connection(host: InventoryHost) -> tuple[str, dict[str, Any]]:
    connection = str(host.get("ansible_connection", "ssh"))
    address = str(host.get("ansible_host", host.name))
    if connection in PODMAN_CONNECTIONS:
        return f"podman://{address}", {}
    if connection in ("local", "ansible.builtin.local"):
        return "local://", {"sudo": bool(host.get("ansible_become", False))}
    if connection not in SSH_CONNECTIONS:
        raise OpsledgerError(
            Problem(
                f"cannot verify over connection {connection!r}",
                host.source,
                f"{host.name}.ansible_connection",
                "use ssh, podman or local",
            )
        )
    user = host.get("ansible_user")
    port = host.get("ansible_port")
    spec = f"ssh://{user + '@' if user else ''}{address}{':' + str(port) if port else ''}"
    extra = " ".join(
        str(host.get(k, "")) for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args")
    ).strip()
    extra += f" -o ControlMaster=auto -o ControlPersist=300s -o ControlPath={control_path()}"
    kwargs: dict[str, Any] = {"ssh_extra_args": extra, "sudo": bool(host.get("ansible_become"))}
    if host.get("ansible_ssh_private_key_file"):
        kwargs["ssh_identity_file"] = str(host.get("ansible_ssh_private_key_file"))
    return spec, kwargs


def resolve_targets(
    inventory: Path, *, pattern: str = "all", roles_dir: Path, environment: str | None = None
) -> list[Target]:
    """Hosts an inventory pattern selects, ready for Testinfra.

    Example:
        targets = resolve_targets(Path("inventories/lab"), pattern="db", roles_dir=Path("roles"))
        targets[0].host.service("postgresql").is_running
    """
    inv = load_inventory(inventory)
    env = environment or (inventory.name if inventory.is_dir() else inventory.parent.name)
    defaults = role_defaults(roles_dir.resolve())
    targets = []
    for host in inv.match(pattern):
        spec, kwargs = _connection(host)
        targets.append(
            Target(
                host.name, host.groups, env, Expectations(host, defaults), spec, kwargs, inventory
            )
        )
    if not targets:
        raise OpsledgerError(
            Problem(
                f"pattern {pattern!r} matches no host",
                str(inventory),
                "targets",
                f"use a group or host of this inventory: {', '.join(inv.hosts)}",
            )
        )
    return targets
