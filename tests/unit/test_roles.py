"""Role conventions the project promises (STYLE.md), checked on every role."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from opsledger.roledocs import load_role, role_problems, roles_docs

from ..conftest import REPO_ROOT

ROLES = sorted(p.parent.parent.name for p in (REPO_ROOT / "roles").glob("*/tasks/main.yml"))
TESTS = REPO_ROOT / "tests" / "infra"


def test_the_roles_the_product_promises_exist():
    assert {"os_baseline", "network", "postgresql", "hardware", "monitoring"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_role_has_its_parts(role):
    base = REPO_ROOT / "roles" / role
    for part in (
        "defaults/main.yml",
        "meta/main.yml",
        "meta/argument_specs.yml",
        "tasks/main.yml",
        "README.md",
    ):
        assert (base / part).is_file(), f"roles/{role}/{part} missing"
    assert (TESTS / f"test_{role}.py").is_file(), f"no Testinfra suite for {role}"


@pytest.mark.parametrize("role", ROLES)
def test_specs_defaults_and_controls_agree(role):
    info = load_role(REPO_ROOT / "roles" / role, TESTS)
    assert [str(p) for p in role_problems(info)] == []
    assert info.controls, f"{role} implements no control"


@pytest.mark.parametrize("role", ROLES)
def test_main_is_a_table_of_contents(role):
    """Each concern: one imported file, a tag, and a <role>_<concern>_enabled toggle."""
    defaults = yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    for entry in yaml.safe_load((REPO_ROOT / "roles" / role / "tasks" / "main.yml").read_text()):
        assert set(entry) <= {"name", "ansible.builtin.import_tasks", "when", "tags"}, entry
        target = entry["ansible.builtin.import_tasks"]
        assert (REPO_ROOT / "roles" / role / "tasks" / target).is_file()
        assert role in entry["tags"]
        if target == "preflight.yml":
            assert "always" in entry["tags"]
            continue
        toggle = entry["when"].split()[0]
        assert toggle.startswith(f"{role}_") and toggle.endswith("_enabled"), entry
        assert toggle in defaults, f"{toggle} has no default"


def _tasks(node):
    """Every task in a tasks file or playbook, inside blocks, rescues, always and plays."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        if any(k in node for k in ("block", "tasks", "pre_tasks", "post_tasks", "handlers")):
            for key in (
                "block",
                "rescue",
                "always",
                "tasks",
                "pre_tasks",
                "post_tasks",
                "handlers",
            ):
                yield from _tasks(node.get(key) or [])
        else:
            yield node


PACKAGE_MODULES = (
    "ansible.builtin.apt",
    "ansible.builtin.apt_repository",
    "ansible.builtin.get_url",
)


def _waits_on_packages(task: dict) -> bool:
    if any(module in task for module in PACKAGE_MODULES):
        return True
    command = str(task.get("ansible.builtin.command", "")) + str(
        task.get("ansible.builtin.shell", "")
    )
    return any(word in command for word in ("apt-get", "unattended-upgrade", "apt "))


def test_every_task_that_waits_on_a_package_source_has_its_own_time_bound():
    """A mirror or cache that stops answering fails the task, naming host and task (#11).

    ansible.cfg's task_timeout bounds everything; package tasks get a tighter, stated bound.
    """
    files = [
        *(REPO_ROOT / "roles").glob("*/tasks/*.yml"),
        *(REPO_ROOT / "runbooks").glob("*/*.yml"),
    ]
    found, unbounded = 0, []
    for path in files:
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            if _waits_on_packages(task):
                found += 1
                if not task.get("timeout"):
                    unbounded.append(f"{path.relative_to(REPO_ROOT)}: {task.get('name')}")
    assert found >= 15  # the walk really reaches the package tasks
    assert unbounded == []


def test_role_readmes_are_generated_and_current():
    result = roles_docs(REPO_ROOT / "roles", TESTS, check=True)
    assert result.stale == [], "run `opsledger roles docs`"
    assert result.problems == []


