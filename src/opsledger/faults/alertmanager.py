"""Alertmanager's API v2 as opsledger reads it: its alerts, and since when it runs.

Only reads (GET); every answer is checked before anything uses it, and every problem is one
line naming the URL and what is wrong (exit 2): an Alertmanager that does not answer, answers
HTTP errors, something that is not JSON, or alerts not shaped like Alertmanager's; an alert
whose severity or class the policy does not know (fix the rule, not the incident).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.faults.policy import FaultPolicy

WATCHDOG = "Watchdog"
TIMEOUT_S = 10.0
MAX_BYTES = 8 * 1024 * 1024  # an Alertmanager with thousands of alerts stays far below
_FINGERPRINT = re.compile(r"^[0-9a-f]{1,32}$")
_ALERTNAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]{0,127}$")


@dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager lists it, with what an incident needs from its labels."""

    name: str
    fingerprint: str  # ours: alert:<env>:<name>:<Alertmanager's fingerprint>
    severity: str
    priority: str  # from the severity through incidents.yml and sla.yml ("" when none)
    klass: str
    hosts: tuple[str, ...]
    summary: str
    runbook: str
    starts_at: str
    state: str  # active, suppressed (silenced or inhibited)
    labels: dict[str, str] = field(default_factory=dict)

    def finding(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "fingerprint": self.fingerprint,
            "severity": self.severity,
            "priority": self.priority,
            "class": self.klass,
            "hosts": list(self.hosts),
            "summary": self.summary,
            "runbook": self.runbook,
            "starts_at": self.starts_at,
            "state": self.state,
            "labels": self.labels,
        }


def fetch_alerts(url: str, *, timeout: float = TIMEOUT_S) -> list[Any]:
    """Every alert Alertmanager holds (API v2; resolved alerts are no longer listed).

    Example:
        fetch_alerts("http://127.0.0.1:19093")  # [{"labels": {...}, "fingerprint": ...}, ...]
    """
    data = _get_json(
        url, "/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true", timeout
    )
    if not isinstance(data, list):
        raise OpsledgerError(
            Problem(
                "the answer is not a list of alerts",
                f"{url}/api/v2/alerts",
                fix="point the URL at Alertmanager",
            )
        )
    return data


def _get_json(url: str, path: str, timeout: float) -> Any:
    where = f"{url}{path.split('?')[0]}"
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as answer:
            body = answer.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise OpsledgerError(
            Problem(
                f"Alertmanager answered HTTP {err.code}",
                where,
                fix="check the URL (is it Alertmanager's API v2?) and Alertmanager's log",
            )
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise OpsledgerError(
            Problem(
                f"Alertmanager does not answer ({reason})",
                where,
                fix="is it running (opsledger lab status) and is the URL in the inventory right?",
            )
        ) from None
    if len(body) > MAX_BYTES:
        raise OpsledgerError(
            Problem(
                f"the answer is larger than {MAX_BYTES} bytes", where, fix="is it Alertmanager?"
            )
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise OpsledgerError(
            Problem("the answer is not JSON", where, fix="point the URL at Alertmanager")
        ) from None


def _moment(value: Any) -> dt.datetime | None:
    """An RFC 3339 time of Alertmanager's (Go writes 9 fractional digits and Z) as UTC."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.tzinfo else None


def alertmanager_started(url: str, *, timeout: float = TIMEOUT_S) -> dt.datetime:
    """When the Alertmanager process started (API v2 status `uptime`): it forgets alerts then.

    Example:
        alertmanager_started("http://127.0.0.1:19093")  # datetime(2026, 12, 1, 14, 2, ...)
    """
    data = _get_json(url, "/api/v2/status", timeout)
    started = _moment(data.get("uptime")) if isinstance(data, dict) else None
    if started is None:
        raise OpsledgerError(
            Problem(
                "the status has no uptime",
                f"{url}/api/v2/status",
                fix="point the URL at Alertmanager",
            )
        )
    return started


def _text_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None
    return value


def parse_alerts(
    data: list[Any], *, environment: str, hosts: set[str], policy: FaultPolicy, where: str
) -> tuple[list[Alert], dt.datetime | None]:
    """Alertmanager's alerts of this environment as Alerts, and since when the Watchdog fires.

    Every problem at once, one line each: an alert that is not shaped like Alertmanager's, or
    whose severity or class the policy does not know (fix the rule, not the incident).
    """
    problems: list[Problem] = []
    alerts: list[Alert] = []
    watchdog: dt.datetime | None = None
    for index, item in enumerate(data):
        at = f"[{index}]"
        labels = _text_map(item.get("labels")) if isinstance(item, dict) else None
        annotations = _text_map(item.get("annotations") or {}) if isinstance(item, dict) else None
        if labels is None or annotations is None:
            problems.append(
                Problem(
                    "not an alert (labels and annotations must map text to text)",
                    where,
                    at,
                    "point the URL at Alertmanager",
                )
            )
            continue
        name = labels.get("alertname", "")
        at = f"[{index}] {shown(name, 60)}"
        fingerprint = item.get("fingerprint")
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        starts = item.get("startsAt")
        if not _ALERTNAME.fullmatch(name):
            problems.append(
                Problem("no valid alertname label", where, at, "every rule names its alert")
            )
            continue
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            problems.append(
                Problem(f"fingerprint {shown(fingerprint)} is not Alertmanager's", where, at)
            )
            continue
        started = _moment(starts)
        if started is None:
            problems.append(
                Problem(
                    f"startsAt {shown(starts)} is not a time",
                    where,
                    at,
                    "point the URL at Alertmanager",
                )
            )
            continue
        env = labels.get("environment")
        if env is not None and env != environment:
            continue  # another environment's alert in a shared Alertmanager
        if name == WATCHDOG:
            watchdog = started if watchdog is None else min(watchdog, started)
            continue
        severity = labels.get("severity", "")
        if severity not in policy.alert_severities and severity != "none":
            problems.append(
                Problem(
                    f"severity {shown(severity)} is not in the policy",
                    where,
                    f"{at}.labels.severity",
                    f"label the rule with one of: {', '.join(policy.alert_severities)}, none "
                    "(policies/incidents.yml detection.alert_severities)",
                )
            )
            continue
        klass = labels.get("class", "")
        if klass not in policy.classes:
            problems.append(
                Problem(
                    f"class {shown(klass)} is not a fault class",
                    where,
                    f"{at}.labels.class",
                    f"label the rule with one of: {', '.join(policy.classes)}",
                )
            )
            continue
        rule = policy.alert_severities.get(severity)
        priority = policy.matrix.get(rule.impact, {}).get(rule.urgency, "") if rule else ""
        instance = labels.get("instance", "").rpartition(":")[0] or labels.get("instance", "")
        suppressed = status.get("state") == "suppressed"
        alerts.append(
            Alert(
                name=name,
                fingerprint=f"alert:{environment}:{name}:{fingerprint}",
                severity=severity,
                priority=priority,
                klass=klass,
                hosts=(instance,) if instance in hosts else (),
                summary=(annotations.get("summary") or annotations.get("description") or name)[
                    :300
                ],
                runbook=annotations.get("runbook_url", "")[:256],
                starts_at=started.isoformat(),
                state="suppressed" if suppressed else "active",
                labels=dict(sorted(labels.items())),
            )
        )
    if problems:
        raise OpsledgerError(problems)
    return sorted(alerts, key=lambda a: a.fingerprint), watchdog
