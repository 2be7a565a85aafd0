"""What a run is told about backups first (policies/dr.yml upgrade_backup) and what the run
record keeps of what a playbook hands back (maintenance.py)."""

from __future__ import annotations

import pytest
import yaml

from opsledger.errors import OpsledgerError
from opsledger.maintenance import maintenance_of, run_vars, upgrade_backups
from opsledger.policycheck import policy_check

from .conftest import copy_project


def _policy(project, **service):
    path = project.root / "policies" / "dr.yml"
    data = yaml.safe_load(path.read_text())
    data["services"]["postgres"].update(service)
    path.write_text(yaml.safe_dump(data))


def test_the_db_hosts_get_a_backup_of_the_policys_type_first(repo_project):
    assert upgrade_backups(repo_project, "lab") == {
        "lab-db1": {"service": "postgres", "type": "full"},
        "lab-db2": {"service": "postgres", "type": "full"},
    }
    assert set(run_vars(repo_project, "production")["opsledger_upgrade_backup"]) == {
        "prd-db1.example.invalid",
        "prd-db2.example.invalid",
    }
    # written into the run's extra-vars file as plain YAML
    dumped = yaml.safe_load(yaml.safe_dump(run_vars(repo_project, "lab")))
    assert dumped["opsledger_upgrade_backup"]["lab-db2"] == {"service": "postgres", "type": "full"}


def test_the_type_and_the_hosts_follow_the_policy(tmp_path):
    project = copy_project(tmp_path / "p")
    _policy(project, upgrade_backup="incr", targets="lab-db1")
    assert upgrade_backups(project, "lab") == {"lab-db1": {"service": "postgres", "type": "incr"}}
    _policy(project, upgrade_backup=None)
    data = yaml.safe_load((project.root / "policies/dr.yml").read_text())
    del data["services"]["postgres"]["upgrade_backup"]
    (project.root / "policies/dr.yml").write_text(yaml.safe_dump(data))
    assert upgrade_backups(project, "lab") == {}  # no backup asked for: none is taken


def test_an_environment_without_the_services_hosts_needs_no_backup(tmp_path):
    project = copy_project(tmp_path / "p")
    _policy(project, targets="db")
    inventory = project.root / "inventories" / "edge"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  children:\n    app:\n      hosts:\n        edge1: {}\n"
    )
    assert upgrade_backups(project, "edge") == {}


def test_a_backup_type_pgbackrest_does_not_know_fails_policy_check(tmp_path):
    project = copy_project(tmp_path / "p")
    _policy(project, upgrade_backup="snapshot")
    problems = [str(p) for p in policy_check(project).problems]
    assert any("services.postgres.upgrade_backup" in p and "snapshot" in p for p in problems)
    with pytest.raises(OpsledgerError):
        upgrade_backups(project, "lab")


def test_the_record_keeps_known_sections_and_says_what_it_dropped():
    handed = {
        "opsledger_maintenance": {
            "backup": {"lab-db1": {"label": "20261201-203000F", "type": "full"}},
            "packages": {"lab-db1": {"upgraded": [{"name": "openssl", "from": "1", "to": "2"}]}},
            "secrets": {"x": 1},
            "restored": "not a mapping",
        },
        "opsledger_drill": {"ignored": True},
    }
    kept = maintenance_of(handed)
    assert set(kept) == {"backup", "packages", "note"}
    assert kept["note"] == "not kept (unknown or not a mapping): restored, secrets"
    assert maintenance_of({}) == {} and maintenance_of({"opsledger_maintenance": [1]}) == {}
    huge = {"opsledger_maintenance": {"packages": {"h": {"x": "y" * 600_000}}}}
    assert "more than a record keeps" in maintenance_of(huge)["note"]