def test_a_control_without_a_test_is_a_problem(tmp_path):
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "tasks").mkdir()
    (role / "defaults" / "main.yml").write_text("demo_x: 1\nother: 2\n")
    (role / "meta" / "argument_specs.yml").write_text(
        yaml.safe_dump(
            {
                "argument_specs": {
                    "main": {
                        "options": {"demo_x": {"type": "int", "default": 2, "description": "x"}}
                    }
                }
            }
        )
    )
    (role / "tasks" / "main.yml").write_text("- name: Do it | DM-XY-01\n  ansible.builtin.debug:\n")
    problems = {(p.field, p.message) for p in role_problems(load_role(role, tmp_path))}
    assert ("DM-XY-01", "control has no Testinfra test") in problems
    assert ("other", "default has no argument spec") in problems
    assert any(f == "demo_x" and "differs" in m for f, m in problems)


def _hardware(tmp_path, **params):
    args = tmp_path / "args.json"
    params = {"path": str(tmp_path / "hw.json"), **params}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    module = REPO_ROOT / "roles" / "hardware" / "library" / "hardware_record.py"
    proc = subprocess.run(
        [sys.executable, str(module), str(args)], capture_output=True, text=True, timeout=120
    )
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result
    return result, json.loads((tmp_path / "hw.json").read_text())


def test_hardware_module_records_this_machine_honestly(tmp_path):
    result, record = _hardware(tmp_path, memory_min_mb=1, cpu_count_min=1)
    assert result["changed"] is True  # a new record (and its settings) on the host
    assert result["ansible_facts"]["hardware_record"] == record
    again, record = _hardware(tmp_path, memory_min_mb=1, cpu_count_min=1)
    assert again["changed"] is False  # same settings: the observations alone are no change
    checks = {(c["id"], c["name"]): c for c in record["health"]["checks"]}
    assert checks[("HW-DISK-01", "disk usage /")]["status"] in ("ok", "warning")
    assert checks[("HW-MEM-01", "memory size")]["status"] == "ok"
    assert checks[("HW-CPU-01", "CPU count")]["status"] == "ok"
    for check in record["health"]["checks"]:
        assert check["status"] != "not_applicable" or check["reason"], check


def test_hardware_module_flags_breached_thresholds(tmp_path):
    _, record = _hardware(
        tmp_path, disk_warn_percent=0, disk_crit_percent=0, memory_min_mb=10**9, cpu_count_min=10**4
    )
    checks = {(c["id"], c["name"]): c for c in record["health"]["checks"]}
    assert checks[("HW-DISK-01", "disk usage /")]["status"] == "critical"
    assert checks[("HW-MEM-01", "memory size")]["status"] == "critical"
    assert checks[("HW-CPU-01", "CPU count")]["status"] == "critical"
    assert record["health"]["status"] == "critical"


MITOGEN_UNSAFE = ("ansible.builtin.script", "script")


def test_no_task_uses_a_module_mitogen_cannot_run():
    """Plays may run under Mitogen (an environment opting in with `opsledger_strategy`: the lab).

    `script` with a templated command failed there ("cannot unpickle _AnsibleTaggedStr"), so a
    task copies its file and runs it with `command`, which works under Mitogen and plain SSH.
    """
    files = [
        *(REPO_ROOT / "roles").glob("*/tasks/*.yml"),
        *(REPO_ROOT / "roles").glob("*/handlers/*.yml"),
        *(REPO_ROOT / "runbooks").glob("*/*.yml"),
        *(REPO_ROOT / "playbooks").glob("*.yml"),
        REPO_ROOT / "site.yml",
    ]
    walked, unsafe = 0, []
    for path in (p for p in files if p.is_file()):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            walked += 1
            if any(module in task for module in MITOGEN_UNSAFE):
                unsafe.append(f"{path.relative_to(REPO_ROOT)}: {task.get('name')}")
    assert walked >= 100
    assert unsafe == []
