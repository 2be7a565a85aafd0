import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import opsledger
from opsledger.errors import OpsledgerError
from opsledger.inventory import load_inventory

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


def test_hosts_keep_inventory_order_and_groups(make_project):
    project = make_project(HOSTS)
    inv = load_inventory(project.inventory_file())
    assert list(inv.hosts) == ["db1", "db2", "app1"]
    assert inv.hosts["db1"].groups == ("db",)
    assert inv.hosts["app1"].groups == ("app",)


def test_group_vars_are_merged_and_templated(make_project):
    project = make_project(HOSTS)
    host = load_inventory(project.inventory_file()).hosts["db1"]
    assert host.get("ansible_user") == "opsadmin"
    key = Path(host.get("ansible_ssh_private_key_file")).resolve()
    assert key == project.root / ".opsledger" / "lab" / "id_ed25519"
    assert type(host.get("ansible_user")) is str  # no Ansible tagged types leak out


def test_patterns_resolve_like_ansible(make_project):
    inv = load_inventory(make_project(HOSTS).inventory_file())
    assert [h.name for h in inv.match("db")] == ["db1", "db2"]
    assert [h.name for h in inv.match("all:!db")] == ["app1"]
    assert [h.name for h in inv.match("db*")] == ["db1", "db2"]
    assert [h.name for h in inv.match("all:&db")] == ["db1", "db2"]
    assert [h.name for h in inv.match("db,&app")] == []
    with pytest.raises(OpsledgerError, match="unknown host or group 'nosuchgroup'"):
        inv.match("nosuchgroup")


def test_repo_inventories_share_the_group_structure(repo_project):
    for env in ("lab", "staging", "production"):
        inv = load_inventory(repo_project.inventory_file(env))
        assert inv.group("db"), env
        assert inv.group("app"), env


def test_lab_inventory_has_the_required_hosts(repo_project):
    inv = load_inventory(repo_project.inventory_file("lab"))
    assert {h.name for h in inv.group("db")} >= {"lab-db1", "lab-db2"}
    assert {h.name for h in inv.group("app")} >= {"lab-app1", "lab-app2"}


def test_bad_yaml_names_file_and_line(make_project):
    project = make_project("all:\n  children:\n    db: [unclosed\n")
    with pytest.raises(OpsledgerError) as err:
        load_inventory(project.inventory_file())
    (problem,) = err.value.problems
    assert problem.file.endswith("hosts.yml")
    assert problem.field.startswith("line ")
    assert err.value.exit_code == 2


def test_empty_inventory_is_an_error(make_project):
    project = make_project("all:\n  children: {}\n")
    with pytest.raises(OpsledgerError, match="defines no hosts"):
        load_inventory(project.inventory_file())


def test_missing_inventory_is_an_error(tmp_path):
    with pytest.raises(OpsledgerError, match="inventory not found"):
        load_inventory(tmp_path / "nope" / "hosts.yml")


def test_inventory_folders_hold_nothing_ansible_would_take_for_hosts(repo_project):
    # Ansible parses every file of an inventory folder; a stray file (a password, notes)
    # silently becomes a host. The folder must load exactly the hosts of hosts.yml.
    for env in ("lab", "staging", "production"):
        folder = load_inventory(repo_project.inventory_dir(env))
        hosts_file = load_inventory(repo_project.inventory_file(env))
        assert list(folder.hosts) == list(hosts_file.hosts), env


def test_lab_vault_values_decrypt_without_importing_ansibles_cli(repo_project, tmp_path):
    """The lab's vaulted values, read through opsledger in a fresh interpreter with the
    committed password (vault-passwords/lab), equal what Ansible's own `ansible` command
    decrypts; and opsledger read the secrets without importing ansible.cli (its argument
    parsers and CLI classes cost every inventory read ~10% of a command's start-up)."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from opsledger.inventory import load_inventory\n"
        "host = load_inventory(Path(sys.argv[1])).hosts['lab-db1']\n"
        "values = [host.get(n) for n in ('vault_postgresql_app_password',"
        " 'vault_postgresql_replication_password')]\n"
        "print(json.dumps({'values': values, 'cli': 'ansible.cli' in sys.modules}))\n"
    )
    inventory = str(repo_project.inventory_file("lab"))
    ours = subprocess.run(
        [sys.executable, "-c", code, inventory],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # any folder: the password file resolves against the project's ansible.cfg
        env={**os.environ, "PYTHONPATH": str(Path(opsledger.__file__).parents[1])},
    )
    assert ours.returncode == 0, ours.stderr
    read = json.loads(ours.stdout.strip().splitlines()[-1])
    assert read["cli"] is False
    theirs = []
    for name in ("vault_postgresql_app_password", "vault_postgresql_replication_password"):
        adhoc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible"),
                "lab-db1",
                "-i",
                inventory,
                "-c",
                "local",
                "-m",
                "debug",
                "-a",
                f"var={name}",
            ],
            capture_output=True,
            text=True,
            cwd=repo_project.root,
            env={**os.environ, "ANSIBLE_STRATEGY": "linear", "ANSIBLE_NOCOLOR": "1"},
        )
        assert adhoc.returncode == 0, adhoc.stdout + adhoc.stderr
        theirs.append(re.search(rf"{name}: (\S+)", adhoc.stdout).group(1))
    assert read["values"] == theirs
    assert all(v and not v.startswith("$ANSIBLE_VAULT") for v in theirs)


# --- variables resolved when first asked for (1,000 hosts cost seconds otherwise) ------------

MANY = """\
all:
  children:
    db:
      hosts:
        db1: {ansible_port: 2301}
        db2: {ansible_port: 2302}
        db3: {ansible_port: 2303}
