"""The inventory shape read without Ansible (plainshape.py) is Ansible's, or nothing.

Compared with Ansible's own read (inventory._parsed: InventoryManager, VariableManager, the
vault) on the repository's inventories and on generated ones with group_vars/host_vars
files: where the plain reader answers, Ansible accepts the inventory and builds the very
same shape (hosts in order, the groups of each, every group name); it never accepts what
Ansible refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import opsledger
from opsledger.errors import OpsledgerError
from opsledger.inventory import _parsed, vault_ids
from opsledger.plainshape import _JINJA_WORDS, _RESERVED, plain_shape

from ..conftest import REPO_ROOT
from .test_inventory_cache import lab_inventory_copy


def _ansible(source: Path) -> Any:
    """Ansible's answer: the shape, or the problems it reports."""
    try:
        return _parsed(source, True).shape
    except OpsledgerError as exc:
        return [str(p) for p in exc.problems]


@pytest.mark.parametrize("env", ["lab", "staging", "production"])
def test_the_repositorys_inventories_are_read_plainly_as_ansible_reads_them(env):
    source = REPO_ROOT / "inventories" / env / "hosts.yml"
    shape = plain_shape(source, vault_ids(source))
    assert shape is not None  # the lab's vaulted group_vars included
    assert shape == _ansible(source)


def test_the_jinja_words_are_ansibles():
    from ansible._internal._templating._jinja_bits import JINJA_KEYWORDS

    assert set(JINJA_KEYWORDS) <= _JINJA_WORDS


def test_the_reserved_names_are_ansibles():
    from ansible.vars.reserved import _RESERVED_NAMES

    assert set(_RESERVED_NAMES) <= _RESERVED


@pytest.mark.parametrize("name", ["port", "name", "omit", "environment", "timeout", "now"])
@pytest.mark.parametrize("where", ["host", "all.vars", "group_vars"])
def test_a_reserved_variable_name_is_left_to_ansible(name, where):
    """Ansible warns on a host variable named like a play keyword or a template global, and
    opsledger refuses what it warns about: the plain reader must not accept it."""
    hosts: Any = {"all": {"children": {"db": {"hosts": {"h1": None}}}}}
    files = {}
    if where == "host":
        hosts["all"]["children"]["db"]["hosts"]["h1"] = {name: 1}
    elif where == "all.vars":
        hosts["all"]["vars"] = {name: 1}
    else:
        files["group_vars/db.yml"] = f"{name}: 1\n"
    assert _compare(hosts, files, "secret\n") is None
    with tempfile.TemporaryDirectory() as tmp:
        source = _build(Path(tmp), hosts, files, "secret\n")
        assert isinstance(_ansible(source), list)  # refused, naming the variable


# -- generated inventories ------------------------------------------------------------------

GROUPS = ["db", "app", "web", "all", "ungrouped", "plugin", "bad-name", "1x", "true", "_g", "h1"]
HOSTS = ["h1", "h2", "lab-db1", "web1.example.org", "10.0.0.1", "h[1:2]", "h:22", "localhost",
         "bad_host", "-x", "db", "1234", "h1."]  # fmt: skip
VARS = ["a", "b_c", "1x", "not", "none", "ansible_group_priority", "ansible_port", "hosts",
        "my-var", "class", "é", "port", "omit"]  # fmt: skip
SCALAR = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from(["x", "{{ a }}", "", "2"]))
VAR_MAP = st.dictionaries(st.sampled_from(VARS), SCALAR, max_size=3)
HOST_MAP = st.dictionaries(st.sampled_from(HOSTS), st.none() | VAR_MAP, max_size=3)
ODD = st.sampled_from(["text", ["a"], 3])  # what a section must not be


