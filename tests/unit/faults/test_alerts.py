"""`opsledger alerts sync` against a real Alertmanager (Debian's binary, installed by
scripts/test) on a free loopback port: alerts are posted to its API v2 as Prometheus posts them,
and become incidents; their resolution, seen while the Watchdog fires, is the evidence that
resolves them. Bad input and an unreachable Alertmanager write nothing."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.faults.alertmanager import fetch_alerts
from opsledger.faults.alerts import SyncStatus, sync_alerts
from opsledger.faults.store import incident_ids, load_incident
from opsledger.gitrepo import git

from .conftest import head

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
RUNBOOK = "roles/monitoring/RUNBOOK.md#postgresqldown"
# How long to wait for Alertmanager to start or to show what was posted to it. Bounds, not
# measures: fifty polls of 0.1 s (five seconds) were a speed the machine had to reach, and a
# loaded 2-core runner need not; a test whose state never comes still fails.
PATIENCE_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Alertmanager:
    """A real Alertmanager on 127.0.0.1:<free port>, single node, its data in a tmp folder."""

    def __init__(self, folder: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "alertmanager.yml"
        self.config.write_text("route:\n  receiver: opsledger\nreceivers:\n  - name: opsledger\n")
        self.data = folder / "am-data"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not Path(BINARY).exists():
            pytest.fail(
                "prometheus-alertmanager is needed (apt-get install prometheus-alertmanager); "
                "scripts/test installs it"
            )
        self.proc = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.config}",
                f"--storage.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        pytest.fail("Alertmanager did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        time.sleep(1.1)  # its uptime is in seconds: the new start must be later than any sync
        self.start()


@pytest.fixture
def am(tmp_path):
    server = Alertmanager(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def alertmanager(am):
    return am.url


def _post(url: str, path: str, payload) -> dict | list | None:
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        body = answer.read()
    return json.loads(body) if body else None


def _iso(moment: dt.datetime) -> str:
    """RFC 3339 with milliseconds, as Prometheus sends times (a restart a moment after a sync
    must not read as the same second)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fire(
    url: str, name: str, *, resolved: bool = False, since: dt.datetime | None = None, **labels: str
) -> None:
    """Post one alert as Prometheus does: firing since `since` (default 2 minutes ago), or
    resolved (endsAt in the past)."""
    now = dt.datetime.now(dt.UTC)
    alert = {
        "labels": {"alertname": name, **labels},
        "annotations": {
            "summary": f"{name} on {labels.get('instance', '?')}",
            "runbook_url": f"roles/monitoring/RUNBOOK.md#{name.lower()}",
        },
        "startsAt": _iso(since or now - dt.timedelta(minutes=2)),
    }
    if resolved:
        alert["endsAt"] = _iso(now - dt.timedelta(seconds=1))
    _post(url, "/api/v2/alerts", [alert])


def watchdog(url: str, *, resolved: bool = False, since: dt.datetime | None = None) -> None:
    fire(
        url,
        "Watchdog",
        resolved=resolved,
        since=since,
        severity="none",
        **{"class": "software", "environment": "lab"},
    )


def pg_down(url: str, *, resolved: bool = False) -> None:
    fire(
        url,
        "PostgreSQLDown",
        resolved=resolved,
        severity="critical",
        priority="P2",
        instance="lab-db1",
        job="postgres",
        environment="lab",
        **{"class": "software"},
    )


def _listed(url: str, name: str, present: bool) -> None:
    """Alertmanager takes posted alerts asynchronously: wait until its API shows the change."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as answer:
            names = [a["labels"]["alertname"] for a in json.loads(answer.read())]
        if (name in names) == present:
            return
        time.sleep(0.1)
    pytest.fail(f"{name} {'never appeared' if present else 'never went'}")


def _until(predicate, what: str) -> None:
    """Poll Alertmanager's view until `predicate` holds (it takes posts asynchronously)."""
    deadline = time.monotonic() + PATIENCE_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Alertmanager never showed {what}")
        time.sleep(0.1)


