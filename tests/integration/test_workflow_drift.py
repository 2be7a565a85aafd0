"""Drift on the lab: a hand edit is named with its role and variable, an approved converge
change repairs it, and drift is clean again; each check is a committed record."""

from __future__ import annotations

import json

import pytest

from opsledger.apply import apply_change
from opsledger.drift import drift
from opsledger.lab.service import run_on_host
from opsledger.signoff import approve_change

from .helpers import opsledger, request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_hand_edit_is_found_then_repaired_by_an_approved_change(converged_lab, workflow_repo):
    project = workflow_repo
    # No check before the edit: the one after it must find lab-app2 in sync and exactly one
    # finding on lab-app1, which a drift from before the edit would break (and the suite's
    # time budget, issue 16, pays for every whole-site check-mode run).
    edit = run_on_host(project, "lab-app1", "echo 'Edited by hand' | sudo tee /etc/issue.net")
    assert edit.returncode == 0, edit.stderr
    cli = opsledger(project, "drift", "--targets", "app")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "lab-app1: drifted" in cli.stdout and "lab-app2: in sync" in cli.stdout
    assert "(set by os_baseline_banner_text)" in cli.stdout
    records = sorted((project.root / "records" / "drift").glob("*.json"))
    found = json.loads(records[-1].read_text())
    assert found["kind"] == "drift" and found["result"] == "failed"
    (item,) = found["findings"]
    assert item["host"] == "lab-app1" and item["role"] == "os_baseline"
    assert item["controls"] == ["OS-BAN-01"] and item["variables"] == ["os_baseline_banner_text"]

    change_id = request_change(
        project,
        title="Repair the banner edited by hand on lab-app1",
        runbook="converge",
        targets="lab-app1",
        params={"tags": ["os_baseline"]},
        reason="Drift check found a hand edit of /etc/issue.net",
    )
    approve_change(project, change_id, person="bob")
    assert apply_change(project, change_id).result == "success"

    repaired = drift(project, targets="lab-app1")  # lab-app2 was in sync and left alone
    assert repaired.hosts == {"lab-app1": "in sync"}, repaired.items
    assert len(list((project.root / "records" / "drift").glob("*.json"))) == 2
