"""What a runbook declares to follow its run: apply runs it without knowing it by name."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from types import SimpleNamespace

from opsledger.afterrun import after_run
from opsledger.playbook_runs import HostRun, PlaybookRun
from opsledger.runbooks import load_runbook

from .conftest import copy_project

CHANGE = SimpleNamespace(id="CHG-0001", environment="lab", params={})  # what a step reads


def _steps(project, runbook):
    run = PlaybookRun("successful", 0, {"lab-db1": HostRun("lab-db1")})
    return after_run(
        project,
        CHANGE,
        runbook,
        started=dt.datetime.now(dt.UTC),
        run=run,
        checked=None,
        hosts=["lab-db1"],
    )


def test_a_drill_runbook_declares_a_drill_and_converge_declares_nothing(tmp_path):
    project = copy_project(tmp_path / "p")  # no git: the drill is judged, nothing is written
    [step] = _steps(project, load_runbook(project, "pg-dr-drill"))
    assert step.phase == "drill"
    assert step.line.startswith("DR drill postgres: FAILED: ")  # the run handed back no timeline
    assert step.evidence is None
    assert _steps(project, load_runbook(project, "converge")) == []


def test_a_drill_of_a_service_dr_yml_does_not_name_says_so_and_writes_nothing(tmp_path):
    project = copy_project(tmp_path / "p")
    runbook = load_runbook(project, "pg-dr-drill")
    [step] = _steps(project, replace(runbook, raw={**runbook.raw, "drill": "mysql"}))
    assert step.line == "runbook drills 'mysql', not in policies/dr.yml: no drill record"
    assert step.evidence is None
