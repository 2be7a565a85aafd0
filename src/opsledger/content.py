"""The content of a change: every file that decides what runs on its targets, and its hash.

An approval records this hash; editing any of these files after approval voids it, while
edits elsewhere (docs, another role, another environment's inventory) leave it valid:

- `changes/<ID>/change.yml`;
- every file of the runbook's folder, and any playbook its playbook imports (e.g. site.yml);
- every file of the roles the runbook declares (`roles:` in runbook.yml);
- `ansible.cfg` (it changes how tasks run: handlers, become, connection settings), and the
  project's Ansible plugins it loads (`plugins/`: modules runbooks call act on the targets);
- the inventory files that apply to the target hosts: the environment's `hosts.yml`, the
  `group_vars` of every group a target belongs to (ancestors and `all` included) and the
  targets' `host_vars`.

The hash is sha256 over the sorted (path, sha256 of bytes) list, so the manifest can also say
*which* file changed when an approval is void.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from opsledger.changes import Change
from opsledger.inventory import load_inventory
from opsledger.project import Project
from opsledger.runbooks import Runbook

_IMPORT = re.compile(r"import_playbook:\s*['\"]?([^'\"\s]+)")


@dataclass(frozen=True)
class Content:
    sha256: str
    files: dict[str, str]  # project-relative path -> sha256 of its bytes

    def changed_since(self, other: dict[str, str]) -> list[str]:
        """Paths added, removed or edited compared with an earlier manifest."""
        paths = set(self.files) | set(other)
        return sorted(p for p in paths if self.files.get(p) != other.get(p))


def _files_under(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _imported_playbooks(playbook: Path, seen: set[Path]) -> list[Path]:
    """Playbooks pulled in by import_playbook, followed recursively."""
    found = []
    for target in _IMPORT.findall(playbook.read_text(errors="replace")):  # not UTF-8: no imports
        path = (playbook.parent / target).resolve()
        if path.is_file() and path not in seen:
            seen.add(path)
            found += [path, *_imported_playbooks(path, seen)]
    return found


def _inventory_files(project: Project, change: Change, hosts: list[str]) -> list[Path]:
    folder = project.inventory_dir(change.environment)
    inventory = load_inventory(project.inventory_file(change.environment), template=False)
    groups = {"all"}
    for name in hosts:
        groups |= set(inventory.hosts[name].groups)
        groups |= {g for g in inventory.ancestors(name)}
    files = [project.inventory_file(change.environment)]
    for group in sorted(groups):
        files += _files_under(folder / "group_vars" / group)
        files += [p for p in (folder / "group_vars").glob(f"{group}.y*ml") if p.is_file()]
    for name in hosts:
        files += _files_under(folder / "host_vars" / name)
        files += [p for p in (folder / "host_vars").glob(f"{name}.y*ml") if p.is_file()]
    return files


def change_content(project: Project, change: Change, runbook: Runbook, hosts: list[str]) -> Content:
    """Hash everything that decides what the change runs on its hosts.

    Example:
        result = validate_change(project, "CHG-0001")
        change_content(project, result.change, result.runbook, result.hosts).sha256
    """
    paths = [change.file, *_files_under(runbook.path)]
    paths += _imported_playbooks(runbook.playbook, set())
    for role in runbook.roles:
        paths += _files_under(project.root / "roles" / role)
    paths.append(project.ansible_cfg)
    paths += _files_under(project.root / "plugins")
    paths += _inventory_files(project, change, hosts)
    root = project.root.resolve()
    files = {}
    for path in paths:
        if path.is_file():
            relative = path.resolve().relative_to(root).as_posix()
            files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{files[relative]}\n".encode())
    return Content(digest.hexdigest(), dict(sorted(files.items())))
