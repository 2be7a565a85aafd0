"""The inventory shape kept between commands (inventorycache.py): a warm command needs no
Ansible, and a kept shape never gives another answer than Ansible would (edits miss, forged
or broken files are ignored, no variable or secret is written)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import opsledger
from opsledger.hostpattern import pattern_problems, select
from opsledger.inventorycache import CACHE, shape_key
from opsledger.localcache import cache_file
from opsledger.project import Project

from ..conftest import REPO_ROOT

HOSTS = """\
all:
  children:
    db:
      hosts:
        db1: {ansible_port: 2301}
        db2: {ansible_port: 2302}
    app:
      hosts:
        app1: {ansible_port: 2311}
"""

# What a command asks of an inventory: names, matches, groups, and one host's variable when
# `variable` is given (that read is Ansible's). Prints JSON and whether Ansible was imported.
READ = """\
import json, sys
from pathlib import Path
from opsledger.inventory import load_inventory
inv = load_inventory(Path(sys.argv[1]))
out = {
    "hosts": list(inv.hosts),
    "groups": {n: list(h.groups) for n, h in inv.hosts.items()},
    "names": sorted(inv.names),
    "db": [h.name for h in inv.match("db")],
    "not_db": [h.name for h in inv.match("all:!db")],
    "ancestors": inv.ancestors(list(inv.hosts)[0]),
}
if len(sys.argv) > 2:
    out["variable"] = inv.hosts[sys.argv[3]].get(sys.argv[2])
out["ansible"] = any(m.split(".")[0] == "ansible" for m in sys.modules)
print(json.dumps(out))
"""


# Ansible's own default, set so that Ansible reads the inventory: these tests are about the
# shapes Ansible's reads keep. An inventory this plain is otherwise read without Ansible
# (plainshape.py, which steps aside for any ANSIBLE_ setting; test_plain_shape.py).
ANSIBLE_READS = {"ANSIBLE_INVENTORY_ENABLED": "host_list,script,auto,yaml,ini,toml"}


def _read(project: Project, *variable: str) -> dict:
    """What a fresh command process reads from the project's lab inventory."""
    proc = subprocess.run(
        [sys.executable, "-c", READ, str(project.inventory_file()), *variable],
        capture_output=True,
        text=True,
        cwd=project.root,
        env={
            **ANSIBLE_READS,
            **os.environ,
            "PYTHONPATH": str(Path(opsledger.__file__).parents[1]),
        },
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def project(make_project) -> Project:
    """A project in its own git clone (the cache's key lives in the git directory)."""
    made = make_project(HOSTS)
    subprocess.run(["git", "init", "-q", str(made.root)], check=True)
    return made


def _without(read: dict) -> dict:
    return {k: v for k, v in read.items() if k != "ansible"}


def test_a_second_command_reads_the_kept_shape_without_ansible(project):
    cold = _read(project)
    warm = _read(project)
    assert cold["ansible"] and not warm["ansible"]
    assert _without(warm) == _without(cold)
    assert warm["db"] == ["db1", "db2"] and warm["not_db"] == ["app1"]
    assert warm["ancestors"] == ["all", "db"]


def test_a_host_variable_of_a_kept_shape_is_read_with_ansible(project):
    _read(project)
    warm = _read(project, "ansible_port", "db2")
    assert warm["variable"] == 2302
    assert warm["ansible"]


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("group_vars/all/connection.yml", "\nextra: 1\n"),
        ("group_vars/db.yml", "---\ndb_role: primary\n"),
        ("hosts.yml", "    ungrouped:\n      hosts:\n        spare1: {}\n"),
    ],
)
def test_an_edit_of_any_file_ansible_reads_is_a_miss(project, path, text):
    """Editing (or adding) a file under the inventory's folder changes the key: the next
    command reads the inventory with Ansible again and sees the edit."""
    _read(project)
    assert not _read(project)["ansible"]
    target = project.inventory_file().parent / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as out:
        out.write(text)
    after = _read(project)
    assert after["ansible"]
    if path == "hosts.yml":
        assert "spare1" in after["hosts"]
    assert not _read(project)["ansible"]  # kept again, under the new key


@pytest.mark.parametrize("folder", ["group_vars", "host_vars"])
def test_an_edit_of_the_working_directorys_vars_files_is_a_miss(project, folder):
    """Ansible also reads group_vars/ and host_vars/ of the working directory (its playbook
    folder): an edit there (here one Ansible refuses) must be a miss, not a kept shape."""
    name = "db.yml" if folder == "group_vars" else "db1.yml"
    (project.root / folder).mkdir()
    (project.root / folder / name).write_text("extra: 1\n")
    _read(project)
    assert not _read(project)["ansible"]
    (project.root / folder / name).write_text("extra: 1\nextra: 2\n")
    proc = subprocess.run(
        [sys.executable, "-c", READ, str(project.inventory_file())],
        capture_output=True,
        text=True,
        cwd=project.root,
        env={**ANSIBLE_READS, **os.environ,
             "PYTHONPATH": str(Path(opsledger.__file__).parents[1])},
    )  # fmt: skip
    assert proc.returncode != 0 and "duplicate" in proc.stderr.lower()


