"""plan on a real ansible-playbook run against this machine (ansible_connection=local): a real
error is an error (named, exit 1); only a failure behind a change check mode skipped is
`cannot predict`. It used to report a missing controller-side file as "cannot predict" on
every host with exit 0 and ALLOWED."""

from __future__ import annotations

import os
import subprocess
import sys

from opsledger.gitrepo import commit_paths
from opsledger.plan import plan
from opsledger.signoff import approve_change, request_change

from .conftest import open_window

RUNBOOK = """\
---
description: Check-mode predictions on the controller (plan tests).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  properties:
    case: {enum: [missing_file, behind_a_change, clean]}
change_types: [normal]
standard: false
risk: low
check_mode: true
roles: []
verification: {suites: []}
rollback: null
timeout: 600
"""
PLAYBOOK = """\
---
- name: Predictions
  hosts: all
  gather_facts: false
  vars:
    scratch: "{{ playbook_dir }}/../../scratch"
  tasks:
    - name: Install the configuration from a file the playbook names
      ansible.builtin.copy:
        src: "{{ playbook_dir }}/files/not-there.conf"
        dest: "{{ scratch }}/app.conf"
        mode: "0644"
      when: opsledger_params.case == 'missing_file'
    - name: Write a file that does not exist yet
      ansible.builtin.copy:
        content: "hello\\n"
        dest: "{{ scratch }}/{{ inventory_hostname }}.txt"
        mode: "0644"
      when: opsledger_params.case == 'behind_a_change'
    - name: Read it back
      ansible.builtin.slurp:
        src: "{{ scratch }}/{{ inventory_hostname }}.txt"
      when: opsledger_params.case == 'behind_a_change'
"""


def _runbook(project):
    folder = project.root / "runbooks" / "local-plan"
    folder.mkdir()
    (folder / "runbook.yml").write_text(RUNBOOK)
    (folder / "playbook.yml").write_text(PLAYBOOK)
    (project.root / "scratch").mkdir()
    commit_paths(
        project.root,
        [folder / "runbook.yml", folder / "playbook.yml"],
        "Runbook local-plan",
        name="Alice Arnold",
        email="alice@example.org",
    )


def _request(project, case):
    start, end = open_window()
    change, _ = request_change(
        project,
        title=f"Plan {case}",
        runbook="local-plan",
        requested_by="alice",
        reason="Predict on the controller",
        targets="lab-db1",
        params={"case": case},
        window_start=start,
        window_end=end,
    )
    commit_paths(project.root, [change.file.parent], f"Request {change.id}", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    approve_change(project, change.id, person="bob")
    return change.id


def test_a_missing_controller_side_file_is_an_error_not_a_prediction(local_repo):
    project, _ = local_repo
    _runbook(project)
    change_id = _request(project, "missing_file")
    result = plan(project, change_id)
    assert result.decision.allowed
    (host,) = result.hosts
    assert host.status == "error", host
    assert "not-there.conf" in host.note and result.errors == [host]
    done = subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", "plan", change_id],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: lab-db1: Install the configuration" in done.stderr
    assert "ERROR on lab-db1" in done.stdout and "Traceback" not in done.stderr


def test_a_failure_behind_a_skipped_change_cannot_be_predicted(local_repo):
    project, _ = local_repo
    _runbook(project)
    change_id = _request(project, "behind_a_change")
    (host,) = plan(project, change_id).hosts
    assert host.status == "cannot predict", host
    assert host.changes and "Read it back" in host.note
    clean = _request(project, "clean")
    assert [h.status for h in plan(project, clean).hosts] == ["unchanged"]
