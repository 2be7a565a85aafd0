"""The hardware role's record reports a change when its thresholds or baselines change, on this
machine through ansible_connection=local: threshold edits used to be invisible to plan, run
records and drift (the task never reported `changed`)."""

from __future__ import annotations

import json

from opsledger.playbook_runs import run_playbook

from .conftest import copy_project

TASK = "Write the asset and health record"
PLAYBOOK = """\
- name: Hardware record only
  hosts: all
  gather_facts: false
  roles:
    - role: hardware
      vars:
        hardware_probes_enabled: false
"""


def _run(project, tmp_path, check=False, **thresholds):
    record = tmp_path / "hardware.json"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "hardware_record_path": str(record),
        **thresholds,
    }
    inventory = project.root / "local.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"here": host}}}))
    run = run_playbook(
        project,
        playbook=project.root / "hardware.yml",
        inventory=inventory,
        limit="here",
        params={},
        check=check,
        diff=True,  # as plan, drift and apply's job log ask for it
    )
    assert run.status == "successful", run.hosts
    changes = [c for c in run.hosts["here"].changes if c.task.startswith(TASK)]
    return changes, record


def test_threshold_and_baseline_edits_show_as_changes(tmp_path):
    project = copy_project(tmp_path / "p")
    (project.root / "hardware.yml").write_text(PLAYBOOK)
    first, record = _run(project, tmp_path)
    assert first, "a new record is a change"
    assert json.loads(record.read_text())["settings"]["disk_warn_percent"] == 80
    again, _ = _run(project, tmp_path)
    assert again == []  # same thresholds: idempotent, whatever the observations say
    predicted, _ = _run(project, tmp_path, check=True, hardware_disk_warn_percent=70)
    (change,) = predicted  # plan and drift (check mode) see the edit ...
    assert '-  "disk_warn_percent": 80,' in change.diff
    assert '+  "disk_warn_percent": 70,' in change.diff
    assert json.loads(record.read_text())["settings"]["disk_warn_percent"] == 80  # not written
    applied, _ = _run(project, tmp_path, hardware_disk_warn_percent=70, hardware_cpu_count_min=1)
    assert len(applied) == 1  # ... and a run record lists it as a changed task
    settings = json.loads(record.read_text())["settings"]
    assert (settings["disk_warn_percent"], settings["cpu_count_min"]) == (70, 1)