def _point_inventory_at(project, url: str) -> None:
    host_vars = project.root / "inventories" / "lab" / "host_vars" / "lab-mon1.yml"
    text = host_vars.read_text() if host_vars.exists() else "---\n"
    lines = [line for line in text.splitlines() if not line.startswith("opsledger_alertmanager")]
    host_vars.write_text("\n".join([*lines, f"opsledger_alertmanager_url: {url}"]) + "\n")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "Alertmanager of the test")


@pytest.fixture
def synced(fault_repo, alertmanager):
    _point_inventory_at(fault_repo, alertmanager)
    return fault_repo, alertmanager


def test_a_firing_alert_opens_an_incident_with_priority_class_hosts_and_runbook(synced):
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    result = sync_alerts(project, environment="lab")
    assert result.status == SyncStatus.RECORDED and result.watchdog
    assert [a.name for a in result.alerts] == ["PostgreSQLDown"]  # the Watchdog is no incident
    assert result.detection.opened == ["INC-0001"]
    data = load_incident(project, "INC-0001").data
    assert data["source"] == "alert" and data["class"] == "software"
    assert (data["impact"], data["urgency"], data["priority"]) == ("high", "medium", "P2")
    assert data["hosts"] == ["lab-db1"]
    assert data["runbooks"] == [RUNBOOK]
    (fingerprint,) = data["fingerprints"]
    assert fingerprint.startswith("alert:lab:PostgreSQLDown:")
    record = json.loads(result.record_path.read_text())
    assert result.record_path.parent == project.root / "records" / "alerts"
    assert record["kind"] == "alerts" and record["measurements"]["watchdog"] is True
    assert record["findings"][0]["fingerprint"] == fingerprint
    assert data["evidence"] == [str(result.record_path.relative_to(project.root))]


def test_a_warning_is_p3_and_each_alert_fingerprint_is_an_incident_of_its_own(synced):
    project, url = synced
    watchdog(url)
    for host in ("lab-app1", "lab-app2"):
        fire(url, "DiskSpaceLow", severity="warning", instance=host, **{"class": "hardware"})
    _listed(url, "DiskSpaceLow", True)
    _until(lambda: len(fetch_alerts(url)) == 3, "both posted alerts")
    result = sync_alerts(project, environment="lab")
    assert sorted(result.detection.opened) == ["INC-0001", "INC-0002"]
    incidents = [load_incident(project, i).data for i in incident_ids(project)]
    assert sorted(i["hosts"][0] for i in incidents) == ["lab-app1", "lab-app2"]
    assert {(i["priority"], i["class"]) for i in incidents} == {("P3", "hardware")}


def test_syncing_again_while_it_fires_writes_nothing(synced):
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    before = head(project)
    again = sync_alerts(project, environment="lab")
    assert again.status == SyncStatus.UNCHANGED and again.record_path is None
    assert head(project) == before
    assert [e["action"] for e in load_incident(project, "INC-0001").timeline] == ["opened"]


def test_the_alert_resolving_resolves_the_incident_by_that_evidence(synced, clock):
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    pg_down(url, resolved=True)
    _listed(url, "PostgreSQLDown", False)
    clock.advance(minutes=5)
    result = sync_alerts(project, environment="lab")
    assert result.alerts == [] and result.detection.resolved == ["INC-0001"]
    incident = load_incident(project, "INC-0001")
    assert incident.status == "resolved"
    evidence = str(result.record_path.relative_to(project.root))
    assert incident.data["resolution"]["how"] == "evidence"
    assert incident.data["resolution"]["evidence"] == evidence
    assert "Watchdog" in incident.data["resolution"]["summary"]
    assert [e["action"] for e in incident.timeline] == ["opened", "cleared", "resolved"]
    assert incident.data["evidence"][-1] == evidence
    record = json.loads(result.record_path.read_text())
    assert record["measurements"]["resolved"] == incident.fingerprints