def _group(children: Any) -> Any:
    section = st.sampled_from(["hosts", "vars", "children", "other"])
    value = {"hosts": HOST_MAP, "vars": VAR_MAP, "children": children, "other": VAR_MAP}
    return (
        st.none()
        | st.dictionaries(section, st.none() | ODD, max_size=1)
        | st.builds(
            lambda parts: parts,
            st.fixed_dictionaries(
                {}, optional={k: value[k] for k in ("hosts", "vars", "children")}
            ),
        )
    )


LEAF = _group(st.just({}))
INNER = _group(st.dictionaries(st.sampled_from(GROUPS), LEAF, max_size=3))
TOP = st.dictionaries(st.sampled_from(GROUPS), INNER, min_size=1, max_size=3)

VARS_FILES = [
    "a: 1\n", "b_c: [1, 2]\nd: {e: f}\n", "", "# a comment only\n", "- 1\n- 2\n", "a: 1\na: 2\n",
    "secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3031\n", "secret: !vault garbage\n",
    "x: !unsafe '{{ a }}'\n", "1bad: 1\n", "d: 2026-02-30\n", "d: 2026-02-03\n",
    "a: &x [1]\nb: *x\n", "not: 1\n", "k: {{ a }}\n", "k: '{{ a }}'\n", "just text\n",
    "a: b: c\n", "ansible_group_priority: x\n", "n: {1: a}\n", "<<: {a: 1}\n", "a: !!int x\n",
    "$ANSIBLE_VAULT;1.1;AES256\n3031\n", "a: 1\n---\nb: 2\n", "{a: 1}\n", '{"a": 1}\n',
    "é: 1\n", "a:\n  b:\n    c: [1, {d: e}]\n", "a: !!binary aGk=\n", "name: 1\n", "a: !vault 1\n",
    "!vault x: 1\n",
]  # fmt: skip
FILE_NAMES = ["group_vars/db.yml", "group_vars/all/main.yml", "group_vars/app", "host_vars/h1.yml",
              "host_vars/h2/x.yaml", "group_vars/other.yml", "group_vars/.hidden.yml",
              "group_vars/web.json", "host_vars/lab-db1.yml", "group_vars/db/a.txt"]  # fmt: skip
FILES = st.dictionaries(st.sampled_from(FILE_NAMES), st.sampled_from(VARS_FILES), max_size=3)
PASSWORDS = st.sampled_from(["secret\n", "", "  \n", None])


def _build(root: Path, hosts: Any, files: dict[str, str], password: str | None) -> Path:
    shutil.copy(REPO_ROOT / "ansible.cfg", root / "ansible.cfg")
    if password is not None:
        (root / "vault-passwords").mkdir()
        (root / "vault-passwords" / "lab").write_text(password)
    folder = root / "inventories" / "lab"
    folder.mkdir(parents=True)
    text = hosts if isinstance(hosts, str) else yaml.safe_dump(hosts, sort_keys=False)
    (folder / "hosts.yml").write_text(text)
    for name, content in files.items():  # a name that is already a folder, or under a file:
        path = folder / name  # not written (group_vars/db.yml and group_vars/db/ may both be)
        if path.is_dir() or any(p.is_file() for p in path.parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return folder / "hosts.yml"


def _compare(hosts: Any, files: dict[str, str], password: str | None) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        source = _build(Path(tmp), hosts, files, password)
        plain = plain_shape(source, vault_ids(source))
        if plain is not None:
            assert _ansible(source) == plain
        return plain


LAB = {"all": {"children": {"db": {"hosts": {"h1": {"a": 1}, "h2": None}},
                            "app": {"hosts": {"lab-db1": None, "h1": None}}},
               "hosts": {"web1.example.org": None}}}  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOP | st.just(LAB), FILES, PASSWORDS)
@example(LAB, {"group_vars/db.yml": "secret: !vault garbage\n"}, "secret\n")
@example(LAB, {"group_vars/db.yml": "k: '{{ a }}'\n"}, "")
@example({"db": {"hosts": {"h1": None}}, "all": {"children": {"app": {"hosts": {"h2": None}}}}},
         {}, "secret\n")  # fmt: skip
