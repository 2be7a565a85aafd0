"""An inventory's shape (its hosts in order, the groups of each) kept between commands.

Matching a change's targets needs only which hosts are in which groups, yet reading that with
Ansible's parser cost every `change validate` and `decide` about a second (importing Ansible,
its plugin routing table, parsing the inventory and every vars file). The shape Ansible built
is kept in `.opsledger/cache/inventory.json` (localcache: authenticated by the clone's key,
ignored by git), keyed by a digest of everything Ansible read to build it:

- every file under the inventory's folder (hosts.yml, group_vars/, host_vars/), by content;
- the ansible.cfg files Ansible may read (`$ANSIBLE_CONFIG`, the working directory's, the
  user's, /etc/ansible's), by content, and every `ANSIBLE_*` environment variable;
- the ansible-core release (its release.py) and this module's format;
- the vault ids the inventory is loaded with, and whether each password file is there and
  empty (a cold load refuses an empty or missing one).

Any change to one of them is a different key: the shape is read with Ansible again, checked
as before (a broken file is refused), and kept. A cache file that does not verify is ignored.

No variable is kept, so no secret reaches the disk: a host's variables (where vault-encrypted
values live) are read with Ansible when first asked for. Not kept at all: an inventory with a
whole-file vaulted file (its names could come from ciphertext, readable only with the
password) or an executable vault password file (a script's answer has no content to key).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from opsledger.localcache import load_cache, save_cache
from opsledger.project import Project

# Bumped when a reader that keeps shapes changes what it accepts: a shape the plain reader
# kept before it learned to step aside (reserved variable names, `!vault` keys) is a miss.
FORMAT = "inventory-shape-2"
CACHE = "inventory"
_ENTRIES_KEPT = 16


@dataclass(frozen=True)
class InventoryShape:
    """Hosts in inventory order, every group each is in (`all` included), every group name."""

    order: tuple[str, ...]
    memberships: dict[str, frozenset[str]]
    groups: frozenset[str]


def _project(source: Path) -> Project | None:
    """The project whose cache holds this inventory: the folder with ansible.cfg above it."""
    resolved = source.resolve()
    root = next((p for p in resolved.parents if (p / "ansible.cfg").is_file()), None)
    return Project(root) if root is not None else None


def _ansible_configs() -> list[Path]:
    """Where Ansible looks for its configuration (ansible.config.manager.find_ini_config_file).

    A world-writable working directory's ansible.cfg is skipped by Ansible: its path is then
    keyed as such, so that a chmod is a different key too.
    """
    places = []
    if "ANSIBLE_CONFIG" in os.environ:
        named = Path(os.environ["ANSIBLE_CONFIG"]).expanduser()
        places.append(named / "ansible.cfg" if named.is_dir() else named)
    try:
        cwd = Path.cwd()
        writable = cwd.stat().st_mode & 0o002
        places.append(cwd / ("world-writable" if writable else "") / "ansible.cfg")
    except OSError:
        pass
    places += [Path("~/.ansible.cfg").expanduser(), Path("/etc/ansible/ansible.cfg")]
    return places


def shape_key(source: Path, vault_ids: list[str]) -> str | None:
    """The digest of everything Ansible reads to build this inventory, or None: not kept.

    Example:
        shape_key(Path("inventories/lab/hosts.yml"), ["lab@/srv/p/vault-passwords/lab"])
    """
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(b"%d:%s\0%d:" % (len(label), label.encode(), len(data)) + data)

    add("format", FORMAT.encode())
    source = source.resolve()
    add("source", str(source).encode())
    folder = source if source.is_dir() else source.parent
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if data.lstrip().startswith(b"$ANSIBLE_VAULT"):
                return None
            add(f"file {path.relative_to(folder)}", hashlib.sha256(data).digest())
    try:  # Ansible reads the playbook folder's (the working directory's) vars files too
        cwd = Path.cwd()
    except OSError:
        return None
    for name in ("group_vars", "host_vars"):
        top = cwd / name
        if top.is_symlink() or (top.exists() and not top.is_dir()):
            return None
        for path in sorted(top.rglob("*")) if top.is_dir() else []:
            if path.is_symlink():
                return None
            if path.is_file():
                data = path.read_bytes()
                if data.lstrip().startswith(b"$ANSIBLE_VAULT"):
                    return None  # as a whole-file vault under the inventory's folder
                add(f"cwd {path}", hashlib.sha256(data).digest())
    for config in _ansible_configs():
        try:
            add(f"config {config}", config.read_bytes())
        except OSError:
            add(f"config {config}", b"\0absent")
    for name in sorted(n for n in os.environ if n.startswith("ANSIBLE_")):
        add(f"env {name}", os.environ[name].encode(errors="surrogateescape"))
    spec = importlib.util.find_spec("ansible")
    if spec is None or not spec.submodule_search_locations:
        return None
    release = Path(next(iter(spec.submodule_search_locations))) / "release.py"
    add("ansible", release.read_bytes() if release.is_file() else b"\0absent")
    for entry in vault_ids:
        password = Path(entry.split("@", 1)[1]) if "@" in entry else None
        state = b"\0absent"
        if password is not None and password.is_file():
            if os.access(password, os.X_OK):
                return None
            state = b"empty" if not password.read_bytes().strip() else b"present"
        add(f"vault {entry}", state)
    return digest.hexdigest()


def load_shape(source: Path, key: str) -> InventoryShape | None:
    """The shape kept for this inventory under this key, or None (none, stale, unreadable).

    Example:
        shape = load_shape(source, shape_key(source, vault_ids(source)))
    """
    project = _project(source)
    if project is None:
        return None
    entry = load_cache(project, CACHE).get(str(source.resolve()))
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    try:
        hosts = entry["hosts"]
        memberships = {str(name): frozenset(map(str, groups)) for name, groups in hosts}
        order = tuple(str(name) for name, _ in hosts)
        groups = frozenset(map(str, entry["groups"]))
    except (KeyError, TypeError, ValueError):
        return None
    if len(memberships) != len(order) or not all("all" in g for g in memberships.values()):
        return None
    return InventoryShape(order, memberships, groups)


def save_shape(source: Path, key: str, shape: InventoryShape) -> None:
    """Keep the shape Ansible built for this inventory under this key (never fails).

    Example:
        save_shape(source, key, InventoryShape(("lab-db1",), {...}, frozenset({"all", "db"})))
    """
    project = _project(source)
    if project is None:
        return
    entries = load_cache(project, CACHE)
    entries.pop(str(source.resolve()), None)
    while len(entries) >= _ENTRIES_KEPT:  # oldest first: dicts keep insertion order
        entries.pop(next(iter(entries)))
    entries[str(source.resolve())] = {
        "key": key,
        "hosts": [[name, sorted(shape.memberships[name])] for name in shape.order],
        "groups": sorted(shape.groups),
    }
    save_cache(project, CACHE, entries)
