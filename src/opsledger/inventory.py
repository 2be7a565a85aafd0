"""An environment's inventory, read with Ansible's own parser.

Using Ansible's InventoryManager and VariableManager (rather than reading hosts.yml ourselves)
means host patterns, group_vars/host_vars precedence and templating resolve exactly as they will
when `ansible-playbook` runs: the lab, change targets and Testinfra expectations all see the same
values the roles consume. Which hosts are in which groups (the shape) is kept between commands
(inventorycache.py), and read without Ansible where an inventory is plain enough to be sure of
Ansible's answer (plainshape.py): a host's variables are always Ansible's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.errors import OpsledgerError, Problem, one_line
from opsledger.hostpattern import pattern_problems, select
from opsledger.inventorycache import InventoryShape, load_shape, save_shape, shape_key
from opsledger.steady import remembered
from opsledger.yamlio import load_yaml


class InventoryHost:
    """One host with its groups and its merged variables, templated on first use.

    Templating is lazy: a variable may hold a lookup (a file on the controller, a vault) that
    only matters to the play that uses it, so only the values asked for are rendered.
    """

    def __init__(
        self,
        name: str,
        groups: tuple[str, ...],
        raw: dict[str, Any] | None,
        templar: Any,
        resolve: Callable[[], tuple[dict[str, Any], Any]] | None = None,
    ):
        self.name = name
        self.groups = groups
        self._raw_value = raw
        self._templar_value = templar
        self._resolve = resolve  # (raw, templar) on first use when raw is None
        self._cache: dict[str, Any] = {}
        self.source = ""

    @property
    def _raw(self) -> dict[str, Any]:
        """The host's merged variables, resolved by Ansible when first asked for.

        A thousand hosts' variables cost seconds, and matching targets needs none of them.
        """
        if self._raw_value is None:
            assert self._resolve is not None
            self._raw_value, self._templar_value = self._resolve()
        return self._raw_value

    @property
    def _templar(self) -> Any:
        self._raw  # noqa: B018 - resolves it
        return self._templar_value

    def __repr__(self) -> str:
        return f"InventoryHost({self.name!r}, groups={self.groups!r})"

    def __contains__(self, key: str) -> bool:
        return key in self._raw

    def keys(self) -> list[str]:
        return [k for k in self._raw if k not in _MAGIC]

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._raw:
            return default
        if key not in self._cache:
            try:
                self._cache[key] = _plain(self._templar.template(self._raw[key]))
            except Exception as exc:  # a broken var should name itself, not crash
                raise OpsledgerError(
                    Problem(
                        f"cannot template: {exc}",
                        self.source,
                        f"{self.name}.{key}",
                        "fix the variable's Jinja expression",
                    )
                ) from None
        return self._cache[key]

    def render(self, value: Any) -> Any:
        """Template a value (e.g. a role default) with this host's variables."""
        return _plain(self._templar.template(value))

    @property
    def vars(self) -> dict[str, Any]:
        """Every variable, templated (renders all lookups: prefer get())."""
        return {k: self.get(k) for k in self.keys()}


_plugins_ready = False
_MAGIC = {"hostvars", "vars", "groups", "omit", "environment", "playbook_dir"}


