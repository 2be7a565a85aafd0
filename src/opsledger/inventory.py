"""An environment's inventory, read with Ansible's own parser.

Using Ansible's InventoryManager and VariableManager (rather than reading hosts.yml ourselves)
means host patterns, group_vars/host_vars precedence and templating resolve exactly as they will
when `ansible-playbook` runs: the lab, change targets and Testinfra expectations all see the same
values the roles consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import OpsledgerError, Problem


@dataclass(frozen=True)
class InventoryHost:
    """One host with its groups and its merged, templated variables."""

    name: str
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.vars.get(key, default)


@dataclass(frozen=True)
class Inventory:
    """An environment's hosts; `hosts` keeps the inventory's order."""

    source: Path
    hosts: dict[str, InventoryHost]
    _manager: Any = field(repr=False, compare=False)

    def match(self, pattern: str) -> list[InventoryHost]:
        """Hosts an Ansible pattern (`db`, `all:!app`, `lab-db*`) selects, in inventory order."""
        names = {h.name for h in self._manager.get_hosts(pattern)}
        return [h for n, h in self.hosts.items() if n in names]

    def group(self, name: str) -> list[InventoryHost]:
        return [h for h in self.hosts.values() if name in h.groups]


def _plain(value: Any) -> Any:
    """Strip Ansible's tagged types so results compare and serialise like ordinary data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _check_yaml(path: Path) -> None:
    """Report YAML syntax errors with a line number; Ansible only warns and loads nothing."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise OpsledgerError(
            Problem(
                f"invalid YAML: {getattr(exc, 'problem', exc)}",
                str(path),
                where,
                "fix the syntax (yamllint shows details)",
            )
        ) from None
    if not isinstance(data, dict):
        raise OpsledgerError(
            Problem(
                "an inventory must be a mapping of groups (usually `all:`)",
                str(path),
                "top level",
                "start the file with `all:` and nest `children:`/`hosts:`",
            )
        )


def load_inventory(source: Path, *, template: bool = True) -> Inventory:
    """Load an inventory file or directory; raise OpsledgerError when it has no hosts.

    Example:
        inv = load_inventory(Path("inventories/lab/hosts.yml"))
        [h.name for h in inv.match("db")]  # ['lab-db1', 'lab-db2']
    """
    if not source.exists():
        raise OpsledgerError(
            Problem("inventory not found", str(source), fix="create it or choose another --env")
        )
    for f in [source] if source.is_file() else sorted(source.glob("hosts.y*ml")):
        _check_yaml(f)

    try:
        return _load(source, template)
    except OpsledgerError:
        raise
    except Exception as exc:  # AnsibleError and friends: say which inventory, not a traceback
        raise OpsledgerError(
            Problem(
                f"Ansible cannot load it: {exc}",
                str(source),
                fix="run `ansible-inventory -i <this path> --list` to see the details",
            )
        ) from None


def _load(source: Path, template: bool) -> Inventory:
    # Imported here: ansible takes ~0.3 s to import and most CLI commands never need it.
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(source)])
    variables = VariableManager(loader=loader, inventory=manager)
    hosts: dict[str, InventoryHost] = {}
    for host in manager.get_hosts("all"):
        raw = variables.get_vars(host=host)
        merged: dict[str, Any] = {}
        templar = Templar(loader=loader, variables=raw)
        for key, value in raw.items():
            if key in ("hostvars", "vars", "groups", "omit"):
                continue
            if template:
                try:
                    value = templar.template(value)
                except Exception as exc:  # a broken var should name itself, not crash
                    raise OpsledgerError(
                        Problem(
                            f"cannot template: {exc}",
                            str(source),
                            f"{host.name}.{key}",
                            "fix the variable's Jinja expression",
                        )
                    ) from None
            merged[key] = _plain(value)
        groups = tuple(sorted(g.name for g in host.get_groups() if g.name not in ("all",)))
        hosts[host.name] = InventoryHost(host.name, groups, merged)
    if not hosts:
        raise OpsledgerError(
            Problem(
                "inventory defines no hosts",
                str(source),
                fix="add hosts under `all: children: <group>: hosts:`",
            )
        )
    return Inventory(source=source, hosts=hosts, _manager=manager)
