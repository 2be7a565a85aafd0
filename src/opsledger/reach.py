"""What a change reaches, read statically: the files Ansible is *seen* to load when it runs.

This is a guess, for showing people what a change touches — which files of a pull request a
change request covers (`ci pr`), what to read before approving. It never binds an approval:
a hostile review found some 25 ways to make Ansible load a file this reading misses (roles
named by computed strings, templated lookups, vars plugins, `group_by` groups, ...), so an
approval binds the whole repository instead (content.py). What it reads:

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
  groups that only exist at run time (`group_by`);
- every file those name literally, wherever it lies in the repository: `vars_files`,
  `include_vars`, `include_tasks`/`import_tasks`, a module's `src:` or script, and
  `lookup`/`query` of files (`file`, `template`, `fileglob`, `first_found`, `ini`, `csvfile`,
  `unvault`). A literal one outside the repository: exit 2.

Files git ignores (machine-local state: fact caches, `__pycache__`) are left out. A symlink is
followed when it stays inside the repository — the link itself and everything it reaches are
listed — and refused (exit 2) when it leaves it or dangles.

The result is a manifest (path -> sha256 of bytes), like content.py's, so it can be compared.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsledger.changes import Change
from opsledger.content import Content, ignored_paths, manifest, read_ansible_cfg
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


@dataclass(frozen=True)
class _Config:
    """What ansible.cfg points Ansible at.

    Paths outside the repository are the machine's, not the change's: they are not hashed.
    """

    roles_paths: list[Path]
    folders: list[Path]  # collections, modules, module_utils, plugins: hashed whole
    secrets: list[Path]  # vault password files


def _config(project: Project) -> _Config:
    parser = read_ansible_cfg(project)
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


_IMPORT_KEYS = {
    f"{prefix}import_playbook" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
}


class _AnyTagLoader(yaml.SafeLoader):
    """YAML as Ansible reads it (anchors, `!unsafe`, `!vault`): tags read as plain values."""


_AnyTagLoader.add_multi_constructor(
    "!",
    lambda loader, _tag, node: (
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    ),
)


def _import_targets(playbook: Path) -> list[str]:
    """What a playbook imports, read the way Ansible reads it (any YAML scalar style).

    A target only known at run time cannot be bound to an approval: exit 2.
    """
    text = playbook.read_text(errors="replace")  # not UTF-8: Ansible cannot load it either
    targets = _IMPORT.findall(text)
    try:
        plays = yaml.load(text, Loader=_AnyTagLoader)  # a SafeLoader subclass
    except yaml.YAMLError:
        plays = None
    for play in plays if isinstance(plays, list) else []:
        if not isinstance(play, dict):
            continue
        for key, value in play.items():
            if key not in _IMPORT_KEYS:
                continue
            if not isinstance(value, str) or "{{" in value or "{%" in value:
                raise OpsledgerError(
                    Problem(
                        f"imports a playbook only known at run time ({str(value)[:60]!r})",
                        str(playbook),
                        "import_playbook",
                        "name the imported playbook literally: an approval must cover it",
                    )
                )
            targets.append(value.strip())
    return targets


def _imported_playbooks(playbook: Path, seen: set[Path]) -> list[Path]:
    """Playbooks pulled in by import_playbook, followed recursively."""
    found = []
    for target in _import_targets(playbook):
        path = (playbook.parent / target).resolve()
        if path.is_file() and path not in seen:
            seen.add(path)
            found += [path, *_imported_playbooks(path, seen)]
    return found


def _role_name(value: Any) -> Any:
    """The role a role entry or include/import_role names; free-form `name=x` included."""
    if isinstance(value, dict):
        return value.get("role", value.get("name"))
    if isinstance(value, str) and "=" in value:
        args = _parse_kv(value)
        if args is None:  # unparseable: keep the text, it resolves to nothing
            return value
        return args.get("name", args.get("role", value))
    return value


def _parse_kv(value: str) -> dict[str, Any] | None:
    """Ansible's own reading of free-form `k=v` arguments; None when it cannot read them."""
    from ansible.parsing.splitter import parse_kv

    try:
        return parse_kv(value)
    except Exception:  # unparseable: Ansible cannot load it either
        return None


def _names_in(data: Any) -> Iterator[str]:
    """Role names a playbook, task file or role meta file refers to."""
    if isinstance(data, list):
        for item in data:
            yield from _names_in(item)
    elif isinstance(data, dict):
        for key, value in data.items():
            if key in _ROLE_MODULES:
                name = _role_name(value)
                if name is not None:
                    yield str(name)
            elif key in ("roles", "dependencies") and isinstance(value, list):
                for entry in value:
                    name = _role_name(entry)
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


def _role_like(folder: Path) -> bool:
    return any((folder / part).is_dir() for part in ("tasks", "meta", "handlers", "vars"))


def _roles(
    declared: tuple[str, ...], playbooks: list[Path], search: list[Path], basedirs: list[Path]
) -> list[Path]:
    """The role folders the run can load: declared and named ones, followed to the end.

    Names resolve as Ansible resolves them: in the roles folders, then in the playbooks' own
    folders. A name that resolves nowhere in the repository (other than a collection's
    `ns.coll.role`) may still be found by Ansible somewhere static reading does not know, so
    like a name only known at run time it brings in every role.
    """
    every = sorted({d for folder in search if folder.is_dir() for d in folder.iterdir()})
    every += sorted(
        {d for b in basedirs if b.is_dir() for d in b.iterdir() if d.is_dir() and _role_like(d)}
    )
    found: dict[Path, None] = {}
    names, dynamic = _referenced(playbooks)
    pending = set(declared) | names
    while pending and not dynamic:
        name = pending.pop()
        for folder in [*search, *basedirs]:
            role = folder / name
            if role.is_dir() and (folder in search or _role_like(role)):
                if role not in found:
                    found[role] = None
                    more, dyn = _referenced(_yaml_files(role))
                    pending |= more - {p.name for p in found}
                    dynamic = dynamic or dyn
                break
        else:
            if "." not in name.strip("./"):
                dynamic = True
    return list(dict.fromkeys(d for d in every if d.is_dir())) if dynamic else list(found)


