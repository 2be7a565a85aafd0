"""Incident KPIs with known answers, per environment, in the report and the service report."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.detect import record_detection
from opsledger.faults.incidents import acknowledge, open_incident
from opsledger.faults.kpis import incident_kpis
from opsledger.faults.problems import open_problem
from opsledger.records import Record
from opsledger.report import kpis, render
from opsledger.views.service_report import render_service

from ..test_report import _png_colors
from .conftest import T0, commit_record, inspection

START, END = T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=30)


def _run(moment, result, verification, hosts=("lab-db1",), change="CHG-0001"):
    return Record(
        kind="run",
        environment="lab",
        result=result,
        started_at=moment.isoformat(),
        finished_at=moment.isoformat(),
        change=change,
        hosts=list(hosts),
        verification=verification,
        rollback={"result": "failed", "reason": "rollback verification failed"}
        if result == "rollback_failed"
        else None,
    )


@pytest.fixture
def handled(fault_repo, clock):
    """lab: a P2 (inspection) acknowledged in 20 min, resolved by evidence after 2 h; a P1
    (failed rollback) acknowledged after 30 min (a response breach), resolved after 3 h.
    production: a P3 user report, still open."""
    project = fault_repo
    down = [("lab-db1", "postgres_up", "critical", "PostgreSQL does not answer")]
    record_detection(project, [commit_record(project, inspection(T0, down))])
    clock.advance(minutes=20)
    acknowledge(project, "INC-0001", person="bob")
    clock.set(T0 + dt.timedelta(hours=2))
    record_detection(project, [commit_record(project, inspection(clock.now, []), "clean.json")])

    clock.set(T0 + dt.timedelta(days=1))
    failed = _run(clock.now, "rollback_failed", {"status": "error"})
    record_detection(project, [commit_record(project, failed)])
    clock.advance(minutes=30)
    acknowledge(project, "INC-0002", person="alice")
    clock.set(T0 + dt.timedelta(days=1, hours=3))
    fixed = _run(clock.now, "success", {"status": "passed", "targets": "lab-db1"}, change="CHG-2")
    record_detection(project, [commit_record(project, fixed)])

    clock.set(T0 + dt.timedelta(days=2))
    open_incident(
        project, title="Invoices arrive late", person="carol", klass="software",
        impact="medium", urgency="medium", environment="production",
        hosts=("prd-app1.example.invalid",),
    )  # fmt: skip
    return project


def test_incident_kpis_have_the_known_answers_per_environment(handled):
    now = T0 + dt.timedelta(days=2, hours=2)  # the production P3 is 2 business hours old
    lab = incident_kpis(handled, start=START, end=END, environment="lab", now=now)
    assert lab.opened == 2 and lab.by_priority == {"P1": 1, "P2": 1}
    assert lab.by_class == {"configuration": 1, "software": 1}
    assert lab.by_source == {"inspection": 1, "rollback": 1}
    assert lab.mtta_minutes == 25.0 and lab.mttr_hours == 2.5
    assert lab.response_compliance == 0.5 and lab.resolution_compliance == 1.0
    assert lab.breaches == ["INC-0002 (P1): response 0.5 h > 0.25 h"]
    assert lab.open_now == []
    production = incident_kpis(handled, start=START, end=END, environment="production", now=now)
    assert production.opened == 1 and production.mttr_hours is None
    assert [o["incident"] for o in production.open_now] == ["INC-0003"]
    assert production.response_compliance is None  # P3: respond within 4 business hours
    later = incident_kpis(
        handled, start=START, end=END, environment="production", now=now + dt.timedelta(days=1)
    )
    assert later.response_compliance == 0.0  # a day later nobody has acknowledged it
    everything = incident_kpis(handled, start=START, end=END, now=now)
    assert everything.opened == 3


def test_report_and_service_report_show_incidents_per_environment(handled):
    k = kpis(handled, start=START, end=END, environment="lab")
    assert k.environment == "lab" and k.incidents.opened == 2
    markdown = render(k, "md")
    assert "## Change report 2026-11-29 to 2026-12-30 (lab)" in markdown
    assert "| MTTR | 2.5 h |" in markdown and "| incident response SLA | 50% |" in markdown
    service = render_service(k, "md")
    sections = [line for line in service.splitlines() if line.startswith("## ")]
    assert sections == [
        "## 1. System status",
        "## 2. Faults and their handling",
        "## 3. Changes made",
        "## 4. Disaster-recovery drills",
        "## 5. Inspections",
        "## 6. Problems and improvement actions",
    ]
    assert "| lab | normal | 0 | 0 |" in service  # everything resolved by the period's end
    assert "| INC-0002 | P1 | configuration |" in service
    production = kpis(handled, start=START, end=END, environment="production")
    assert "INC-0003" in render_service(production, "md")
    assert "INC-0001" not in render_service(production, "md")
    cli_md = CliRunner().invoke(
        cli,
        ["report", "--service", "--period", "2026-12", "--env", "production", "--format", "md"],
    )
    assert cli_md.exit_code == 0 and "(production)" in cli_md.output
    unknown = CliRunner().invoke(cli, ["report", "--env", "moon"])
    assert unknown.exit_code == 2 and "no inventory for environment 'moon'" in unknown.stderr


@pytest.mark.slow
def test_the_service_report_renders_its_charts_in_chromium(handled, tmp_path):
    page = tmp_path / "service.html"
    page.write_text(render_service(kpis(handled, start=START, end=END), "html"))
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("<svg") >= 4 and "Incidents by priority" in text
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is needed (apt-get install chromium); scripts/test installs it"
    shot = tmp_path / "service.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    colors = _png_colors(shot.read_bytes())
    assert (0xB3, 0x20, 0x2A) in colors and (0xE1, 0x57, 0x59) in colors  # P1 and P2 bars drawn


@pytest.fixture
def recurring(handled, clock):
    """`handled` plus, three days after T0, PostgreSQL down on lab-db1 again: INC-0004, a repeat
    of INC-0001's fingerprint; an hour later bob opens PRB-0001 behind both (its timeline dated
    by the machine's clock, its age by the commit's git time)."""
    project = handled
    clock.set(T0 + dt.timedelta(days=3))
    down = [("lab-db1", "postgres_up", "critical", "PostgreSQL does not answer")]
    record_detection(project, [commit_record(project, inspection(clock.now, down), "again.json")])
    clock.advance(hours=1)
    open_problem(
        project,
        title="PostgreSQL on lab-db1 stops",
        incidents=("INC-0001", "INC-0004"),
        person="bob",
    )
    return project


def test_repeat_incidents_and_open_problem_age_have_the_known_answers(recurring):
    now = T0 + dt.timedelta(days=5, hours=13)  # the problem was opened 2.5 days before
    lab = incident_kpis(recurring, start=START, end=END, environment="lab", now=now)
    assert lab.opened == 3 and lab.repeats == 1  # INC-0004; INC-0002 is another fingerprint
    assert [r["incident"] for r in lab.rows if r["problem"]] == ["INC-0001", "INC-0004"]
    assert lab.open_problems == [
        {
            "problem": "PRB-0001",
            "title": "PostgreSQL on lab-db1 stops",
            "status": "open",
            "incidents": 2,
            "age_days": 2.5,
            "workaround": None,
            "runbook": None,
            "fix_change": None,
        }
    ]
    week = incident_kpis(recurring, start=START, end=END, now=T0 + dt.timedelta(days=10, hours=1))
    assert week.repeats == 1 and [p["age_days"] for p in week.open_problems] == [7.0]
    production = incident_kpis(recurring, start=START, end=END, environment="production", now=now)
    assert production.repeats == 0 and production.open_problems == []  # lab's problem only
    before = incident_kpis(  # a period before the repeat: INC-0001 is no repeat of itself
        recurring, start=START, end=T0 + dt.timedelta(days=3), environment="lab", now=now
    )
    assert before.opened == 2 and before.repeats == 0


def test_free_text_keeps_the_markdown_tables_whole(fault_repo, clock):
    """A title with `|` and a root cause written over several lines stay in their cell."""
    import re

    from opsledger.faults.resolution import close

    project = fault_repo
    odd = [("lab-db1", "disk", "critical", "/srv | /var 95% used (critical at 90)")]
    record_detection(project, [commit_record(project, inspection(T0, odd))])
    clock.advance(hours=1)
    record_detection(project, [commit_record(project, inspection(clock.now, []), "clean.json")])
    clock.advance(hours=1)
    close(
        project, "INC-0001", person="bob", klass="hardware", cause="Old WAL filled the disk",
        root_cause="A dead replication slot kept WAL.\nWe now alert on slot lag\r\nand drop it.",
    )  # fmt: skip
    k = kpis(project, start=START, end=END, environment="lab")
    for text in (render(k, "md"), render_service(k, "md")):
        lines = text.splitlines()
        header = next(line for line in lines if line.startswith("| incident |"))
        row = next(line for line in lines if line.startswith("| INC-0001 |"))
        cells = len(re.findall(r"(?<!\\)\|", header))
        assert len(re.findall(r"(?<!\\)\|", row)) == cells, row
        assert "/srv \\| /var" in row
    service = render_service(k, "md")
    assert "A dead replication slot kept WAL. We now alert on slot lag and drop it." in service
    assert not any(line.startswith("We now") or line.startswith("and drop") for line in
                   service.splitlines())  # fmt: skip
