"""Drift items are linked to the role variables behind them, read from the roles' source."""

from __future__ import annotations

from opsledger.drift import owners
from opsledger.project import Project

from ..conftest import REPO_ROOT

PROJECT = Project(REPO_ROOT)


def test_a_task_is_linked_to_its_controls_and_variables():
    controls, variables = owners(
        PROJECT, "os_baseline", "Write the pre-login banner shown by sshd | OS-BAN-01"
    )
    assert controls == ["OS-BAN-01"] and variables == ["os_baseline_banner_text"]


def test_templates_and_internal_variables_lead_to_the_inventory_knobs():
    _, variables = owners(
        PROJECT, "postgresql", "Write server parameters, validated by postgres -C | PG-CONF-01"
    )
    assert "postgresql_parameters" in variables  # via parameters.conf.j2 and vars/main.yml
    assert not any(v.startswith("postgresql__") for v in variables)


def test_handlers_are_found_and_unknown_tasks_own_nothing():
    assert owners(PROJECT, "network", "Keep the managed /etc/hosts entries | NET-HOSTS-01") == (
        ["NET-HOSTS-01"],
        ["network_hosts_entries"],
    )
    assert owners(PROJECT, "network", "A task that does not exist") == ([], [])
