"""The content of a change: everything Ansible can load when the change runs, and its hash.

An approval signs this hash; editing any of these files after the approval voids it:

- `changes/<ID>/change.yml`;
- every file of the runbook's folder, the playbooks it imports (e.g. site.yml), and next to
  each of those playbooks the folders Ansible looks in (`group_vars/`, `host_vars/`,
  `library/`, `module_utils/`, `collections/`, `*_plugins/`, `templates/`, `files/`, ...);
- the roles the runbook declares and every role they or the playbooks name (`roles:`,
  `include_role`, `import_role`, meta `dependencies`), followed to the end; a role name that is
  only known at run time (a template) brings in every role;
- `ansible.cfg` and every folder it points Ansible at that lies in the repository
  (`collections_path`, `library`, `module_utils`, `filter_plugins`, `lookup_plugins`,
  `callback_plugins`, `vars_plugins`, ...), and its vault password files;
- the environment's whole inventory folder: every group's and host's variables, including
  groups that only exist at run time (`group_by`).

Files git ignores (machine-local state: fact caches, `__pycache__`) are not content: a change
cannot carry them. A symlink inside the content is followed when it stays inside the
repository — the link itself and everything it reaches are hashed — and refused (exit 2) when
it leaves it. What static reading cannot see (a path computed at run time) is caught by apply,
which records every file Ansible actually read (see readguard.py).

The hash is sha256 over the sorted (path, sha256 of bytes) list, so the manifest can also say
*which* file changed when an approval is void.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsledger.changes import Change
from opsledger.errors import OpsledgerError, Problem
from opsledger.project import Project
from opsledger.runbooks import Runbook
from opsledger.yamlio import parse_yaml

_IMPORT = re.compile(r"import_playbook:\s*['\"]?([^'\"\s]+)")
# [defaults] settings that name folders Ansible loads code or data from.
CONFIG_PATHS = (
    "roles_path",
    "collections_path",
    "collections_paths",
    "library",
    "module_utils",
    "action_plugins",
    "become_plugins",
    "cache_plugins",
    "callback_plugins",
    "cliconf_plugins",
    "connection_plugins",
    "doc_fragment_plugins",
    "filter_plugins",
    "httpapi_plugins",
    "inventory_plugins",
    "lookup_plugins",
    "netconf_plugins",
    "strategy_plugins",
    "terminal_plugins",
    "test_plugins",
    "vars_plugins",
)
# Folders Ansible searches next to a playbook (its "basedir").
PLAYBOOK_DIRS = (
    "group_vars",
    "host_vars",
    "library",
    "module_utils",
    "collections",
    "templates",
    "files",
    "tasks",
    "vars",
    "handlers",
    *(p for p in CONFIG_PATHS if p.endswith("_plugins")),
)
_ROLE_MODULES = {
    f"{prefix}{verb}_role"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for verb in ("include", "import")
}


@dataclass(frozen=True)
class Content:
    sha256: str
    files: dict[str, str]  # project-relative path -> sha256 of its bytes (or of a link target)

    def changed_since(self, other: dict[str, str]) -> list[str]:
        """Paths added, removed or edited compared with an earlier manifest."""
        paths = set(self.files) | set(other)
        return sorted(p for p in paths if self.files.get(p) != other.get(p))


def manifest(files: dict[str, str]) -> Content:
    """The content of a manifest: sha256 over the sorted (path, sha256) lines."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{files[relative]}\n".encode())
    return Content(digest.hexdigest(), dict(sorted(files.items())))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Collector:
    """Walks paths without trusting symlinks.

    Each link is hashed as a link, then followed only when it stays inside the repository.
    """

    def __init__(self, project: Project) -> None:
        self.lexical_root = Path(os.path.abspath(project.root))
        self.real_root = Path(os.path.realpath(project.root))
        self.files: dict[str, Path] = {}  # relative path -> real path to read
        self.links: dict[str, str] = {}  # relative link path -> relative target
        self.seen: set[Path] = set()

    def _relative(self, path: Path) -> tuple[str, str]:
        lexical = os.path.relpath(os.path.abspath(path), self.lexical_root)
        real = os.path.relpath(os.path.realpath(path), self.real_root)
        return Path(lexical).as_posix(), Path(real).as_posix()

    def add(self, path: Path) -> None:
        if not path.exists() and not path.is_symlink():
            return
        lexical, real = self._relative(path)
        if lexical.startswith("../"):
            return  # outside the project by its own path (e.g. ~/.ansible): machine config
        if not Path(os.path.realpath(path)).exists():
            raise OpsledgerError(
                Problem(
                    f"a symlink points at {real}, which does not exist",
                    lexical,
                    "symlink",
                    "remove the symlink or create what it points at",
                )
            )
        if real == ".." or real.startswith("../"):
            raise OpsledgerError(
                Problem(
                    f"a symlink leads outside the repository (to {os.path.realpath(path)})",
                    lexical,
                    "symlink",
                    "replace the symlink by the files themselves, or point it inside the "
                    "repository",
                )
            )
        if lexical != real:
            self.links[lexical] = real
            path = self.real_root / real
        resolved = Path(os.path.realpath(path))
        if resolved in self.seen:
            return
        self.seen.add(resolved)
        if resolved.is_dir():
            for child in sorted(path.iterdir()):
                self.add(child)
        elif resolved.is_file():
            self.files[real] = resolved


