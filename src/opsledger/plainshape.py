"""An inventory's shape read without Ansible, for inventories plain enough to be sure of it.

A fresh clone (every CI job) has no kept shape (inventorycache.py), and reading one with
Ansible costs a `change validate` more than everything else it does: importing ansible-core
alone is ~180 ms of CPU. Most inventories are a `hosts.yml` of groups directly under `all`,
with hosts, vars, and `group_vars/`/`host_vars/` files. For those, `plain_shape` builds the
shape (hosts in Ansible's order, the groups of each, every group name) as Ansible's YAML
inventory plugin and InventoryData would, and checks every file Ansible would read at least
as strictly as Ansible reads it. Whatever it is not sure of, it does not judge: it returns
None and the caller reads the inventory with Ansible, as before, which then accepts it or
says what is wrong in its own words. Among what makes it step aside:

- settings that change how Ansible reads inventories: an `ANSIBLE_*` variable or an
  ansible.cfg key outside a short list of ones that cannot (`[inventory]`, vars plugins,
  `duplicate_dict_key` other than `error`, a vault password file setting, ...); a
  `group_vars/`/`host_vars/` folder in the working directory (Ansible reads those too);
- a source that is not a plain, non-executable `hosts.yml`/`hosts.yaml` file;
- in hosts.yml: a group with child groups below `all` (Ansible orders their hosts by memory
  address: no other reader can reproduce it), `ungrouped` written out, `plugin`, a host
  pattern (`web[1:3]`), a port, a host named like a group or like localhost, a group or
  variable name Ansible would warn about, `ansible_group_priority`, a section that is not a
  mapping;
- any vars file under group_vars/ or host_vars/ (every one, not only those Ansible would
  read) that is not UTF-8 YAML of plain data (`!vault` values aside) with unique text keys,
  a mapping of valid variable names at the top, no aliases, within yamlio's bounds;
- a vault password file that is missing, empty, executable or itself encrypted.

Nothing is decrypted, templated or kept here: a host's variables are still read by Ansible
when first asked for. tests/unit/test_plain_shape.py compares this reader with Ansible's on
the repository's inventories and on generated ones, files included: where it answers, the
answer is Ansible's, and it never accepts what Ansible refuses.
"""

from __future__ import annotations

import configparser
import keyword
import os
import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from opsledger.errors import OpsledgerError
from opsledger.inventorycache import InventoryShape, _ansible_configs
from opsledger.yamlio import _BASE, MAX_BYTES, _check_nodes, _Problems, _scan, load_yaml

_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_LOCALHOST = {"localhost", "127.0.0.1", "::1"}
# ansible.utils.vars.validate_variable_name refuses these too (the test compares the lists)
_JINJA_WORDS = frozenset({"False", "None", "True", "false", "none", "not", "true"})
# ansible.vars.reserved._RESERVED_NAMES: VariableManager.get_vars warns on a host variable so
# named, and opsledger refuses what Ansible warns about (the test compares the lists)
_RESERVED = frozenset({
    "action", "always", "any_errors_fatal", "args", "async", "async_val", "become",
    "become_exe", "become_flags", "become_method", "become_user", "block", "changed_when",
    "check_mode", "collections", "connection", "cycler", "debugger", "delay", "delegate_facts",
    "delegate_to", "dict", "diff", "environment", "fact_path", "failed_when", "force_handlers",
    "gather_facts", "gather_timeout", "handlers", "hosts", "ignore_errors",
    "ignore_unreachable", "joiner", "lipsum", "local_action", "lookup", "loop", "loop_control",
    "loop_with", "max_fail_percentage", "module_defaults", "name", "namespace", "no_log",
    "notify", "now", "omit", "order", "poll", "port", "post_tasks", "pre_tasks", "q", "query",
    "range", "register", "remote_user", "rescue", "retries", "roles", "run_once", "serial",
    "strategy", "tags", "tasks", "throttle", "timeout", "undef", "until", "vars", "vars_files",
    "vars_prompt", "when", "with_",
})  # fmt: skip
_SECTIONS = frozenset({"hosts", "children", "vars"})
_STR = "tag:yaml.org,2002:str"

# ansible.cfg: sections and [defaults] keys that change nothing in how an inventory, its vars
# files or its vault are read. Anything else: Ansible reads the inventory.
_SAFE_SECTIONS = frozenset({"privilege_escalation", "ssh_connection", "paramiko_connection",
                            "persistent_connection", "colors", "diff", "galaxy"})  # fmt: skip
