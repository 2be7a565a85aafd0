"""Upgrades backup-first and reversible: what a run is told, and what it hands back.

Before a run, opsledger tells the playbook which of its hosts need a verified backup before any
package changes, and of which type — `upgrade_backup` of the services in `policies/dr.yml`,
for the hosts their `targets` select (`opsledger_upgrade_backup: {host: {service, type}}`).
Playbooks that change packages (os-patch, pg-minor-upgrade, package-rollback) hand back, with
`set_stats`, an `opsledger_maintenance` mapping: the backup taken (label, type, where), each
host's package difference (upgraded, downgraded, installed, removed, held, not kept) and what a
rollback restored. The run record keeps it as `maintenance`, the host record reads it.
"""

from __future__ import annotations

import json
from typing import Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.inventory import load_inventory
from opsledger.layout import policy_file
from opsledger.project import Project

# What a playbook may hand back under opsledger_maintenance, and the record keeps.
SECTIONS = ("backup", "packages", "restored", "upgrade", "hardware", "switchover")
_MAX_BYTES = 512 * 1024  # a record is evidence, not a package database dump


def upgrade_backups(project: Project, environment: str) -> dict[str, dict[str, str]]:
    """Hosts of the environment that need a verified backup before package changes.

    Example:
        upgrade_backups(find_project(), "lab")  # {"lab-db1": {"service": "postgres", ...}}
    """
    from opsledger.drill import load_services  # drill imports the run machinery

    inventory = load_inventory(project.require_environment(environment))
    found: dict[str, dict[str, str]] = {}
    for service in load_services(project).values():
        if not service.upgrade_backup:
            continue
        try:
            hosts = inventory.match(service.targets)
        except OpsledgerError as err:
            if selects_somewhere(project, service.targets):
                hosts = []  # the service has no hosts in this environment: none to back up
            else:  # a misspelt group would skip every backup: fail closed
                why = err.problems[0].message if err.problems else "does not resolve"
                raise OpsledgerError(
                    Problem(
                        f"{service.targets!r} selects no host in any environment ({why}): which "
                        "hosts need a backup before an upgrade cannot be known",
                        policy_file("dr.yml"),
                        f"services.{service.name}.targets",
                        "name the group of the service's hosts (opsledger policy check)",
                    )
                ) from err
        for host in hosts:
            # plain str: Ansible's tagged host names are not data a YAML dumper knows
            found.setdefault(
                str(host.name), {"service": str(service.name), "type": str(service.upgrade_backup)}
            )
    return found


def selects_somewhere(project: Project, targets: str) -> bool:
    """Whether some environment's inventory has hosts for `targets`."""
    for hosts_file in sorted(project.root.glob("inventories/*/hosts.yml")):
        try:
            if load_inventory(hosts_file, template=False).match(targets):
                return True
        except OpsledgerError:
            continue
    return False


def run_vars(project: Project, environment: str) -> dict[str, Any]:
    """Extra variables every run of a change gets besides its params.

    Plain data from the reviewed policies, never from the change.
    """
    return {"opsledger_upgrade_backup": upgrade_backups(project, environment)}


def maintenance_of(data: dict[str, Any] | None) -> dict[str, Any]:
    """The `opsledger_maintenance` a playbook handed back, as the record keeps it.

    Only the known sections, each a mapping (host -> details); anything else, or a hand-back
    too large to be evidence, is dropped with a note rather than failing the record.
    """
    handed = (data or {}).get("opsledger_maintenance")
    if not isinstance(handed, dict):
        return {}
    kept = {k: v for k, v in handed.items() if k in SECTIONS and isinstance(v, dict)}
    dropped = sorted(str(k) for k in handed if k not in kept)
    size = len(json.dumps(kept, default=str))
    if size > _MAX_BYTES:
        return {"note": f"handed back {size} bytes, more than a record keeps ({_MAX_BYTES})"}
    if dropped:
        kept["note"] = f"not kept (unknown or not a mapping): {', '.join(dropped)}"
    return kept