def test_an_ansible_setting_in_the_environment_is_a_miss(project, monkeypatch):
    _read(project)
    monkeypatch.setenv("ANSIBLE_INVENTORY_ENABLED", "yaml,ini")
    assert _read(project)["ansible"]


@pytest.mark.parametrize("damage", ["garbage", "forged", "truncated"])
def test_a_broken_or_forged_cache_file_is_ignored(project, damage):
    """The file is authenticated with the clone's key (localcache): a shape written by hand
    (here: db2 moved to app) or a damaged file is ignored, and Ansible answers."""
    cold = _read(project)
    path = cache_file(project, CACHE)
    mac, _, body = path.read_bytes().partition(b"\n")
    if damage == "garbage":
        path.write_bytes(b"\x00not json at all")
    elif damage == "truncated":
        path.write_bytes(mac + b"\n" + body[: len(body) // 2])
    else:
        entries = json.loads(body)
        for entry in entries.values():
            entry["hosts"] = [[n, ["all", "app"] if n == "db2" else g] for n, g in entry["hosts"]]
        path.write_bytes(mac + b"\n" + json.dumps(entries, separators=(",", ":")).encode())
    again = _read(project)
    assert again["ansible"]
    assert _without(again) == _without(cold)


def test_the_cache_is_never_tracked_by_git(project):
    _read(project)
    status = subprocess.run(
        ["git", "-C", str(project.root), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cache_file(project, CACHE).is_file()
    assert ".opsledger" not in status  # the project has no .gitignore: the folder ignores itself


def lab_inventory_copy(tmp_path: Path) -> Path:
    """A git repository holding only the lab's inventory, its vault and ansible.cfg."""
    root = tmp_path / "p"
    root.mkdir()
    shutil.copy(REPO_ROOT / "ansible.cfg", root)
    for part in ("inventories", "vault-passwords"):
        shutil.copytree(REPO_ROOT / part, root / part)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_no_variable_and_no_secret_of_the_lab_is_written(tmp_path):
    """The lab's inventory holds vaulted secrets: after reading them, the kept file names
    hosts and groups only — no variable, no ciphertext, no clear text."""
    root = lab_inventory_copy(tmp_path)
    project = Project(root)
    _read(project)
    warm = _read(project, "vault_postgresql_app_password", "lab-db1")
    secret = warm["variable"]
    assert isinstance(secret, str) and len(secret) >= 8
    kept = cache_file(project, CACHE).read_text()
    assert secret not in kept
    assert "ANSIBLE_VAULT" not in kept and "vault" not in kept
    assert "ansible_port" not in kept and "opsadmin" not in kept


def test_an_inventory_with_a_whole_file_vault_is_never_kept(make_project):
    project = make_project(HOSTS)
    source = project.inventory_file()
    assert shape_key(source, []) is not None
    vaulted = source.parent / "group_vars" / "db.yml"
    vaulted.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    assert shape_key(source, []) is None


def test_the_key_names_the_vault_password_files_state(make_project):
    project = make_project(HOSTS)
    source = project.inventory_file()
    password = project.root / "vault-passwords" / "lab"
    password.parent.mkdir()
    ids = [f"lab@{password}"]
    absent = shape_key(source, ids)
    password.write_text("")
    empty = shape_key(source, ids)
    password.write_text("secret\n")
    present = shape_key(source, ids)
    password.write_text("another secret\n")
    assert len({absent, empty, present}) == 3
    assert shape_key(source, ids) == present  # the password itself is never keyed
    password.chmod(0o700)
    assert shape_key(source, ids) is None  # a script's answer has no content to key


NESTED = """\
all:
  hosts:
    lone.example.org: {}
  children:
    db:
      children:
        db_primary:
          hosts:
            db1: {}
        db_replica:
          hosts:
            db2: {}
            db3: {}
    app:
      hosts:
        app1: {}
        app2: {}
        db3: {}
    empty: {}
    edge:
      children:
        app: {}
      hosts:
        proxy1: {}
"""
PATTERNS = [
    "all", "db", "app", "db_primary", "db:app", "db,app", "db:&app", "app:!db", "all:!db",
    "all:!app:!edge", "db*", "*1", "db?", "app:&db_replica", "!db", "&db", "edge:!proxy1",
    "empty", "empty:db", "*.example.org", "lone.example.org", "ungrouped", "db3", "db3:!app",
    "d*:!db3", "*", "db_*:&app",
]  # fmt: skip


def test_patterns_select_the_hosts_ansible_selects(make_project):
    """hostpattern.select over a shape = Ansible's InventoryManager.get_hosts, pattern by
    pattern, on nested groups, an empty group, a host in two branches and dotted names."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    from opsledger.inventory import load_inventory

    source = make_project(NESTED).inventory_file()
    manager = InventoryManager(loader=DataLoader(), sources=[str(source)])
    memberships = {
        h.name: frozenset(g.name for g in h.get_groups()) for h in manager.get_hosts("all")
    }
    groups = set(manager.groups)
    assert load_inventory(source).shape.memberships == memberships
    names = {*memberships, *groups}
    for pattern in PATTERNS:
        assert not pattern_problems(pattern, names), pattern
        theirs = {h.name for h in manager.get_hosts(pattern)}
        assert select(pattern, memberships, groups) == theirs, pattern
