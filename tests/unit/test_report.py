"""KPIs from a repository history with known answers, and the HTML report they render to."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.gitrepo import commit_paths, git
from opsledger.records import Record, run_record_path, write_record
from opsledger.report import kpis, parse_period, render
from opsledger.signoff import request_change, subject

from .conftest import copy_project

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _at(monkeypatch, moment):
    stamp = moment.isoformat()
    monkeypatch.setenv("GIT_AUTHOR_DATE", stamp)
    monkeypatch.setenv("GIT_COMMITTER_DATE", stamp)


def _change(
    project,
    monkeypatch,
    *,
    days_ago,
    kind="normal",
    impact="low",
    urgency="low",
    runs=(),
    hosts=("lab-db1", "lab-db2"),
):
    requested = NOW - dt.timedelta(days=days_ago)
    _at(monkeypatch, requested)
    change, _ = request_change(
        project,
        title=f"A {kind} change from {days_ago} days ago",
        runbook="converge" if kind != "standard" else "pg-backup",
        change_type=kind,
        requested_by="alice",
        reason="Known answers for the report",
        targets="db",
        impact=impact,
        urgency=urgency,
        window_start=requested,
        window_end=requested + dt.timedelta(days=30),
    )
    commit_paths(
        project.root,
        [change.file.parent],
        f"Request {change.id}",
        name="A",
        email="alice@example.org",
    )
    content = subject(project, change.id)[1].sha256
    for result, after_h, took_h in runs:
        started = requested + dt.timedelta(hours=after_h)
        record = Record(
            kind="run",
            environment="lab",
            result=result,
            started_at=started.isoformat(),
            finished_at=(started + dt.timedelta(hours=took_h)).isoformat(),
            change=change.id,
            runbook="converge" if kind != "standard" else "pg-backup",
            content_sha256=content,
            hosts=list(hosts),
        )
        _at(monkeypatch, started + dt.timedelta(hours=took_h))
        path = write_record(run_record_path(project, change.id, started), record)
        commit_paths(project.root, [path], f"Run {change.id}", name="CI", email="ci@example.org")
    return change.id


@pytest.fixture
def history(tmp_path, monkeypatch):
    """Six changes over five weeks: successes, a rollback, a failure fixed later, an SLA breach."""
    project = copy_project(tmp_path / "p")
    _at(monkeypatch, NOW - dt.timedelta(days=60))
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(
        project.root,
        "-c",
        "user.name=A",
        "-c",
        "user.email=alice@example.org",
        "commit",
        "-qm",
        "Initial",
    )
    _change(project, monkeypatch, days_ago=35, runs=[("success", 2, 0.5)])
    _change(
        project,
        monkeypatch,
        days_ago=28,
        kind="emergency",
        impact="high",
        urgency="high",
        runs=[("rolled_back", 1, 0.5)],
    )
    _change(
        project,
        monkeypatch,
        days_ago=21,
        kind="standard",
        impact="high",
        urgency="high",
        runs=[("success", 30, 1)],
    )
    _change(
        project,
        monkeypatch,
        days_ago=14,
        impact="medium",
        urgency="high",
        runs=[("failed", 3, 1)],
        hosts=("lab-db1",),
    )
    _change(
        project,
        monkeypatch,
        days_ago=14,
        impact="medium",
        urgency="low",
        runs=[("success", 9, 1)],
        hosts=("lab-db1",),
    )
    _change(project, monkeypatch, days_ago=3)
    monkeypatch.delenv("GIT_AUTHOR_DATE")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    return project


def test_kpis_have_the_known_answers(history):
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    assert k.changes == 6 and k.applied == 5
    assert k.by_type == {"normal": 4, "emergency": 1, "standard": 1}
    assert k.by_priority == {"P1": 2, "P2": 1, "P4": 3}
    assert k.by_result == {"success": 3, "rolled_back": 1, "failed": 1, "not applied": 1}
    assert k.success_rate == 0.6 and k.failure_rate == 0.4
    assert k.emergency_ratio == round(1 / 6, 4)
    assert k.lead_times == [2.5, 10.0, 31.0]
    assert k.lead_time_hours_median == 10.0
    # rolled back in 0.5 h; the failure on lab-db1 restored by the next success on it
    # (started 14 days ago + 3 h, restored 14 days ago + 10 h): 7 h
    assert k.mttr_hours == 3.75 and k.not_restored == 0
    assert k.sla_compliance == round(2 / 3, 4)
    assert len(k.sla_breaches) == 1 and "(P1): 31.0 h > 4 h" in k.sla_breaches[0]
    assert len(k.weekly) >= 5


def test_period_selects_changes_by_request_time(history):
    k = kpis(history, start=NOW - dt.timedelta(days=10), end=NOW + dt.timedelta(days=1))
    assert k.changes == 1 and k.applied == 0 and k.success_rate is None


def test_periods_parse_and_bad_ones_say_how():
    assert parse_period("2026-Q4", NOW)[0] == dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    assert parse_period("2026-Q4", NOW)[1] == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert parse_period("2026-02", NOW)[1] == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert parse_period("2w", NOW) == (NOW - dt.timedelta(days=14), NOW)
    result = CliRunner().invoke(cli, ["report", "--period", "last year"])
    assert result.exit_code == 2 and "a duration (30d, 12w), a month (2026-11)" in result.output
    assert parse_period("PT36H", NOW) == (NOW - dt.timedelta(hours=36), NOW)  # the one syntax


def test_json_and_markdown(history):
    env = {"OPSLEDGER_PROJECT": str(history.root)}
    out = CliRunner().invoke(cli, ["report", "--format", "json"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["changes"] == 6
    md = CliRunner().invoke(cli, ["report", "--format", "md"], env=env)
    assert "| change success rate | 60% |" in md.output


@pytest.mark.slow
def test_html_is_self_contained_and_renders_in_chromium(history, tmp_path):
    page = tmp_path / "report.html"
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    page.write_text(render(k, "html"))
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("<svg") >= 4 and "60%" in text
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is needed (apt-get install chromium); .ci/run installs it"
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000  # a page with charts, not a blank one
    colors = _png_colors(shot.read_bytes())
    assert (0x59, 0xA1, 0x4F) in colors and (0xE1, 0x57, 0x59) in colors  # bars were drawn


def _png_colors(data: bytes) -> set[tuple[int, int, int]]:
    """The RGB colours of an 8-bit RGB(A) PNG (what Chromium writes), without an image library."""
    import struct
    import zlib

    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, _, color_type = struct.unpack(">IIBB", body[:10])
            channels = 4 if color_type == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, colors = bytearray(stride), set()
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if filt == 1:
                line[i] = (line[i] + a) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + b) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        if y % 4 == 0:
            colors |= {tuple(line[x : x + 3]) for x in range(0, stride, channels * 4)}
        previous = line
    return colors


def test_operations_records_are_summarised_for_a_manager(history):
    for kind, result, worst, hours in (
        ("inspection", "failed", "warning", 1),
        ("inspection", "success", "ok", 2),
        ("drift", "failed", None, 3),
        ("drift", "success", None, 4),
    ):
        moment = NOW - dt.timedelta(hours=hours)
        write_record(
            history.root / "records" / f"{kind}s" / f"{moment:%Y%m%dT%H%M%SZ}.json",
            Record(
                kind=kind,
                environment="lab",
                result=result,
                started_at=moment.isoformat(),
                finished_at=moment.isoformat(),
                measurements={"worst": worst} if worst else {},
            ),
        )
    k = kpis(history, start=NOW - dt.timedelta(days=1), end=NOW + dt.timedelta(days=1))
    assert k.operations == {
        "inspection": {"worst warning": 1, "clean": 1},
        "drift": {"drifted": 1, "in sync": 1},
    }


def _drill(project, days_ago, result, rto, rpo):
    moment = NOW - dt.timedelta(days=days_ago)
    write_record(
        project.root / "records" / "drills" / f"{moment:%Y%m%dT%H%M%SZ}-postgres-lab.json",
        Record(
            kind="drill",
            environment="lab",
            result=result,
            started_at=moment.isoformat(),
            finished_at=moment.isoformat(),
            measurements={
                "service": "postgres",
                "objectives": {"rto_s": 900.0, "rpo_s": 300.0},
                "rto_s": rto,
                "rpo_s": rpo,
                "timeline": [{"event": "disaster declared", "at": moment.isoformat()}],
            },
        ),
    )


def test_drills_trend_against_objectives_and_overdue_drills_show(history):
    _drill(history, 200, "success", 41.0, 12.0)
    _drill(history, 100, "failed", 1200.0, 20.0)  # RTO missed
    k = kpis(history, start=NOW - dt.timedelta(days=365), end=NOW + dt.timedelta(days=1))
    assert [(d["rto_s"], d["result"]) for d in k.drills] == [(41.0, "success"), (1200.0, "failed")]
    assert "timeline" not in k.drills[0]  # the chart needs numbers, not the whole timeline
    # the newest passing drill is 200 days old; policies/dr.yml wants one every 90 days
    assert k.drills_overdue == ["postgres on lab: last passed drill 200 days ago (every 90 days)"]
    page = render(k, "html")
    assert "postgres: RTO per drill (seconds)" in page and "objective 900 s" in page
    assert 'fill="#e15759"><title>' in page  # the missed RTO is drawn red
    markdown = render(k, "md")
    assert "| failed | 1200 s / 900 s | 20 s / 300 s |" in markdown
    assert "DR drills overdue: postgres on lab" in markdown


def test_findings_over_time_count_each_records_findings(history):
    moment = NOW - dt.timedelta(hours=5)
    write_record(
        history.root / "records" / "inspections" / f"{moment:%Y%m%dT%H%M%SZ}-daily-lab.json",
        Record(
            kind="inspection",
            environment="lab",
            result="failed",
            started_at=moment.isoformat(),
            finished_at=moment.isoformat(),
            findings=[{"severity": "critical"}, {"severity": "warning"}, {"severity": "warning"}],
            measurements={"worst": "critical"},
        ),
    )
    k = kpis(history, start=NOW - dt.timedelta(days=1), end=NOW + dt.timedelta(days=1))
    assert k.findings_over_time == [
        {
            "finished_at": moment.isoformat(),
            "kind": "inspection",
            "environment": "lab",
            "warning": 2,
            "critical": 1,
            "drifted": 0,
        }
    ]
    assert "Findings over time" in render(k, "html")


# -- numbers a manager can trust (issue 23, point 3) ---------------------------------------------


def test_every_card_says_what_it_counts_and_the_target_behind_its_colour(history):
    """60% success next to 40% "failure" read as a contradiction: the second counts changes
    that failed at least once (one of them later succeeded), and now says so."""
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    page = render(k, "html")
    cards = page.count('<div class="card">')
    assert cards >= 14 and page.count('<div class="c">') == cards  # each says what it counts
    assert "change failure rate" not in page
    assert "failed at least once" in page and "even when a later run succeeded" in page
    assert "of the applied changes, those whose final result is success" in page
    assert "target ≥ 95% (green); red below 85%, amber between" in page  # success, SLA
    assert "target ≤ 5% (green); red above 15%, amber between" in page  # failed at least once
    markdown = render(k, "md")
    assert "| failed at least once | 40% | of the applied changes, those with a failed" in markdown
    definitions = json.loads(render(k, "json"))["definitions"]
    assert definitions["success_rate"]["target"].startswith("target ≥ 95%")
    assert definitions["incidents.response_compliance"]["counts"].startswith("of the incidents")
    assert definitions["mttr_hours"]["target"] is None  # no colour, no target claimed


def _inspection(project, days_ago, critical=0, warning=0):
    moment = NOW - dt.timedelta(days=days_ago)
    write_record(
        project.root / "records" / "inspections" / f"{moment:%Y%m%dT%H%M%SZ}-daily-lab.json",
        Record(
            kind="inspection",
            environment="lab",
            result="failed",
            started_at=moment.isoformat(),
            finished_at=moment.isoformat(),
            findings=[{"severity": "critical"}] * critical + [{"severity": "warning"}] * warning,
            measurements={"worst": "critical" if critical else "warning"},
        ),
    )
    return moment


def test_findings_over_time_cover_the_whole_period_weekly_by_severity(history):
    """Fourteen daily records across 90 days: the chart used to keep the last 12 days."""
    from opsledger.report import weeks

    oldest = _inspection(history, 85, critical=1)
    for day in range(1, 14):
        _inspection(history, day, warning=1)
    start, end = NOW - dt.timedelta(days=90), NOW
    k = kpis(history, start=start, end=end)
    assert list(k.findings_weekly) == weeks(start, end) and len(k.findings_weekly) >= 13
    year, week, _ = oldest.isocalendar()
    assert k.findings_weekly[f"{year}-W{week:02d}"]["critical"] == 1
    assert sum(w["warning"] for w in k.findings_weekly.values()) == 13
    page = render(k, "html")
    assert f"<title>{year}-W{week:02d} critical: 1</title>" in page  # drawn, stacked red
    assert "per week of the period, by severity" in page


def test_env_filters_and_production_comes_first(history, monkeypatch):
    _at(monkeypatch, NOW - dt.timedelta(days=2))
    change, _ = request_change(
        history, title="Tune production", runbook="converge", requested_by="alice",
        reason="Sorts spill", environment="production", targets="db",
        window_start=NOW, window_end=NOW + dt.timedelta(hours=2),
    )  # fmt: skip
    commit_paths(history.root, [change.file.parent], "Request", name="A", email="alice@example.org")
    monkeypatch.delenv("GIT_AUTHOR_DATE")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    assert [e["environment"] for e in k.by_environment] == ["production", "lab"]
    assert k.by_environment[1]["success_rate"] == 0.6
    assert render(k, "md").index("| production | 1 |") < render(k, "md").index("| lab | 6 |")
    env = {"OPSLEDGER_PROJECT": str(history.root)}
    only = CliRunner().invoke(cli, ["report", "--env", "production", "--format", "json"], env=env)
    assert only.exit_code == 0, only.output
    data = json.loads(only.output)
    assert data["changes"] == 1 and data["by_environment"] == []
    bad = CliRunner().invoke(cli, ["report", "--env", "prod"], env=env)
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and "prod" in bad.output


def test_an_empty_report_says_how_to_get_data(tmp_path, history):
    project = copy_project(tmp_path / "new")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "-c", "user.name=A", "-c", "user.email=a@example.org", "commit", "-qm", "I")
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    for fmt in ("md", "html"):
        out = CliRunner().invoke(cli, ["report", "--format", fmt], env=env)
        assert out.exit_code == 0, out.output
        assert "No data in this period yet" in out.output and "n/a" not in out.output
        assert "opsledger change new" in out.output and "opsledger inspect --due" in out.output
    data = json.loads(CliRunner().invoke(cli, ["report", "--format", "json"], env=env).output)
    assert data["empty"] is True and data["how_to_get_data"]
    # a period after every change of a repository that has some: widen it
    k = kpis(history, start=NOW + dt.timedelta(hours=1), end=NOW + dt.timedelta(days=2))
    assert k.empty and "widen it, e.g. --period 365d" in k.how_to_get_data[0]
    assert not kpis(history, start=NOW - dt.timedelta(days=90), end=NOW).empty


def test_markdown_carries_what_the_html_says(history):
    """The markdown report (for a wiki or a PR) is read without the HTML beside it: every
    incident KPI says what it counts and its target, and the failed changes, the change SLA
    breaches and the operations results the page shows are there too."""
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    markdown = render(k, "md")
    incidents = markdown.split("### Incidents and problems", 1)[1]
    assert "| KPI | value | what it counts | target |" in incidents
    assert "| MTTA | n/a | mean minutes from opened to acknowledged |" in incidents
    assert (
        "| incident response SLA | n/a | of the incidents, those acknowledged within their "
        "priority's response time | target ≥ 95% (green)" in incidents
    )
    assert "| CHG-0002 | A emergency change from 28 days ago | rolled_back |" in markdown
    assert "| CHG-0004 | A normal change from 14 days ago | failed |" in markdown
    assert "Change SLA breaches: CHG-0003 (P1): 31.0 h > 4 h" in markdown
    assert "Operations (records of the period by outcome): inspection none recorded" in markdown
    _inspection(history, 2, critical=1)
    k = kpis(history, start=NOW - dt.timedelta(days=90), end=NOW + dt.timedelta(days=1))
    assert "inspection 1 worst critical" in render(k, "md")