_SAFE_DEFAULTS = frozenset({
    "inventory", "roles_path", "collections_path", "collections_paths", "forks", "gathering",
    "fact_caching", "fact_caching_connection", "fact_caching_timeout", "interpreter_python",
    "retry_files_enabled", "callback_result_format", "callbacks_enabled", "stdout_callback",
    "callback_plugins", "strategy_plugins", "strategy", "library", "module_utils",
    "task_timeout", "host_key_checking", "nocows", "nocolor", "force_color",
    "vault_identity_list", "force_handlers", "remote_user", "timeout", "private_key_file",
    "duplicate_dict_key",
})  # fmt: skip
_SAFE_ENV = frozenset({
    "ANSIBLE_CONFIG", "ANSIBLE_VAULT_IDENTITY_LIST", "ANSIBLE_NOCOLOR", "ANSIBLE_FORCE_COLOR",
    "ANSIBLE_NOCOWS", "ANSIBLE_DUPLICATE_YAML_DICT_KEY",
})  # fmt: skip


def plain_shape(source: Path, vault_ids: list[str]) -> InventoryShape | None:
    """The shape Ansible would build for this inventory, or None: let Ansible read it.

    `vault_ids` as inventory.vault_ids gives them ("id@password-file").

    Example:
        plain_shape(Path("inventories/lab/hosts.yml"), vault_ids(source))
    """
    if not (_settings_plain(source) and _vault_plain(vault_ids) and _source_plain(source)):
        return None
    try:
        data = load_yaml(source, expect=dict, what="inventory")
    except OpsledgerError:
        return None
    shape = _shape(data)
    if shape is None or not _vars_files_plain(source.parent):
        return None
    return shape


def _settings_plain(source: Path) -> bool:
    """Whether nothing in the environment or ansible.cfg changes how inventories are read."""
    if any(name.startswith("ANSIBLE_") and name not in _SAFE_ENV for name in os.environ):
        return False
    if os.environ.get("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error") != "error":
        return False
    try:
        cwd = Path.cwd()
        if cwd.stat().st_mode & 0o002:  # Ansible skips its ansible.cfg, with a warning
            return False
    except OSError:
        return False
    if any((cwd / name).exists() for name in ("group_vars", "host_vars")):
        return False  # Ansible reads the playbook folder's (here: the working directory's)
    resolved = source.resolve()
    project = [p / "ansible.cfg" for p in resolved.parents if (p / "ansible.cfg").is_file()]
    for config in [*_ansible_configs(), *project[:1]]:  # every one Ansible might read
        if config.exists() and not _config_plain(config):
            return False
    return True