def ignored_paths(project: Project, paths: list[str]) -> set[str]:
    """The paths git ignores (never tracked): machine-local files a change cannot carry."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "-C", str(project.root), "check-ignore", "--stdin", "-z"],
        input="\0".join(paths) + "\0",
        capture_output=True,
        text=True,
    )
    if proc.returncode > 1:  # not a git repository: only Python's caches are machine-local
        return {p for p in paths if "__pycache__" in p.split("/") or p.endswith(".pyc")}
    return {p for p in proc.stdout.split("\0") if p}


@dataclass(frozen=True)
class _Config:
    """What ansible.cfg points Ansible at.

    Paths outside the repository are the machine's, not the change's: they are not hashed.
    """

    roles_paths: list[Path]
    folders: list[Path]  # collections, modules, module_utils, plugins: hashed whole
    secrets: list[Path]  # vault password files


def _config(project: Project) -> _Config:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(project.ansible_cfg)
    except configparser.Error as exc:
        raise OpsledgerError(
            Problem(f"unreadable: {exc}", str(project.ansible_cfg), fix="fix its syntax")
        ) from None
    base = project.ansible_cfg.parent

    def paths(key: str) -> list[Path]:
        value = parser.get("defaults", key, fallback="")
        return [base / os.path.expanduser(e.strip()) for e in value.split(os.pathsep) if e.strip()]

    secrets = []
    listed = parser.get("defaults", "vault_identity_list", fallback="").split(",")
    for entry in [*listed, parser.get("defaults", "vault_password_file", fallback="")]:
        file = entry.strip().rpartition("@")[2]
        if file and not file.startswith("prompt"):
            secrets.append(base / os.path.expanduser(file))
    folders = [p for key in CONFIG_PATHS if key != "roles_path" for p in paths(key)]
    return _Config(paths("roles_path"), folders, secrets)


def _imported_playbooks(playbook: Path, seen: set[Path]) -> list[Path]:
    """Playbooks pulled in by import_playbook, followed recursively."""
    found = []
    for target in _IMPORT.findall(playbook.read_text(errors="replace")):  # not UTF-8: no imports
        path = (playbook.parent / target).resolve()
        if path.is_file() and path not in seen:
            seen.add(path)
            found += [path, *_imported_playbooks(path, seen)]
    return found


def _names_in(data: Any) -> Iterator[str]:
    """Role names a playbook, task file or role meta file refers to."""
    if isinstance(data, list):
        for item in data:
            yield from _names_in(item)
    elif isinstance(data, dict):
        for key, value in data.items():
            if key in _ROLE_MODULES:
                name = value.get("name") if isinstance(value, dict) else value
                if name is not None:
                    yield str(name)
            elif key in ("roles", "dependencies") and isinstance(value, list):
                for entry in value:
                    name = (
                        entry.get("role", entry.get("name")) if isinstance(entry, dict) else entry
                    )
                    if isinstance(name, str):
                        yield name
            yield from _names_in(value)


def _yaml_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def _referenced(files: list[Path]) -> tuple[set[str], bool]:
    """Role names the files name, and whether one of them is only known at run time."""
    names: set[str] = set()
    dynamic = False
    for file in files:
        try:
            data = parse_yaml(file.read_text())
        except (OpsledgerError, yaml.YAMLError, UnicodeDecodeError, OSError):
            dynamic = True  # cannot read it: assume it may name any role
            continue
        for name in _names_in(data):
            if "{{" in name or "{%" in name:
                dynamic = True
            names.add(name)
    return names, dynamic


def _roles(declared: tuple[str, ...], playbooks: list[Path], search: list[Path]) -> list[Path]:
    """The role folders the run can load: declared and named ones, followed to the end."""
    every = sorted({d for folder in search if folder.is_dir() for d in folder.iterdir()})
    found: dict[Path, None] = {}
    names, dynamic = _referenced(playbooks)
    pending = set(declared) | names
    while pending and not dynamic:
        name = pending.pop()
        for folder in search:
            role = folder / name
            if role.is_dir() and role not in found:
                found[role] = None
                more, dyn = _referenced(_yaml_files(role))
                pending |= more - {p.name for p in found}
                dynamic = dynamic or dyn
                break
    return [d for d in every if d.is_dir()] if dynamic else list(found)


def change_content(project: Project, change: Change, runbook: Runbook, hosts: list[str]) -> Content:
    """Hash everything Ansible can load when the change runs (see the module docstring).

    Raises OpsledgerError (exit 2) for a symlink leading out of the repository.

    Example:
        result = validate_change(project, "CHG-0001")
        change_content(project, result.change, result.runbook, result.hosts).sha256
    """
    del hosts  # the whole inventory of the environment counts, whichever hosts run
    config = _config(project)
    playbooks = [runbook.playbook, *_imported_playbooks(runbook.playbook, set())]
    basedirs = sorted({p.parent for p in playbooks})
    adjacent = [d / name for d in basedirs for name in PLAYBOOK_DIRS]
    naming = [*_yaml_files(runbook.path), *playbooks]
    naming += [f for d in adjacent if d.name in ("tasks", "handlers") for f in _yaml_files(d)]
    search = _unique([*(d / "roles" for d in basedirs), *config.roles_paths])
    collector = _Collector(project)
    for path in [
        change.file,
        runbook.path,
        *playbooks,
        *adjacent,
        project.ansible_cfg,
        *config.folders,
        *config.secrets,
        project.inventory_dir(change.environment),
        *_roles(runbook.roles, naming, search),
    ]:
        collector.add(path)
    ignored = ignored_paths(project, sorted(collector.files))
    for link, target in collector.links.items():
        if target in ignored or link in ignored:
            raise OpsledgerError(
                Problem(
                    f"a symlink points at {target}, which git ignores (machine-local)",
                    link,
                    "symlink",
                    "point it at files the repository carries",
                )
            )
    files = {
        relative: _sha(path.read_bytes())
        for relative, path in collector.files.items()
        if relative not in ignored
    }
    files |= {link: _sha(f"symlink:{target}".encode()) for link, target in collector.links.items()}
    return manifest(files)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