"""


@pytest.mark.parametrize("where", ["host_vars/db3.yml", "host_vars/db3/extra.yml",
                                   "group_vars/db.yml"])  # fmt: skip
def test_a_broken_vars_file_is_refused_whichever_host_it_belongs_to(make_project, where):
    """Only one host of each set of groups, and hosts with their own vars, resolve at once."""
    project = make_project(MANY)
    path = project.inventory_file().parent / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x85note: broken\n")
    with pytest.raises(OpsledgerError, match="Ansible cannot"):
        load_inventory(project.inventory_file())


def test_variables_resolved_late_are_those_ansible_merges(make_project):
    project = make_project(MANY)
    folder = project.inventory_file().parent
    (folder / "group_vars" / "db.yml").write_text("role_port: 5432\nwho: group\n")
    (folder / "host_vars").mkdir()
    (folder / "host_vars" / "db2.yml").write_text("who: host\n")
    for template in (True, False):  # the verbatim variant shares what was resolved
        inv = load_inventory(project.inventory_file(), template=template)
        assert [inv.hosts[h].get("who") for h in ("db1", "db2", "db3")] == [
            "group",
            "host",
            "group",
        ]
        assert inv.hosts["db3"].get("role_port") == 5432
        assert inv.hosts["db3"].get("ansible_user") == "opsadmin"


RACER = """\
import os, sys, time
from pathlib import Path
import ansible.vars.manager, ansible.inventory.manager, ansible.plugins.cache  # loaded before go
from opsledger.errors import OpsledgerError
from opsledger.inventory import load_inventory
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()  # imported: ready for the go
while not go.exists():
    time.sleep(0.0005)
try:
    load_inventory(Path(sys.argv[1])).hosts["db1"].get("ansible_port")
except OpsledgerError as err:
    print(err.problems[0])
    sys.exit(2)
"""


def test_processes_reading_a_fresh_checkouts_inventory_at_once_all_read_it(make_project):
    """Ansible's file fact cache checks that its folder exists and then makes it, failing when
    another process made it in between: one of `verify`'s workers on a fresh checkout was
    refused with "Error in 'jsonfile' cache plugin while trying to create cache dir". A race:
    without the fix this test (24 racers, 4 rounds, all imported before the go) failed 1 of 3
    runs on 2 cores; 30 racers x 10 rounds failed 3 of 4."""
    project = make_project(HOSTS)
    cfg = project.root / "ansible.cfg"
    cfg.write_text(
        cfg.read_text() + "fact_caching = jsonfile\nfact_caching_connection = .opsledger/facts\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(opsledger.__file__).parents[1])}
    env.pop("ANSIBLE_CONFIG", None)
    for round_ in range(4):
        go = project.root / f"go-{round_}"
        ready = project.root / f"ready-{round_}"
        ready.mkdir()
        shutil.rmtree(project.root / ".opsledger", ignore_errors=True)
        racers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RACER,
                    str(project.inventory_file()),
                    str(go),
                    str(ready / str(n)),
                ],
                cwd=project.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n in range(24)
        ]
        deadline = time.monotonic() + 600  # a bound for a racer that never starts, no measure
        while len(list(ready.iterdir())) < len(racers) and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()  # every racer imported and waiting
        said = [(p.wait(600), p.stdout.read()) for p in racers]
        assert [code for code, _ in said] == [0] * len(racers), [out for code, out in said if code]
    assert (project.root / ".opsledger" / "facts").is_dir()