@example({"all": {"hosts": {"h1": None}}, "db": {"hosts": {"h1": None, "h2": None}}}, {}, None)
@example({"all": {"children": {"db": {"hosts": {"db": None, "h1": None}}}}}, {}, None)
@example({"all": {"vars": {"a": 1}, "children": {"db": None}}, "app": None}, {}, None)
def test_the_plain_shape_is_ansibles_or_nothing(hosts, files, password):
    _compare(hosts, files, password)


PLAIN_GROUPS = st.sampled_from(["db", "app", "web", "_g", "all"])
PLAIN_HOSTS = st.dictionaries(
    st.sampled_from(["h1", "h2", "h3", "lab-db1", "web1.example.org", "10.0.0.1"]),
    st.none() | st.dictionaries(st.sampled_from(["a", "b_c", "ansible_port"]), SCALAR),
    max_size=3,
)
PLAIN_GROUP = st.none() | st.fixed_dictionaries(
    {}, optional={"hosts": PLAIN_HOSTS, "vars": st.dictionaries(st.sampled_from(["a"]), SCALAR)}
)
PLAIN_ALL = st.fixed_dictionaries(
    {},
    optional={
        "hosts": PLAIN_HOSTS,
        "vars": st.dictionaries(st.sampled_from(["a"]), SCALAR),
        "children": st.dictionaries(st.sampled_from(["db", "app", "web", "_g"]), PLAIN_GROUP),
    },
)
PLAIN_TOP = st.builds(
    lambda before, everything, after: {**before, "all": everything, **after},
    st.dictionaries(st.sampled_from(["db", "web"]), PLAIN_GROUP, max_size=2),
    PLAIN_ALL,
    st.dictionaries(st.sampled_from(["app", "_g"]), PLAIN_GROUP, max_size=2),
)
PLAIN_FILES = st.dictionaries(
    st.sampled_from(FILE_NAMES),
    st.sampled_from(["a: 1\n", "", "b_c: [1, {d: e}]\n", "s: !vault |\n  $ANSIBLE_VAULT;1.1\n"]),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLAIN_TOP, PLAIN_FILES)
def test_plain_inventories_are_read_in_ansibles_order(hosts, files):
    """Mostly plain inputs, so that most examples are compared, not stepped aside from:
    top-level groups and groups under `all`, a host in several groups or directly in `all`,
    groups without hosts, in any order."""
    _compare(hosts, files, "secret\n")


def test_generated_inventories_are_read_plainly_where_they_are_plain():
    """The comparison above is not vacuous: plain inventories do take the plain path."""
    lab_files = {"group_vars/db.yml": "secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3031\n",
                 "host_vars/h1.yml": "a: 1\n", "group_vars/all/main.yml": ""}  # fmt: skip
    shape = _compare(LAB, lab_files, "secret\n")
    assert shape is not None
    assert shape.order == ("web1.example.org", "h1", "h2", "lab-db1")
    assert shape.memberships["h1"] == {"all", "db", "app"}
    assert shape.memberships["web1.example.org"] == {"all", "ungrouped"}
    assert shape.groups == {"all", "ungrouped", "db", "app"}
    for files in ({"group_vars/db.yml": "a: 1\na: 2\n"}, {"host_vars/h1.yml": "- 1\n"}):
        assert _compare(LAB, files, "secret\n") is None  # Ansible says what is wrong
    assert _compare(LAB, {}, "") is None  # an empty password file: Ansible refuses it


def test_nested_groups_are_left_to_ansible():
    nested = {"all": {"children": {"db": {"children": {"db_primary": {"hosts": {"h1": None}}}}}}}
    assert _compare(nested, {}, None) is None


