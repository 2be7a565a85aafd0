"""Monitoring end to end on the lab: PostgreSQL stopped on lab-db1 -> Prometheus on lab-mon1
fires PostgreSQLDown within its `for:` (the lab's short one) -> `opsledger alerts sync` opens a
P2 software incident for lab-db1 with the rule's runbook -> PostgreSQL started again -> the alert
resolves -> the next sync resolves the incident by that evidence (the Watchdog still firing).
The Alertmanager and Prometheus are the ones the lab publishes on loopback (`lab status`).
Nothing is mocked. Run by the lead: do not run it where the shared lab is in use."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import yaml

from opsledger.faults.alertmanager import fetch_alerts
from opsledger.faults.alerts import alertmanager_url
from opsledger.lab.service import lab_status, run_on_host

from .helpers import opsledger

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CI = {"OPSLEDGER_COMMITTER_NAME": "opsledger CI", "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org"}
ALERT = "PostgreSQLDown"


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def _lab_vars(project) -> dict:
    path = project.root / "inventories" / "lab" / "group_vars" / "monitoring" / "monitoring.yml"
    return yaml.safe_load(path.read_text())


def _firing(url: str) -> list[dict]:
    return [
        a
        for a in fetch_alerts(url)
        if a["labels"].get("alertname") == ALERT and a["labels"].get("instance") == "lab-db1"
    ]


def _names(url: str) -> set[str]:
    return {a["labels"].get("alertname", "") for a in fetch_alerts(url)}


def _wait(what, check, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(2)
    pytest.fail(f"{what} not within {seconds:.0f} s")


def _json(proc):
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_lab_status_shows_prometheus_and_alertmanager_on_loopback(converged_lab):
    status = lab_status(converged_lab)
    mon1 = next(h for h in status.hosts if h.name == "lab-mon1")
    assert set(mon1.urls) == {"prometheus", "alertmanager"}
    for url in mon1.urls.values():
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/-/ready", timeout=10) as answer:
            assert answer.status == 200
    shown = opsledger(converged_lab, "lab", "status")
    assert f"prometheus (lab-mon1): {mon1.urls['prometheus']}" in shown.stdout


def test_a_stopped_postgresql_fires_an_alert_that_becomes_an_incident_and_resolves(
    converged_lab, workflow_repo
):
    project = workflow_repo
    url = alertmanager_url(project, "lab")
    lab = _lab_vars(project)
    scrape = _seconds(lab["monitoring_prometheus_scrape_interval"])
    evaluation = _seconds(lab["monitoring_prometheus_evaluation_interval"])
    for_ = _seconds(lab["monitoring_prometheus_alert_for"][ALERT])
    # Prometheus sees the exporter say pg_up 0 at the next scrape, the rule goes pending at the
    # next evaluation and fires `for:` later; one more evaluation sends it to Alertmanager.
    fires_within = for_ + scrape + 2 * evaluation + 30  # 30 s: a loaded lab machine

    # Prometheus evaluates its rules and reaches Alertmanager before anything is provoked.
    _wait("the Watchdog", lambda: "Watchdog" in _names(url), 180)
    assert not _firing(url), "PostgreSQLDown fires before PostgreSQL was stopped"

    stop = run_on_host(project, "lab-db1", "sudo systemctl stop postgresql@15-main")
    assert stop.returncode == 0, stop.stderr
    stopped = time.monotonic()
    try:
        fired = _wait(f"{ALERT} on lab-db1", lambda: bool(_firing(url)), fires_within + 60)
        assert fired - stopped <= fires_within, f"fired after {fired - stopped:.0f} s"

        synced = opsledger(project, "alerts", "sync", "--env", "lab", env=CI)
        assert synced.returncode == 1, synced.stdout[-3000:] + synced.stderr[-2000:]
        assert f"P2 {ALERT} lab-db1" in synced.stdout
        listed = _json(opsledger(project, "incident", "list", "--json"))
        ours = [r for r in listed if ALERT in r["title"]]
        assert len(ours) == 1, listed
        incident_id = ours[0]["incident"]
        assert (ours[0]["priority"], ours[0]["class"], ours[0]["status"]) == (
            "P2",
            "software",
            "open",
        )
        shown = _json(opsledger(project, "incident", "show", incident_id, "--json"))
        assert shown["source"] == "alert" and shown["hosts"] == ["lab-db1"]
        assert shown["runbooks"] == ["roles/monitoring/RUNBOOK.md#postgresqldown"]
        assert shown["fingerprints"][0].startswith(f"alert:lab:{ALERT}:")
        assert shown["evidence"][0].startswith("records/alerts/")
        assert shown["steps"][0]["by"] == "opsledger"
    finally:
        run_on_host(project, "lab-db1", "sudo systemctl start postgresql@15-main")

    # The exporter reconnects, the rule is clean at the next evaluation, Prometheus sends the
    # resolution and Alertmanager stops listing the alert.
    _wait(f"{ALERT} resolved", lambda: not _firing(url), scrape + 2 * evaluation + 90)
    assert "Watchdog" in _names(url)
    synced = opsledger(project, "alerts", "sync", "--env", "lab", env=CI)
    assert synced.returncode in (0, 1), synced.stdout[-3000:] + synced.stderr[-2000:]
    assert f"resolved by evidence {incident_id}" in synced.stdout
    shown = _json(opsledger(project, "incident", "show", incident_id, "--json"))
    assert shown["status"] == "resolved"
    assert shown["resolution"]["how"] == "evidence"
    assert shown["resolution"]["evidence"].startswith("records/alerts/")
    assert [s["action"] for s in shown["steps"]][-2:] == ["cleared", "resolved"]
    record = json.loads((project.root / shown["resolution"]["evidence"]).read_text())
    assert record["measurements"]["watchdog"] is True
    assert not any(f["alert"] == ALERT for f in record["findings"])