def test_without_the_watchdog_a_gone_alert_resolves_nothing(synced, clock):
    """Prometheus stopped: its alerts expire in Alertmanager. That is no evidence of a fix."""
    project, url = synced
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    first = sync_alerts(project, environment="lab")
    assert first.watchdog is False and first.detection.opened == ["INC-0001"]
    pg_down(url, resolved=True)
    _listed(url, "PostgreSQLDown", False)
    clock.advance(minutes=5)
    result = sync_alerts(project, environment="lab")
    assert result.status == SyncStatus.UNCHANGED or result.detection.resolved == []
    assert load_incident(project, "INC-0001").status == "open"
    runner = CliRunner()
    out = runner.invoke(cli, ["alerts", "sync", "--env", "lab"])
    assert "Watchdog missing" in out.output


def test_an_alert_gone_after_prometheus_restarted_proves_nothing(synced, clock):
    """A restarted Prometheus fires the Watchdog at once but holds restored alerts pending for
    its grace period: the alert is missing though its fault is not fixed."""
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    # Prometheus restarts: its alerts expire in Alertmanager, the Watchdog fires anew
    watchdog(url, resolved=True)
    pg_down(url, resolved=True)
    _listed(url, "PostgreSQLDown", False)
    _listed(url, "Watchdog", False)
    watchdog(url, since=dt.datetime.now(dt.UTC))
    _listed(url, "Watchdog", True)
    clock.advance(minutes=5)
    result = sync_alerts(project, environment="lab")
    assert result.watchdog and result.resolved == [] and result.detection.resolved == []
    (why,) = result.unproven.values()
    assert "Prometheus restarted" in why
    assert load_incident(project, "INC-0001").status == "open"
    # the alert fires again in the new run and then resolves: that run proves it
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    pg_down(url, resolved=True)
    _listed(url, "PostgreSQLDown", False)
    clock.advance(minutes=5)
    assert sync_alerts(project, environment="lab").detection.resolved == ["INC-0001"]


def test_an_alert_gone_after_alertmanager_restarted_proves_nothing(synced, am, clock):
    """A restarted Alertmanager has forgotten alerts until Prometheus sends them again."""
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    am.restart()
    watchdog(url)  # Prometheus re-sends the Watchdog first (same startsAt), not yet the alert
    _listed(url, "Watchdog", True)
    clock.advance(minutes=5)
    result = sync_alerts(project, environment="lab")
    assert result.detection.resolved == []
    assert "Alertmanager runs only since" in next(iter(result.unproven.values()))
    assert load_incident(project, "INC-0001").status == "open"
    out = CliRunner().invoke(cli, ["alerts", "sync", "--env", "lab"])
    assert "gone, not proven resolved: alert:lab:PostgreSQLDown:" in out.output


def test_a_silenced_alert_still_fires_and_keeps_its_incident_open(synced, clock):
    project, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    sync_alerts(project, environment="lab")
    now = dt.datetime.now(dt.UTC)
    _post(
        url,
        "/api/v2/silences",
        {
            "matchers": [{"name": "alertname", "value": "PostgreSQLDown", "isRegex": False}],
            "startsAt": _iso(now),
            "endsAt": _iso(now + dt.timedelta(hours=1)),
            "createdBy": "alice",
            "comment": "maintenance",
        },
    )
    _until(
        lambda: any(a["status"]["state"] == "suppressed" for a in fetch_alerts(url)),
        "the alert silenced",
    )
    clock.advance(minutes=5)
    result = sync_alerts(project, environment="lab")
    assert [a.state for a in result.alerts] == ["suppressed"]
    assert result.status == SyncStatus.RECORDED and result.detection.resolved == []
    assert load_incident(project, "INC-0001").status == "open"


def test_other_environments_alerts_are_left_alone(synced):
    project, url = synced
    watchdog(url)
    fire(url, "HostDown", severity="critical", instance="prod-db1", environment="production")
    _listed(url, "HostDown", True)
    result = sync_alerts(project, environment="lab")
    assert result.alerts == [] and incident_ids(project) == []