@dataclass(frozen=True)
class Inventory:
    """An environment's hosts; `hosts` keeps the inventory's order.

    Names, matching and groups come from its shape (inventorycache.py), the same whether
    Ansible built it in this process or it was kept from an earlier one.
    """

    source: Path
    hosts: dict[str, InventoryHost]
    shape: InventoryShape = field(repr=False, compare=False)
    _loader: Any = field(default=None, repr=False, compare=False)
    # pattern -> (its problems, the hosts' names it selects): `match`, once per pattern for
    # this inventory (an audit matches each change's targets; most changes share a few).
    # Not an argument: a copy with other hosts (dataclasses.replace) starts with its own.
    _matched: dict[str, tuple[list[tuple[str, str]], frozenset[str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def names(self) -> set[str]:
        """Every host and group name (what a host pattern may name)."""
        return {*self.hosts, *self.shape.groups}

    def match(self, pattern: str) -> list[InventoryHost]:
        """Hosts a pattern (`db`, `all:!app`, `lab-db*`) selects, in inventory order.

        Only names and the documented operators (hostpattern.py) are accepted: Ansible alone
        would read `@file`, compile `~regex` and crash on `db[5]`.
        """
        found = self._matched.get(pattern) if isinstance(pattern, str) else None
        if found is None:
            problems = pattern_problems(pattern, self.names)
            names = (
                frozenset()
                if problems
                else frozenset(select(pattern, self.shape.memberships, self.shape.groups))
            )
            found = (problems, names)
            if isinstance(pattern, str):
                self._matched[pattern] = found
        problems, names = found
        if problems:
            raise OpsledgerError(
                [Problem(message, str(self.source), "targets", fix) for message, fix in problems]
            )
        return [h for n, h in self.hosts.items() if n in names]

    def ancestors(self, host: str) -> list[str]:
        """Every group the host belongs to, directly or through parent groups."""
        return sorted(self.shape.memberships[host])

    def group(self, name: str) -> list[InventoryHost]:
        return [h for h in self.hosts.values() if name in h.groups]


class _Verbatim:
    """Stand-in templar that returns values as written (load_inventory(template=False))."""

    def template(self, value: Any) -> Any:
        return value


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
    """Report YAML errors with a line number; Ansible only warns and loads nothing."""
    data = load_yaml(path, expect=object, what="inventory")
    if not isinstance(data, dict):
        raise OpsledgerError(
            Problem(
                "an inventory must be a mapping of groups (usually `all:`)",
                str(path),
                "top level",
                "start the file with `all:` and nest `children:`/`hosts:`",
            )
        )


_CACHE: dict[tuple, Inventory] = {}


def _outside_links(folder: Path) -> list[Problem]:
    """Symlinks in the inventory that lead out of the project (the folder with ansible.cfg).

    Ansible would read them, and its errors quote what it read: an inventory must not be a way
    to load, or print, a file from elsewhere on the controller.
    """
    resolved = folder.resolve()
    root = next((p for p in (resolved, *resolved.parents) if (p / "ansible.cfg").is_file()), None)
    root = root or resolved
    problems = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and (not path.exists() or not path.resolve().is_relative_to(root)):
            problems.append(
                Problem(
                    "is a symlink out of the repository (or to nothing)",
                    str(path),
                    "inventory",
                    "copy what it needs into the repository (git must record it)",
                )
            )
    return problems


def load_inventory(source: Path, *, template: bool = True) -> Inventory:
    """Load an inventory file or directory; raise OpsledgerError when it has no hosts.

    Inside `steady_tree()` (audits) loaded once, without checking its files again.

    Example:
        inv = load_inventory(Path("inventories/lab/hosts.yml"))
        [h.name for h in inv.match("db")]  # ['lab-db1', 'lab-db2']
    """
    return remembered(
        ("inventory", str(source), template), lambda: _load_inventory(source, template)
    )


def _load_inventory(source: Path, template: bool) -> Inventory:
    if not source.exists():
        raise OpsledgerError(
            Problem("inventory not found", str(source), fix="create it or choose another --env")
        )
    folder = source if source.is_dir() else source.parent
    if problems := _outside_links(folder):
        raise OpsledgerError(problems)
    stamp = tuple(
        sorted((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in folder.rglob("*.y*ml"))
    )
    # ansible.cfg says so for ansible-playbook; this process may have found no ansible.cfg.
    # Set before the keys are taken: they include every ANSIBLE_ variable.
    os.environ.setdefault("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error")
    # Read on every load (a small file): a broken ansible.cfg is refused each time, and an
    # edit of it or of the environment is a different inventory for this process too.
    ids = vault_ids(source)
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("ANSIBLE_")))
    key = (str(source.resolve()), template, stamp, tuple(ids), settings)
    if key in _CACHE:  # audits and decisions load the same inventory many times
        return _CACHE[key]
    other = _CACHE.get((key[0], not template, *key[2:]))
    if other is not None:  # the same files read the other way: Ansible's work is not redone
        _CACHE[key] = _variant(other, template)
        return _CACHE[key]
    kept_as = shape_key(source, ids)
    shape = load_shape(source, kept_as) if kept_as else None
    if shape is None and kept_as:  # plain enough to be sure of Ansible's answer without it
        from opsledger.plainshape import plain_shape  # a kept shape needs none of it

        shape = plain_shape(source, ids)
        if shape is not None and kept_as == shape_key(source, vault_ids(source)):
            save_shape(source, kept_as, shape)
    if shape is not None:  # read by Ansible before, or as Ansible reads it: not again
        inventory = _from_shape(source, template, shape)
    else:
        inventory = _parsed(source, template)
        # Kept only if nothing moved while Ansible read it: the key must name what it read.
        if kept_as and kept_as == shape_key(source, vault_ids(source)):
            save_shape(source, kept_as, inventory.shape)
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[key] = inventory
    return inventory


def _from_shape(source: Path, template: bool, shape: InventoryShape) -> Inventory:
    """The inventory of a kept shape: Ansible reads it only when a host's variable is asked."""
    parsed: list[Inventory] = []

    def resolve(name: str) -> tuple[dict[str, Any], Any]:
        if not parsed:
            parsed.append(_parsed(source, template))
        host = parsed[0].hosts.get(name)
        if host is None:  # the files moved since the shape was read: read them again
            raise OpsledgerError(
                Problem(
                    f"host {name} is gone from the inventory while it was read",
                    str(source),
                    fix="run the command again",
                )
            )
        return host._raw, host._templar

    hosts: dict[str, InventoryHost] = {}
    for name in shape.order:
        groups = tuple(sorted(shape.memberships[name] - {"all"}))
        hosts[name] = InventoryHost(name, groups, None, None, lambda n=name: resolve(n))
        hosts[name].source = str(source)
    return Inventory(source=source, hosts=hosts, shape=shape)


def _parsed(source: Path, template: bool) -> Inventory:
    """The inventory as Ansible reads it, its files checked; OpsledgerError when it cannot."""
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


def _variant(loaded: Inventory, template: bool) -> Inventory:
    """The same hosts and variables, templated or verbatim (load_inventory's `template`).

    Loading an inventory (parsing it, resolving every host's variables) is the expensive part,
    and it does not depend on templating: at 1,000 hosts a decision loaded it twice.
    """
    if loaded._loader is None:  # a kept shape: Ansible has not read it in this process
        return _from_shape(loaded.source, template, loaded.shape)
    from ansible.template import Templar

    def resolve(host: InventoryHost) -> tuple[dict[str, Any], Any]:
        raw = host._raw
        return raw, Templar(loader=loaded._loader, variables=raw) if template else _Verbatim()

    hosts: dict[str, InventoryHost] = {}
    for name, host in loaded.hosts.items():
        entry = InventoryHost(name, host.groups, None, None, lambda h=host: resolve(h))
        entry.source = host.source
        hosts[name] = entry
    return Inventory(source=loaded.source, hosts=hosts, shape=loaded.shape,
                     _loader=loaded._loader)  # fmt: skip


def environment_vault_id(inventory: Path) -> str | None:
    """The vault id of the inventory's environment that CI wrote, unless already listed.

    For `inventories/<env>/...`: `<env>@<project>/vault-passwords/<env>` when that file exists
    and neither ansible.cfg nor the environment names an `<env>` id already. ansible.cfg
    names only the lab's (committed) password; the pipelines write staging's and production's
    to `vault-passwords/<env>` from their secret store (README, "Secrets"), and nothing handed
    that file to Ansible — the first encrypted staging or production variable stopped every
    run with "no vault secrets found". A symlink is not a password file.
    """
    inventory = inventory.resolve()
    folder = next((f for f in (inventory, *inventory.parents) if f.parent.name == "inventories"),
                  None)  # fmt: skip
    if folder is None:
        return None
    password = folder.parent.parent / "vault-passwords" / folder.name
    if not password.is_file() or password.is_symlink():
        return None
    if any(i.split("@", 1)[0] == folder.name for i in _listed_vault_ids(inventory)):
        return None
    return f"{folder.name}@{password}"


def vault_ids(source: Path) -> list[str]:
    """Vault ids ("id@password-file"): ansible.cfg's, the environment's, the inventory's own.

    Relative password files are resolved against ansible.cfg's folder, so inventories load the
    same from any working directory; the inventory's environment adds its password file CI
    wrote (`environment_vault_id`).
    """
    extra = environment_vault_id(source)
    return _listed_vault_ids(source) + ([extra] if extra else [])


def _listed_vault_ids(source: Path) -> list[str]:
    """The vault ids ansible.cfg and the environment name, their files resolved."""
    import os

    from opsledger.ansiblecfg import read_ansible_cfg_file

    ids = [i for i in os.environ.get("ANSIBLE_VAULT_IDENTITY_LIST", "").split(",") if i]
    base = None
    for folder in [source.resolve(), *source.resolve().parents]:
        cfg = folder / "ansible.cfg"
        if cfg.is_file():
            parser = read_ansible_cfg_file(cfg)
            listed = parser.get("defaults", "vault_identity_list", fallback="")
            ids += [i.strip() for i in listed.split(",") if i.strip()]
            base = folder
            break
    if os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE"):
        ids.append(f"default@{os.environ['ANSIBLE_VAULT_PASSWORD_FILE']}")
    resolved = []
    for entry in ids:
        label, _, path = entry.rpartition("@") if "@" in entry else ("default", "", entry)
        if base and not Path(path).is_absolute() and not path.startswith("prompt"):
            path = str(base / path)
        if path.startswith("prompt") or Path(path).exists():
            resolved.append(f"{label}@{path}")
    return resolved


def _use_vault(loader: Any, source: Path) -> None:
    """Give Ansible the vault secrets this inventory may need (no prompting).

    What `CLI.setup_vault_secrets` does for ansible-playbook, with ansible.parsing.vault
    directly: importing `ansible.cli` for it (argument parsers, the CLI classes) cost every
    command that reads an inventory more than the secrets themselves.
    """
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultSecretsContext, get_file_vault_secret
    from ansible.utils.display import Display

    ids = [i for i in vault_ids(source) if "@prompt" not in i]
    if C.DEFAULT_VAULT_PASSWORD_FILE:  # vault_password_file of the ansible.cfg Ansible read
        ids.append(f"{C.DEFAULT_VAULT_IDENTITY}@{C.DEFAULT_VAULT_PASSWORD_FILE}")
    secrets: list[tuple[str, Any]] = []
    failure: AnsibleError | None = None
    for entry in ids:
        label, path = entry.split("@", 1)
        try:
            secret = get_file_vault_secret(filename=path, vault_id=label, loader=loader)
            secret.load()
        except AnsibleError as exc:  # as ansible-playbook: warn, try the next password
            Display().warning(f"Error getting vault password file ({label}): {exc}")
            failure = exc
            continue
        secrets.append((label or C.DEFAULT_VAULT_IDENTITY, secret))
        loader.set_vault_secrets(secrets)  # a later password file may itself be vaulted
    if failure is not None and not secrets:
        raise failure
    loader.set_vault_secrets(secrets)
    # The context is process-wide and can be set once: extend it for later projects.
    current = VaultSecretsContext.current(optional=True)
    if current is None:
        VaultSecretsContext.initialize(VaultSecretsContext(list(secrets)))
    else:
        current.secrets.extend(s for s in secrets if s not in current.secrets)


@contextlib.contextmanager
def _warnings_kept() -> Iterator[list[str]]:
    """Ansible's warnings while reading an inventory, kept instead of printed to stderr.

    A half-parsed inventory ("Skipping 'all' as this is not a valid group definition") is an
    input problem like any other: one `error:` line each, never Ansible's own lines.
    """
    kept: list[str] = []
    try:
        from ansible._internal._display_utils import DeferredWarningContext
    except ImportError:  # another Ansible: its warnings print as they did
        yield kept
        return
    with DeferredWarningContext(variables={}) as context:
        yield kept
    kept += [w.event.msg for w in context.get_warnings()]


def _unreadable(source: Path, warned: list[str]) -> OpsledgerError:
    return OpsledgerError(
        [
            Problem(
                f"Ansible cannot read it: {one_line(text, 200)}",
                str(source),
                "inventory",
                "fix the inventory (ansible-inventory --list -i FILE shows it)",
            )
            for text in dict.fromkeys(warned)
        ]
    )


def _host_vars_names(source: Path) -> set[str]:
    """The hosts whose own variables Ansible reads: names `host_vars/` has an entry for.

    A file with or without .yml/.yaml/.json, or a folder.
    """
    folder = (source if source.is_dir() else source.parent) / "host_vars"
    try:
        entries = [e.name for e in os.scandir(folder)]
    except OSError:
        return set()
    names = set(entries)
    for entry in entries:
        for suffix in (".yml", ".yaml", ".json"):
            if entry.endswith(suffix):
                names.add(entry[: -len(suffix)])
    return names


def _make_fact_cache_folder() -> None:
    """Make the folder of a file-based fact cache before Ansible's cache plugin looks for it.

    The plugin (VariableManager builds it) checks that the folder exists and then makes it,
    failing when it exists: processes reading the inventory at once on a fresh checkout (the
    workers of one `verify`) raced, and the loser was refused with "Error in 'jsonfile' cache
    plugin while trying to create cache dir". Made first, with exist_ok, nobody races.
    """
    from ansible import constants as C

    plugin = str(getattr(C, "CACHE_PLUGIN", "") or "")
    where = getattr(C, "CACHE_PLUGIN_CONNECTION", None)
    if not where or plugin.rsplit(".", 1)[-1] not in ("jsonfile", "pickle", "yaml"):
        return
    with contextlib.suppress(OSError):  # Ansible's own check then says what is wrong
        Path(os.path.expanduser(os.path.expandvars(str(where)))).mkdir(parents=True, exist_ok=True)


def _load(source: Path, template: bool) -> Inventory:
    # Imported here: ansible takes ~0.3 s to import and most CLI commands never need it.
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    from opsledger.ansibleroutes import use_sectioned_routing

    global _plugins_ready
    if not _plugins_ready:  # lookups and filters in inventory vars need Ansible's plugins
        use_sectioned_routing()  # before the finder reads ansible.builtin's routing table
        init_plugin_loader()
        _plugins_ready = True
    _make_fact_cache_folder()
    loader = DataLoader()
    _use_vault(loader, source)

    def templar_of(raw: dict[str, Any]) -> Any:
        return Templar(loader=loader, variables=raw) if template else _Verbatim()

    def resolve(host: Any) -> tuple[dict[str, Any], Any]:
        with _warnings_kept() as late:
            raw = variables.get_vars(host=host)
        if late:
            raise _unreadable(source, late)
        return raw, templar_of(raw)

    with _warnings_kept() as warned:  # vars files warn too (a file that is not UTF-8)
        manager = InventoryManager(loader=loader, sources=[str(source)])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts: dict[str, InventoryHost] = {}
        # Variables are resolved when first asked for, but every vars file Ansible would read
        # is read now, so a broken one is refused here as before: one host of each set of
        # groups (group_vars), and every host with a host_vars entry.
        own_vars = _host_vars_names(source)
        sets_seen: set[frozenset[str]] = set()
        for host in manager.get_hosts("all"):
            every = frozenset(g.name for g in host.get_groups())
            groups = tuple(sorted(g for g in every if g != "all"))
            entry = InventoryHost(host.name, groups, None, None, lambda h=host: resolve(h))
            if every not in sets_seen or host.name in own_vars:
                sets_seen.add(every)
                raw = variables.get_vars(host=host)
                entry = InventoryHost(host.name, groups, raw, templar_of(raw))
            entry.source = str(source)
            hosts[host.name] = entry
    if warned:  # a part Ansible skipped: the hosts a reviewer reads are not those that run
        raise _unreadable(source, warned)
    if not hosts:
        raise OpsledgerError(
            Problem(
                "inventory defines no hosts",
                str(source),
                fix="add hosts under `all: children: <group>: hosts:`",
            )
        )
    every = {h.name: frozenset(g.name for g in h.get_groups()) for h in manager.get_hosts("all")}
    shape = InventoryShape(tuple(hosts), every, frozenset(manager.groups))
    return Inventory(source=source, hosts=hosts, shape=shape, _loader=loader)