def _config_plain(config: Path) -> bool:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read_string(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return False
    for section in parser.sections():
        keys = set(parser[section])
        if section == "defaults":
            if keys - _SAFE_DEFAULTS:
                return False
            if parser[section].get("duplicate_dict_key", "error").strip() != "error":
                return False
        elif section not in _SAFE_SECTIONS:
            return False
    return not set(parser.defaults())  # keys before any section reach every section


def _vault_plain(vault_ids: list[str]) -> bool:
    """Every password file Ansible would load is a readable, non-empty, plain text file."""
    for entry in vault_ids:
        if "@prompt" in entry:
            continue  # inventory._use_vault never prompts: it skips them too
        file = Path(entry.split("@", 1)[1] if "@" in entry else entry)
        try:
            if file.is_symlink() or not file.is_file() or os.access(file, os.X_OK):
                return False
            text = file.read_bytes().strip()
        except OSError:
            return False
        if not text or text.startswith(b"$ANSIBLE_VAULT"):
            return False
    return True


def _source_plain(source: Path) -> bool:
    """A hosts.yml/hosts.yaml file Ansible's YAML plugin reads (not a script, not a folder)."""
    if source.name not in ("hosts.yml", "hosts.yaml") or source.is_symlink():
        return False
    try:
        return source.is_file() and not os.access(source, os.X_OK)
    except OSError:
        return False


def _var_name(name: Any) -> bool:
    """A name validate_variable_name accepts, and no Python keyword either (stricter)."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and name.isascii()
        and name not in _JINJA_WORDS
        and name not in _RESERVED  # Ansible warns: a warning is a refusal (vars too: stricter)
        and not keyword.iskeyword(name)
        and name != "ansible_group_priority"  # Ansible converts it with int()
    )


def _vars_plain(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(map(_var_name, value)))


class _Groups:
    """Groups and hosts as InventoryData holds them, for inventories with no nested groups."""

    def __init__(self) -> None:
        self.hosts: dict[str, list[str]] = {"all": [], "ungrouped": []}  # group -> its hosts
        self.children: list[str] = ["ungrouped"]  # of `all`, in the order added
        self.host_groups: dict[str, list[str]] = {}  # host -> its groups, in the order added

    def add_group(self, name: str) -> None:
        self.hosts.setdefault(name, [])

    def add_host(self, host: str, group: str) -> None:
        groups = self.host_groups.setdefault(host, [])
        if host not in self.hosts[group]:
            self.hosts[group].append(host)
            groups.append(group)


def _shape(data: dict[str, Any]) -> InventoryShape | None:
    """What the YAML inventory plugin and InventoryData make of `data`, or None if unsure."""
    if not data or "plugin" in data:
        return None
    groups = _Groups()
    for name, group in data.items():
        if not _group(groups, name, group, top=True):
            return None
    for name in list(groups.hosts):  # reconcile_inventory: parentless groups go under all
        if name not in ("all", "ungrouped") and name not in groups.children:
            groups.children.append(name)
    names = set(groups.hosts)
    if not groups.host_groups or names & set(groups.host_groups):
        return None  # no hosts, or a name both a group and a host (Ansible warns)
    order: dict[str, None] = {}
    for group in ["all", *groups.children]:  # all.get_hosts(): itself, then its children
        order.update(dict.fromkeys(groups.hosts[group]))
    memberships = {}
    for host in order:
        direct = set(groups.host_groups[host]) - {"all"}
        memberships[host] = frozenset({"all", *(direct or {"ungrouped"})})
    return InventoryShape(tuple(order), memberships, frozenset(names))


def _group(groups: _Groups, name: Any, data: Any, *, top: bool) -> bool:
    """Add one group as YamlInventory._parse_group does; False where unsure."""
    if not isinstance(name, str) or not _GROUP.match(name) or name == "ungrouped":
        return False
    if name == "all" and not top:
        return False
    if data is None:
        groups.add_group(name)
        return True
    if not isinstance(data, dict) or set(data) - _SECTIONS:
        return False
    if not all(isinstance(data[k], dict) for k in data):  # strings and nulls: Ansible's rules
        return False
    groups.add_group(name)
    for section, entries in data.items():
        if section == "vars" and not _vars_plain(entries):
            return False
        if section == "children":
            if entries and name != "all":
                return False  # nested groups: see the module's docstring
            for child, child_data in entries.items():
                if child == "all" or not _group(groups, child, child_data, top=False):
                    return False
                if child not in groups.children:
                    groups.children.append(child)
        if section == "hosts":
            for host, host_vars in entries.items():
                if not isinstance(host, str) or not _HOST.match(host) or host in _LOCALHOST:
                    return False
                if not _vars_plain(host_vars):
                    return False
                groups.add_host(host, name)
    return True


def _vars_files_plain(folder: Path) -> bool:
    """Every file under group_vars/ and host_vars/ is one Ansible reads without complaint."""
    for name in ("group_vars", "host_vars"):
        top = folder / name
        if top.is_symlink() or (top.exists() and not top.is_dir()):
            return False
        if not top.exists():
            continue
        for root, dirs, files in os.walk(top):
            for entry in [*dirs, *files]:
                path = Path(root) / entry
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    return False
            if not all(_vars_file_plain(Path(root) / f) for f in files):
                return False
    return True


def _vars_file_plain(path: Path) -> bool:
    """Plain YAML (vault-encrypted values aside) holding a mapping of variables, or nothing."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return False
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if text.startswith("\ufeff") or text.lstrip().startswith("$ANSIBLE_VAULT"):
        return False
    problems = _Problems(str(path))
    scanner = _BASE(text)
    loader = _BASE(text)
    try:
        _scan(scanner, problems)  # nesting and alias bounds, as every file opsledger reads
        if problems.found:
            return False
        node = loader.get_single_node()
        if node is None:
            return True
        if not isinstance(node, MappingNode) or not _vault_as_text(node, set()):
            return False
        _check_nodes(node, "", problems, loader)
    except Exception:  # any failure of the strict reader: Ansible decides
        return False
    finally:
        scanner.dispose()
        loader.dispose()
    keys = [key.value for key, _ in node.value]
    return not problems.found and all(map(_var_name, keys))


def _vault_as_text(node: Node, seen: set[int]) -> bool:
    """Retag `!vault` scalars as text: Ansible keeps them encrypted until they are used.

    False on an alias (a node met twice): every value is checked where it is written; and
    on a `!vault` in a key (see _vaulted) or one that is not vault text.
    """
    if id(node) in seen:
        return False
    seen.add(id(node))
    if isinstance(node, ScalarNode):
        if node.tag == "!vault":
            # Ansible resolves the text as if untagged and refuses what is not a string
            # (`!vault 1`, `!vault ""`); a vault header begins with `$`, which nothing resolves
            if not node.value.startswith("$ANSIBLE_VAULT;"):
                return False
            node.tag = _STR
        return True
    if isinstance(node, SequenceNode):
        return all(_vault_as_text(item, seen) for item in node.value)
    if isinstance(node, MappingNode):
        return all(
            not _vaulted(k) and _vault_as_text(k, seen) and _vault_as_text(v, seen)
            for k, v in node.value
        )
    return False


def _vaulted(node: Node) -> bool:
    """Whether a mapping key holds a `!vault` anywhere.

    Ansible decrypts a key at once (to hash it), so a key it cannot decrypt is a refusal,
    where a value is only decrypted when used.
    """
    if isinstance(node, ScalarNode):
        return node.tag == "!vault"
    if isinstance(node, SequenceNode):
        return any(map(_vaulted, node.value))
    if isinstance(node, MappingNode):
        return any(_vaulted(k) or _vaulted(v) for k, v in node.value)
    return False