def test_the_cli_lists_alerts_with_their_priority_and_exits_1_while_they_fire(synced):
    _, url = synced
    watchdog(url)
    pg_down(url)
    _listed(url, "PostgreSQLDown", True)
    out = CliRunner().invoke(cli, ["alerts", "sync", "--env", "lab"])
    assert out.exit_code == 1, out.output
    assert "P2 PostgreSQLDown lab-db1: PostgreSQLDown on lab-db1" in out.output
    assert "opened INC-0001" in out.output


# --- bad input: one line, exit 2, nothing written ---------------------------------------------


def _nothing_written(project, before: str) -> None:
    assert head(project) == before
    assert not (project.root / "records" / "alerts").exists()
    assert incident_ids(project) == []
    assert git(project.root, "status", "--porcelain").stdout == ""


def _fails_cleanly(project, fragment: str) -> None:
    before = head(project)
    out = CliRunner().invoke(cli, ["alerts", "sync", "--env", "lab"])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], out.output
    assert "Traceback" not in out.output
    _nothing_written(project, before)


def test_an_unreachable_alertmanager_is_one_line_and_exit_2(fault_repo):
    _point_inventory_at(fault_repo, f"http://127.0.0.1:{_free_port()}")
    _fails_cleanly(fault_repo, "Alertmanager does not answer")


def test_no_alertmanager_in_the_inventory_is_exit_2(fault_repo):
    host_vars = fault_repo.root / "inventories" / "lab" / "host_vars" / "lab-mon1.yml"
    kept = [line for line in host_vars.read_text().splitlines() if "alertmanager_url" not in line]
    host_vars.write_text("\n".join(kept) + "\n")
    git(fault_repo.root, "commit", "-qam", "No Alertmanager")
    _fails_cleanly(fault_repo, "opsledger_alertmanager_url")


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1:9093", "127.0.0.1:9093", "http://"])
def test_a_url_that_is_not_http_is_exit_2(fault_repo, bad):
    _point_inventory_at(fault_repo, bad)
    _fails_cleanly(fault_repo, "is not an http(s) URL")


STATUS = b'{"uptime": "2026-12-01T00:00:00.123456789Z"}'


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (b"<html>not here</html>", b"[]", "not JSON"),
        (b'{"cluster": {}}', b"[]", "the status has no uptime"),
        (STATUS, b'{"status": "success"}', "not a list of alerts"),
        (STATUS, b'[{"labels": {"alertname": 5}}]', "labels and annotations must map text to text"),
        (
            STATUS,
            b'[{"labels": {"alertname": "X"}, "fingerprint": "../x", "startsAt": "t"}]',
            "fingerprint '../x' is not Alertmanager's",
        ),
        (
            STATUS,
            b'[{"labels": {"alertname": "X"}, "fingerprint": "ab12", "startsAt": "soon"}]',
            "startsAt 'soon' is not a time",
        ),
    ],
)
def test_an_answer_that_is_not_alertmanagers_is_exit_2(fault_repo, status, body, fragment):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(status if self.path.startswith("/api/v2/status") else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _point_inventory_at(fault_repo, f"http://127.0.0.1:{server.server_address[1]}")
        _fails_cleanly(fault_repo, fragment)
    finally:
        server.shutdown()
        server.server_close()


def test_a_rule_with_a_severity_or_class_the_policy_lacks_is_exit_2(synced):
    project, url = synced
    watchdog(url)
    fire(url, "Odd", severity="sev9", instance="lab-db1", **{"class": "software"})
    fire(url, "Odder", severity="critical", instance="lab-db1", **{"class": "cosmic"})
    _listed(url, "Odder", True)
    before = head(project)
    out = CliRunner().invoke(cli, ["alerts", "sync", "--env", "lab"])
    assert out.exit_code == 2, out.output
    assert "severity 'sev9' is not in the policy" in out.output
    assert "class 'cosmic' is not a fault class" in out.output
    assert len([line for line in out.output.splitlines() if line.strip()]) == 2
    _nothing_written(project, before)