@pytest.mark.parametrize(
    ("setting", "value"),
    [("env", "ANSIBLE_INVENTORY_ENABLED=yaml"), ("cfg", "[inventory]\nenable_plugins = yaml\n"),
     ("cfg", "[defaults]\nvars_plugins_enabled = host_group_vars\n"),
     ("cfg", "[defaults]\nduplicate_dict_key = warn\n"), ("cwd", "group_vars")],
)  # fmt: skip
def test_a_setting_that_changes_how_ansible_reads_leaves_it_to_ansible(setting, value):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = _build(root, LAB, {}, "secret\n")
        assert plain_shape(source, vault_ids(source)) is not None
        env = dict(os.environ)
        cwd = os.getcwd()
        try:
            if setting == "env":
                name, _, text = value.partition("=")
                os.environ[name] = text
            elif setting == "cfg":
                section, _, line = value.partition("\n")
                cfg = root / "ansible.cfg"
                text = cfg.read_text()
                if "duplicate_dict_key" in value:
                    cfg.write_text(text.replace("duplicate_dict_key = error", line.strip()))
                elif section in text:  # one more key in a section the file has
                    cfg.write_text(text.replace(section + "\n", value, 1))
                else:
                    cfg.write_text(text + value)
            else:
                (root / value).mkdir()
                os.chdir(root)
            assert plain_shape(source, vault_ids(source)) is None
        finally:
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)


def test_a_cold_command_on_a_plain_inventory_imports_no_ansible(tmp_path):
    """A fresh clone's first read of the lab: the shape without Ansible, kept for the next;
    a host's variable is still Ansible's (here a vaulted one, decrypted)."""
    root = lab_inventory_copy(tmp_path)
    code = (
        "import json, sys\nfrom pathlib import Path\n"
        "from opsledger.inventory import load_inventory\n"
        "inv = load_inventory(Path('inventories/lab/hosts.yml'))\n"
        "out = {'db': [h.name for h in inv.match('db')], 'hosts': list(inv.hosts)}\n"
        "if len(sys.argv) > 1:\n"
        "    out['secret'] = inv.hosts['lab-db1'].get('vault_postgresql_app_password')\n"
        "out['ansible'] = any(m.split('.')[0] == 'ansible' for m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(opsledger.__file__).parents[1])}

    def run(*argv: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout.strip().splitlines()[-1])

    cold = run()
    assert not cold["ansible"] and cold["db"] == ["lab-db1", "lab-db2"]
    assert (root / ".opsledger" / "cache" / "inventory.json").is_file()  # kept for the next
    warm = run("secret")
    assert warm["ansible"] and len(warm["secret"]) >= 8  # a variable: Ansible reads it
    assert tuple(cold["hosts"]) == _ansible(root / "inventories" / "lab" / "hosts.yml").order
    twice = root / "inventories" / "lab" / "group_vars" / "db" / "twice.yml"
    twice.write_text("db_twice: 1\ndb_twice: 2\n")  # a new file: a miss, read again, refused
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "duplicate mapping key 'db_twice'" in proc.stderr


@pytest.mark.parametrize(
    "text",
    ["!vault x: 1\n", "a: {!vault x: 1}\n", "a: !vault 1\n", 'a: !vault ""\n', "a: !vault\n",
     "a: !vault 2001-01-01\n", 'a: !vault "1"\n'],
)  # fmt: skip
def test_a_vault_tag_ansible_refuses_is_left_to_ansible(text):
    """A `!vault` key is decrypted at once (garbage: refused), and a `!vault` value is
    resolved as if untagged (an int, a date, nothing: refused). The plain reader accepted
    both; a value holding vault text (even garbage, decrypted only when used) it still reads."""
    files = {"group_vars/db.yml": text}
    assert _compare(LAB, files, "secret\n") is None
    with tempfile.TemporaryDirectory() as tmp:
        assert isinstance(_ansible(_build(Path(tmp), LAB, files, "secret\n")), list)
    kept = {"group_vars/db.yml": 'a: !vault "$ANSIBLE_VAULT;1.1;AES256"\n'}
    assert _compare(LAB, kept, "secret\n") is not None
