"""Inspections on the lab: a nearly full file system and a stopped service are found with the
right severity and SLA priority, recorded in git; --due reports a missed daily inspection."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from opsledger.lab.service import run_on_host
from opsledger.records import Record, write_record

from .helpers import opsledger

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _findings(project, schedule):
    folder = project.root / "records" / "inspections"
    latest = sorted(folder.glob(f"*-{schedule}-lab.json"))[-1]
    return json.loads(latest.read_text())


def test_full_disk_and_stopped_service_are_found_with_priorities(converged_lab, workflow_repo):
    project = workflow_repo
    try:
        # /dev/shm is a 64 MB tmpfs in the lab containers: filling it cannot touch the machine.
        fill = run_on_host(project, "lab-app1", "sudo fallocate -l 60M /dev/shm/opsledger-fill")
        assert fill.returncode == 0, fill.stderr
        stop = run_on_host(project, "lab-app2", "sudo systemctl stop prometheus-node-exporter")
        assert stop.returncode == 0, stop.stderr

        proc = opsledger(project, "inspect", "--schedule", "daily", "--format", "json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        by_check = {(f["host"], f["check"]): f for f in report["findings"]}
        disk = by_check[("lab-app1", "disk")]
        assert disk["severity"] == "critical" and disk["priority"] == "P2"
        assert "/dev/shm" in disk["message"]
        service = by_check[("lab-app2", "services")]
        assert service["severity"] == "critical" and service["priority"] == "P2"
        assert "prometheus-node-exporter is inactive" in service["message"]
        assert ("lab-app2", "disk") not in by_check and ("lab-app1", "services") not in by_check
        record = _findings(project, "daily")
        assert record["kind"] == "inspection" and record["result"] == "failed"
        assert record["measurements"]["worst"] == "critical"
        log = opsledger(project, "audit", "log")  # the record is committed like any evidence
        assert log.returncode == 0
    finally:
        run_on_host(project, "lab-app1", "sudo rm -f /dev/shm/opsledger-fill")
        run_on_host(project, "lab-app2", "sudo systemctl start prometheus-node-exporter")

    # A daily inspection three days before the one above: two days passed with none.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3, hours=1)
    write_record(
        project.root / "records" / "inspections" / f"{old:%Y%m%dT%H%M%SZ}-daily-lab.json",
        Record(
            kind="inspection",
            environment="lab",
            result="success",
            started_at=old.isoformat(),
            finished_at=old.isoformat(),
            measurements={"schedule": "daily"},
        ),
    )
    due = opsledger(project, "inspect", "--due", "--fail-on", "critical", "--targets", "app")
    assert due.returncode == 1, due.stdout + due.stderr  # missed periods fail the run
    assert "daily: last " in due.stdout and "not due, 2 missed period(s)" in due.stdout
    assert "Inspection weekly of lab" in due.stdout  # never run before: due, and run now