_FILE_LOOKUP = re.compile(
    r"""\b(?:lookup|query|q)\(\s*['"](?:ansible\.builtin\.)?"""
    r"""(file|template|fileglob|first_found|ini|csvfile|unvault)['"]\s*,\s*['"]([^'"]+)['"]"""
)
_PATH_KEYS = {"vars_files"}
_PATH_MODULES = {
    f"{prefix}{name}": arg
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name, arg in {
        "include_vars": ("file", "dir", "_raw_params"),
        "include_tasks": ("file", "_raw_params"),
        "import_tasks": ("file", "_raw_params"),
        "template": ("src",),
        "copy": ("src",),
        "assemble": ("src",),
        "unarchive": ("src",),
        "script": ("cmd", "_raw_params"),
    }.items()
}


def _module_args(value: Any) -> dict[str, Any]:
    """A module's arguments, dict or free form (`include_vars: x.yml`, `copy: src=a dest=b`)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.split():
        return {}
    if "=" not in value.split()[0]:
        return {"_raw_params": value.split()[0]}
    return _parse_kv(value) or {}


# Modules whose `src` is on the managed host when remote_src is set (assemble: by default).
_REMOTE_SRC_DEFAULT = {"copy": False, "unarchive": False, "assemble": True}


def _path_strings(data: Any) -> Iterator[str]:
    """Every literal file path a YAML document makes Ansible load (see the module docstring)."""
    if isinstance(data, list):
        for item in data:
            yield from _path_strings(item)
    elif isinstance(data, dict):
        for key, value in data.items():
            if key in _PATH_KEYS:
                for entry in value if isinstance(value, list) else [value]:
                    for path in entry if isinstance(entry, list) else [entry]:
                        if isinstance(path, str):
                            yield path
            elif key in _PATH_MODULES:
                args = _module_args(value)
                short = key.rsplit(".", 1)[-1]
                remote = args.get("remote_src", _REMOTE_SRC_DEFAULT.get(short, False))
                if str(remote).lower() not in ("true", "yes", "1", "on"):
                    for name in _PATH_MODULES[key]:
                        if isinstance(args.get(name), str) and "://" not in args[name]:
                            yield args[name].split()[0] if name != "src" else args[name]
            yield from _path_strings(value)
    elif isinstance(data, str) and ("lookup(" in data or "query(" in data or "q(" in data):
        yield from (match.group(2) for match in _FILE_LOOKUP.finditer(data))


def _add_referenced_files(collector: _Collector, basedirs: list[Path]) -> None:
    """Hash what the content's YAML names literally, wherever it lies in the repository.

    Ansible resolves a relative path from the file's folder, its role's `files/`, `templates/`,
    `vars/`, `tasks/` and the role itself, then the playbook's folder: every candidate that
    exists counts. A path only known at run time is left to the read watch (readguard.py).
    """
    done: set[str] = set()
    pending = [r for r in collector.files if r.endswith((".yml", ".yaml"))]
    while pending:
        relative = pending.pop()
        if relative in done:
            continue
        done.add(relative)
        file = collector.files.get(relative)
        if file is None:
            continue
        try:
            data = yaml.load(file.read_text(errors="replace"), Loader=_AnyTagLoader)
        except yaml.YAMLError:
            continue  # Ansible cannot load it either; its own bytes are hashed
        for target in set(_path_strings(data)):
            if "{{" in target or "{%" in target or not target.strip():
                continue
            candidates = _candidates(collector.real_root / relative, target, basedirs)
            if any(char in target for char in "*?[") and not Path(target).is_absolute():
                candidates = [m for c in candidates for m in sorted(c.parent.glob(c.name))]
            for candidate in candidates:
                lexical = os.path.relpath(os.path.abspath(candidate), collector.lexical_root)
                if lexical == ".." or lexical.startswith("../"):
                    if candidate.exists() or Path(target).is_absolute():
                        raise OpsledgerError(
                            Problem(
                                f"loads {target}, which lies outside the repository",
                                relative,
                                "path",
                                "keep what a run loads in the repository, where an approval "
                                "covers it",
                            )
                        )
                    continue
                if candidate.exists() or candidate.is_symlink():
                    before = set(collector.files)
                    collector.add(candidate)
                    pending += [r for r in collector.files if r not in before]


def _candidates(file: Path, target: str, basedirs: list[Path]) -> list[Path]:
    if Path(target).is_absolute():
        return [Path(target)]
    folder = file.parent
    role = (
        folder.parent if folder.name in ("tasks", "handlers", "vars", "defaults", "meta") else None
    )
    bases = [folder]
    if role is not None:
        bases += [role / part for part in ("files", "templates", "vars", "tasks")] + [role]
    bases += basedirs + [b / part for b in basedirs for part in ("files", "templates", "vars")]
    return [base / target for base in dict.fromkeys(bases)]


def reached_files(project: Project, change: Change, runbook: Runbook) -> Content:
    """The files a change is seen to reach (see the module docstring); never binds approvals.

    Raises OpsledgerError (exit 2) for a symlink leading out of the repository or dangling.

    Example:
        result = validate_change(project, "CHG-0001")
        sorted(reached_files(project, result.change, result.runbook).files)
    """
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
        *_roles(runbook.roles, naming, search, basedirs),
    ]:
        collector.add(path)
    _add_referenced_files(collector, basedirs)
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
