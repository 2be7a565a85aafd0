"""The detection hooks, end to end on a real host without the lab: lab-db1 is this machine
behind a test sshd. `inspect` and `apply` commit their record, then open or resolve incidents
through faults.detect — the same single call the lab runs."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from opsledger.apply import apply_change
from opsledger.faults.store import incident_ids, load_incident
from opsledger.gitrepo import commit_paths
from opsledger.inspections import inspect
from opsledger.signoff import request_change, submit_change

from .conftest import point_lab_at_sshd

pytestmark = pytest.mark.slow  # real SSH sessions, ansible-runner and Testinfra runs


def _thresholds(project, critical):
    path = project.root / "policies" / "inspections.yml"
    data = yaml.safe_load(path.read_text())
    data["checks"]["disk"] = {"groups": ["all"], "critical": critical}
    data["schedules"]["probe"] = {"checks": ["disk"]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    commit_paths(project.root, [path], "Probe schedule", name="Alice", email="alice@example.org")


def test_inspect_opens_an_incident_and_the_next_clean_inspection_resolves_it(
    fault_repo, sshd, clock
):
    project = fault_repo
    point_lab_at_sshd(project, sshd)
    _thresholds(project, critical=0)  # any file system counts as full: critical findings
    first = inspect(project, schedule="probe", targets="lab-db1")
    assert first.worst() == "critical"
    assert incident_ids(project) == ["INC-0001"]
    incident = load_incident(project, "INC-0001")
    assert incident.data["source"] == "inspection" and incident.klass == "hardware"
    assert incident.data["evidence"] == [str(first.record_path.relative_to(project.root))]
    clock.advance(hours=1)
    _thresholds(project, critical=101)  # nothing can be over 100 %: the same check is clean
    second = inspect(project, schedule="probe", targets="lab-db1")
    assert second.worst() == "ok", [f.message for f in second.findings]
    incident = load_incident(project, "INC-0001")
    assert incident.status == "resolved" and incident.data["resolution"]["how"] == "evidence"
    assert incident.data["resolution"]["evidence"] == str(
        second.record_path.relative_to(project.root)
    )


PLAYBOOK = """---
- name: Write the probe marker
  hosts: all
  serial: 1  # as its runbook.yml says (runbook check)
  max_fail_percentage: 0
  gather_facts: false
  tasks:
    - name: Write the marker the probe suite reads
      ansible.builtin.copy:
        dest: "{{ opsledger_params.path }}"
        content: "{{ opsledger_params.content }}\\n"
        mode: "0644"
"""
SUITE = '''"""probe: the marker says healthy."""

SUITE = "probe"
APPLIES_TO = "all"


def test_marker_says_healthy(host):
    assert host.file({path!r}).content_string.strip() == "healthy"
'''


def test_apply_opens_an_incident_on_failed_verification_and_a_verified_rerun_resolves_it(
    fault_repo, sshd, clock, tmp_path
):
    project = fault_repo
    point_lab_at_sshd(project, sshd)
    marker = tmp_path / "marker"
    folder = project.root / "runbooks" / "probe"
    folder.mkdir()
    (folder / "playbook.yml").write_text(PLAYBOOK)
    (folder / "runbook.yml").write_text(
        yaml.safe_dump(
            {
                "description": "Write a marker file (test runbook).",
                "playbook": "playbook.yml",
                "parameters": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["path", "content"],
                    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                },
                "change_types": ["standard"],
                "standard": True,
                "risk": "low",
                "check_mode": True,
                "roles": [],
                "verification": {"suites": ["probe"]},
                "rollback": None,
                "serial": 1,
                "max_fail_percentage": 0,
                "timeout": 600,
                "promotion": False,
            }
        )
    )
    suite = project.root / "tests" / "infra" / "test_probe.py"
    suite.write_text(SUITE.format(path=str(marker)))
    commit_paths(
        project.root,
        [folder, suite, project.root / "inventories"],
        "Probe runbook and suite",
        name="Alice",
        email="alice@example.org",
    )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    change, _ = request_change(
        project,
        title="Write the probe marker",
        runbook="probe",
        change_type="standard",
        requested_by="alice",
        reason="Exercise the detection hook of apply",
        targets="lab-db1",
        params={"path": str(marker), "content": "broken"},
        window_start=now - dt.timedelta(minutes=5),
        window_end=now + dt.timedelta(hours=2),
    )
    commit_paths(
        project.root, [change.file.parent], "Request", name="Alice", email="alice@example.org"
    )

    failed = apply_change(project, change.id)
    assert failed.result == "failed" and failed.record.verification["status"] == "failed"
    assert incident_ids(project) == ["INC-0001"]
    incident = load_incident(project, "INC-0001")
    assert incident.data["source"] == "verification" and incident.priority == "P2"
    assert incident.data["fingerprints"] == ["verification:lab:lab-db1:test_marker_says_healthy"]
    assert incident.data["evidence"] == [str(failed.record_path.relative_to(project.root))]

    # amend the change (a standard change needs no new approval, only alice's new request)
    # and run it again
    data = yaml.safe_load(change.file.read_text())
    data["params"]["content"] = "healthy"
    change.file.write_text(yaml.safe_dump(data, sort_keys=False))
    commit_paths(project.root, [change.file], "Amend", name="Alice", email="alice@example.org")
    submit_change(project, change.id, person="alice")
    clock.advance(minutes=20)
    fixed = apply_change(project, change.id)
    assert fixed.result == "success" and marker.read_text() == "healthy\n"
    incident = load_incident(project, "INC-0001")
    assert incident.status == "resolved"
    assert incident.data["resolution"]["evidence"] == str(
        fixed.record_path.relative_to(project.root)
    )
    assert incident_ids(project) == ["INC-0001"]
