"""Alerts become incidents: what Alertmanager lists, recorded as evidence and handed to detection.

`sync_alerts` reads every alert an environment's Alertmanager holds (API v2: active, silenced
and inhibited alike — a silence mutes notifications, it does not fix anything), writes what it
saw as an `alerts` record under `records/alerts/`, commits it, and lets `faults.detect` open an
incident per alert fingerprint (class, priority, hosts and runbook from the alert's labels and
annotations) or update the one already open.

Resolution follows the evidence rule every detection follows: an incident is resolved only by a
committed record that shows its fault gone. For an alert that is a later snapshot in which
Alertmanager no longer lists it, while the Watchdog alert fires *and has fired since before the
last snapshot that saw the alert* and Alertmanager has run since then too: the same Prometheus
run that fired the alert has evaluated its rule clean and told the same Alertmanager so. Other
ways an alert disappears prove nothing and resolve nothing: a stopped Prometheus lets every
alert expire (no Watchdog); a restarted one fires the Watchdog at once but holds restored alerts
pending for its grace period (a Watchdog newer than the sighting); a restarted Alertmanager
has forgotten alerts until Prometheus sends them again (started after the sighting). Such an
incident waits for the next sighting, or for a person's recovery test.

Where the Alertmanager is: the inventory variable `opsledger_alertmanager_url` of the
environment's monitoring host (the URL as this machine reaches it), never a constant here.
A snapshot equal to the last one recorded (same alerts, same Watchdog) writes nothing: a sync
every few minutes does not commit every few minutes. Unreachable Alertmanager, an answer that
is not Alertmanager's, or labels the policy does not know: one line each, exit 2, nothing
written.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.faults.alertmanager import Alert, alertmanager_started, fetch_alerts, parse_alerts
from opsledger.faults.detect import DetectionResult, record_detection
from opsledger.faults.policy import load_fault_policy
from opsledger.faults.store import scan_incidents
from opsledger.gitrepo import head, is_repo
from opsledger.identity import runner_identity
from opsledger.inventory import Inventory, load_inventory
from opsledger.project import Project
from opsledger.records import Record, RunResult, load_records, save_evidence

URL_VARIABLE = "opsledger_alertmanager_url"


class SyncStatus(StrEnum):
    RECORDED = "recorded"  # a new snapshot was written and committed
    UNCHANGED = "unchanged"  # Alertmanager lists what the last record says: nothing written
    NOT_RECORDED = "not_recorded"  # not a git repository: read, nothing written


@dataclass
class SyncResult:
    status: SyncStatus
    environment: str
    url: str
    alerts: list[Alert]
    watchdog: bool
    # alert fingerprints of active incidents that are gone: proven resolved, or why not
    resolved: list[str] = field(default_factory=list)
    unproven: dict[str, str] = field(default_factory=dict)
    record_path: Path | None = None
    commit: str | None = None
    detection: DetectionResult | None = None

    @property
    def incidents(self) -> str:
        return self.detection.summary() if self.detection else ""


def alertmanager_url(project: Project, environment: str) -> str:
    """The Alertmanager URL the environment's inventory names (one, on its monitoring host).

    Example:
        alertmanager_url(find_project(), "lab")  # 'http://127.0.0.1:19093'
    """
    inventory = load_inventory(project.require_environment(environment))
    return _url_from(inventory, environment)


def _url_from(inventory: Inventory, environment: str) -> str:
    source = str(inventory.source)
    urls = {str(h.get(URL_VARIABLE)) for h in inventory.hosts.values() if h.get(URL_VARIABLE)}
    if not urls:
        raise OpsledgerError(
            Problem(
                f"no host of {environment} names its Alertmanager",
                source,
                URL_VARIABLE,
                f"set {URL_VARIABLE}: http://HOST:PORT on the monitoring host "
                f"(inventories/{environment}/host_vars/<host>.yml)",
            )
        )
    if len(urls) > 1:
        raise OpsledgerError(
            Problem(
                f"hosts of {environment} name different Alertmanagers: {', '.join(sorted(urls))}",
                source,
                URL_VARIABLE,
                "set it on the monitoring host only",
            )
        )
    url = urls.pop()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise OpsledgerError(
            Problem(
                f"{shown(url)} is not an http(s) URL of an Alertmanager",
                source,
                URL_VARIABLE,
                "e.g. http://127.0.0.1:19093",
            )
        )
    return url.rstrip("/")


def _same_as_last(earlier: list[Record], alerts: list[Alert], watchdog: bool) -> bool:
    """Nothing new: the last snapshot listed the same alerts in the same states, Watchdog alike.

    Nothing it could resolve either: a proof needs a continuity that only weakens with time.
    """
    if not earlier:
        return False
    last = earlier[-1]
    return bool(last.measurements.get("watchdog")) == watchdog and sorted(
        (str(f.get("fingerprint")), str(f.get("state"))) for f in last.findings
    ) == [(a.fingerprint, a.state) for a in alerts]


def _last_sighting(earlier: list[Record], fingerprint: str) -> dt.datetime | None:
    """When the newest earlier snapshot that listed the alert was taken."""
    for record in reversed(earlier):
        if any(f.get("fingerprint") == fingerprint for f in record.findings):
            return dt.datetime.fromisoformat(record.started_at)
    return None


def _proofs(
    project: Project,
    environment: str,
    earlier: list[Record],
    alerts: list[Alert],
    watchdog: dt.datetime | None,
    started: dt.datetime,
) -> tuple[list[str], dict[str, str]]:
    """Which alerts of active incidents this snapshot proves resolved, and why the others not.

    Proven: gone from Alertmanager while the Watchdog fires, the Watchdog firing and
    Alertmanager running since before the last snapshot that saw the alert.
    """
    incidents, _ = scan_incidents(project)
    now = {a.fingerprint for a in alerts}
    proven, unproven = [], {}
    for incident in incidents:
        if not incident.active or incident.environment != environment:
            continue
        for fingerprint in incident.fingerprints:
            if not fingerprint.startswith(f"alert:{environment}:") or fingerprint in now:
                continue
            seen = _last_sighting(earlier, fingerprint)
            if watchdog is None:
                unproven[fingerprint] = "the Watchdog does not fire: Prometheus may be down"
            elif seen is None:
                unproven[fingerprint] = "no earlier snapshot saw the alert"
            elif watchdog > seen:
                unproven[fingerprint] = (
                    f"the Watchdog fires only since {watchdog.isoformat()}, after the alert was "
                    f"last seen ({seen.isoformat()}): Prometheus restarted"
                )
            elif started > seen:
                unproven[fingerprint] = (
                    f"Alertmanager runs only since {started.isoformat()}, after the alert was "
                    f"last seen ({seen.isoformat()}): it restarted and forgot its alerts"
                )
            else:
                proven.append(fingerprint)
    return sorted(set(proven)), dict(sorted(unproven.items()))


def sync_alerts(
    project: Project, *, environment: str, now: dt.datetime | None = None
) -> SyncResult:
    """Record what the environment's Alertmanager lists; open, update or resolve incidents.

    Example:
        result = sync_alerts(find_project(), environment="lab")
        result.status, [a.name for a in result.alerts], result.incidents
    """
    inventory = load_inventory(project.require_environment(environment))
    url = _url_from(inventory, environment)
    policy = load_fault_policy(project)
    started = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    alertmanager_since = alertmanager_started(url)
    data = fetch_alerts(url)
    alerts, watchdog_since = parse_alerts(
        data,
        environment=environment,
        hosts=set(inventory.hosts),
        policy=policy,
        where=f"{url}/api/v2/alerts",
    )
    watchdog = watchdog_since is not None
    result = SyncResult(SyncStatus.NOT_RECORDED, environment, url, alerts, watchdog)
    if not is_repo(project.root):
        return result
    earlier = [r for r in load_records(project, "alerts") if r.environment == environment]
    result.resolved, result.unproven = _proofs(
        project, environment, earlier, alerts, watchdog_since, alertmanager_since
    )
    if _same_as_last(earlier, alerts, watchdog) and not result.resolved:
        result.status = SyncStatus.UNCHANGED
        return result
    finished = dt.datetime.now(dt.UTC) if now is None else started
    record = Record(
        kind="alerts",
        environment=environment,
        result=RunResult.FAILED if alerts else RunResult.SUCCESS,
        started_at=started.isoformat(),
        finished_at=max(started, finished).isoformat(),
        targets="all",
        hosts=sorted({h for a in alerts for h in a.hosts}),
        runner=runner_identity(),
        git_commit=head(project.root),
        findings=[a.finding() for a in alerts],
        measurements={
            "alertmanager": url,
            "alertmanager_since": alertmanager_since.isoformat(),
            "watchdog": watchdog,
            "watchdog_since": watchdog_since.isoformat() if watchdog_since else None,
            # alerts of active incidents this snapshot proves resolved, and why others not
            "resolved": result.resolved,
            "unproven": result.unproven,
            "alerts": len(alerts),
            "suppressed": sum(a.state == "suppressed" for a in alerts),
        },
    )
    names = ", ".join(sorted({a.name for a in alerts})) or "none"
    saved = save_evidence(
        project,
        record,
        started=started,
        name=environment,
        message=f"Alerts {environment}: {len(alerts)} firing ({names})"
        + ("" if watchdog else "; Watchdog missing"),
    )
    path = result.record_path = saved.path
    result.commit = saved.commit
    result.detection = record_detection(project, [path], now=now)
    result.status = SyncStatus.RECORDED
    return result
