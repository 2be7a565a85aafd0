"""Notifications: tell the team's channels what happened, never at the cost of the run.

`policies/notifications.yml` names channels (Slack, Teams, Matrix, e-mail, a generic webhook)
and routes events to them per environment. Delivery goes through Apprise, which keeps the
clients of those services (their APIs, auth and payloads change; a hand-written HTTP client
per service would not keep up). A channel's URL that carries a token comes from an environment
variable (`url_env`: a CI secret), never from git.

Events: `apply_succeeded`, `apply_failed` (failed, canceled, interrupted), `rollback`
(rolled_back, rollback_failed), `apply_denied` (an apply refused by policy while its change
window is open), `critical_finding` (an inspection), `drill_failed` (a drill, by itself or run as
a change), `sla_breach` (an incident clock passing its target), `sla_near_breach` (one reaching
sla.yml's near-breach share of it).

A failed delivery never fails the operation: each delivery's outcome (sent, failed with the
error, skipped when the channel's variable is unset) comes back as data — apply writes it into
the run record — and is appended to `.opsledger/notifications.jsonl`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsledger.errors import OpsledgerError, Problem
from opsledger.policy.files import policy_path, read_policy
from opsledger.project import Project
from opsledger.yamlio import load_json

if TYPE_CHECKING:
    from opsledger.faults.clock import Clock
    from opsledger.faults.store import Incident

EVENTS = (
    "apply_succeeded",
    "apply_failed",
    "rollback",
    "apply_denied",
    "critical_finding",
    "drill_failed",
    "sla_breach",
    "sla_near_breach",
)
# Apprise URL schemes each kind accepts, so a Slack channel cannot silently post elsewhere.
SCHEMES = {
    "slack": ("slack://", "https://hooks.slack.com/"),
    "teams": ("msteams://", "workflows://", "https://"),
    "matrix": ("matrix://", "matrixs://"),
    "email": ("mailto://", "mailtos://"),
    "webhook": ("json://", "jsons://", "form://", "forms://", "xml://", "xmls://"),
}


class Severity(enum.StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


class DeliveryStatus(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # the channel's variable is not set on this machine


@dataclass(frozen=True)
class Channel:
    name: str
    kind: str
    url: str | None
    url_env: str | None

    def resolve(self) -> str | None:
        return self.url or (os.environ.get(self.url_env or "") or None)


@dataclass(frozen=True)
class Route:
    events: tuple[str, ...]
    environments: tuple[str, ...] | None
    channels: tuple[str, ...]


@dataclass
class NotifyPolicy:
    channels: dict[str, Channel] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)

    def channels_for(self, events: tuple[str, ...], environment: str) -> list[Channel]:
        """Every channel a route sends one of `events` of `environment` to, each once."""
        names: list[str] = []
        for route in self.routes:
            if not set(events) & set(route.events):
                continue
            if route.environments is not None and environment not in route.environments:
                continue
            names += [n for n in route.channels if n not in names]
        return [self.channels[n] for n in names if n in self.channels]


@dataclass(frozen=True)
class Notice:
    """One thing to tell: which events it is, where, and what to say."""

    events: tuple[str, ...]
    environment: str
    title: str
    body: str
    severity: Severity = Severity.INFO
    subject: str = ""  # the change, incident, record it is about


@dataclass(frozen=True)
class Delivery:
    channel: str
    kind: str
    status: DeliveryStatus
    error: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items() if v != ""}


@dataclass
class NotifyResult:
    notice: Notice
    deliveries: list[Delivery]
    problems: list[Problem] = field(default_factory=list)  # a policy that does not load

    @property
    def failed(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status is DeliveryStatus.FAILED]

    def as_list(self) -> list[dict[str, str]]:
        """What a record keeps: one entry per channel (and a policy that did not load)."""
        return [d.as_dict() for d in self.deliveries] + [
            {"channel": "-", "status": "failed", "error": str(p)} for p in self.problems
        ]

    def lines(self) -> list[str]:
        """One line per delivery that did not go out, for the operator's output."""
        return [
            f"notification to {d.channel} ({d.kind}) {d.status}: {d.error}"
            for d in self.deliveries
            if d.status is not DeliveryStatus.SENT
        ] + [f"notifications not sent: {p}" for p in self.problems]


def _check_url(channel: Channel, url: str, file: str) -> list[Problem]:
    import apprise

    where = f"channels.{channel.name}" + (f" (${channel.url_env})" if channel.url_env else "")
    if not url.startswith(SCHEMES[channel.kind]):
        return [
            Problem(
                f"a {channel.kind} channel's URL must start with "
                + " or ".join(SCHEMES[channel.kind]),
                file,
                where,
                "see https://github.com/caronc/apprise/wiki for the URL of each service",
            )
        ]
    if apprise.Apprise.instantiate(url) is None:
        return [Problem("Apprise cannot read this URL", file, where, "check its form and token")]
    return []


def load_notify_policy(project: Project) -> tuple[NotifyPolicy, list[Problem]]:
    """The notifications policy and its problems; no file means no notifications.

    Example:
        policy, problems = load_notify_policy(find_project())
    """
    path = policy_path(project, "notifications")
    if not path.exists() and not path.is_symlink():
        return NotifyPolicy(), []
    file = str(path)
    # The one loader of policy files: inside the project, not through a symlink, its schema.
    data, found = read_policy(project, "notifications", "notifications policy")
    if data is None:
        return NotifyPolicy(), found
    channels = {
        name: Channel(name, spec["kind"], spec.get("url"), spec.get("url_env"))
        for name, spec in data["channels"].items()
    }
    routes = []
    envs = {p.parent.name for p in (project.root / "inventories").glob("*/hosts.yml")}
    for index, entry in enumerate(data["routes"]):
        for name in entry["channels"]:
            if name not in channels:
                found.append(
                    Problem(
                        f"unknown channel {name!r}",
                        file,
                        f"routes[{index}].channels",
                        f"use one of: {', '.join(sorted(channels))}",
                    )
                )
        for env in entry.get("environments") or []:
            if env not in envs:
                found.append(
                    Problem(
                        f"unknown environment {env!r}",
                        file,
                        f"routes[{index}].environments",
                        f"use one of: {', '.join(sorted(envs))}",
                    )
                )
        routes.append(
            Route(
                tuple(entry["events"]),
                tuple(entry["environments"]) if entry.get("environments") else None,
                tuple(entry["channels"]),
            )
        )
    for channel in channels.values():
        url = channel.resolve()
        if url:
            found += _check_url(channel, url, file)
    return NotifyPolicy(channels, routes), found


def _send(channel: Channel, url: str, notice: Notice) -> Delivery:
    import apprise

    kinds = {
        Severity.INFO: apprise.NotifyType.INFO,
        Severity.SUCCESS: apprise.NotifyType.SUCCESS,
        Severity.WARNING: apprise.NotifyType.WARNING,
        Severity.FAILURE: apprise.NotifyType.FAILURE,
    }
    sender = apprise.Apprise()
    with apprise.LogCapture(level=logging.WARNING) as captured:
        added = sender.add(url)
        ok = added and sender.notify(
            title=notice.title, body=notice.body, notify_type=kinds[notice.severity]
        )
        said = " ".join(captured.getvalue().split())
    if ok:
        return Delivery(channel.name, channel.kind, DeliveryStatus.SENT)
    why = said[:500] or ("Apprise cannot read the URL" if not added else "the service refused it")
    return Delivery(channel.name, channel.kind, DeliveryStatus.FAILED, why)


def notify(project: Project, notice: Notice) -> NotifyResult:
    """Send a notice to every channel its events and environment are routed to.

    Never raises for a delivery: a channel that fails is reported (and journaled) and the
    others are still tried. A policy that does not load sends nothing and says why.

    Example:
        notify(find_project(), Notice(("apply_failed",), "production", "CHG-0001 failed", "..."))
    """
    policy, problems = load_notify_policy(project)
    loaded = not problems or policy.channels
    deliveries = []
    for channel in policy.channels_for(notice.events, notice.environment) if loaded else []:
        url = channel.resolve()
        if not url:
            deliveries.append(
                Delivery(
                    channel.name,
                    channel.kind,
                    DeliveryStatus.SKIPPED,
                    f"${channel.url_env} is not set here",
                )
            )
            continue
        try:
            deliveries.append(_send(channel, url, notice))
        except Exception as exc:  # a notifier must never fail the run it reports on
            deliveries.append(
                Delivery(channel.name, channel.kind, DeliveryStatus.FAILED, repr(exc)[:500])
            )
    result = NotifyResult(notice, deliveries, problems)
    _journal(project, result)
    return result


def _journal(project: Project, result: NotifyResult) -> None:
    if not result.deliveries and not result.problems:
        return
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "events": list(result.notice.events),
        "environment": result.notice.environment,
        "subject": result.notice.subject,
        "title": result.notice.title,
        "deliveries": result.as_list(),
    }
    try:
        project.state_dir.mkdir(parents=True, exist_ok=True)
        with open(project.state_dir / "notifications.jsonl", "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    except OSError:
        pass  # the journal is a convenience; the result itself carries the outcome


# -- notices of the events opsledger produces ---------------------------------------------------


def run_notice(
    change_id: str,
    title: str,
    environment: str,
    targets: str,
    runbook: str,
    result: str,
    failure: str,
    record: str,
    hosts: list[str] | tuple[str, ...] = (),
    rollback: str = "",
) -> Notice:
    """The notice of a change run's result, naming the hosts it ran on.

    `targets` is the pattern the change asked for (a group); the hosts are what it matched,
    which is what the person reading a rollback notice needs to look at. `rollback` says how
    the rollback ended (a rollback_failed leaves the hosts in an unknown state).
    """
    events: tuple[str, ...]
    if result == "success":
        events, severity = ("apply_succeeded",), Severity.SUCCESS
    elif result in ("rolled_back", "rollback_failed"):
        events, severity = ("rollback", "apply_failed"), Severity.FAILURE
    else:
        events, severity = ("apply_failed",), Severity.FAILURE
    body = [
        f"{change_id} ({title}): {result}",
        f"{runbook} on {environment}:{targets}",
    ]
    if hosts:
        body.append(f"hosts: {', '.join(hosts)}")
    if failure:
        body.append(failure[:1000])
    if rollback:
        body.append(rollback[:1000])
    body.append(f"record: {record}")
    return Notice(
        events,
        environment,
        f"[{environment}] {change_id} {result}",
        "\n".join(body),
        severity,
        change_id,
    )


def denied_notice(change_id: str, environment: str, reasons: list[str]) -> Notice:
    """The notice of an apply refused by policy while its window is open."""
    return Notice(
        ("apply_denied",),
        environment,
        f"[{environment}] {change_id} denied in its window",
        f"{change_id} was not applied: " + "; ".join(reasons)[:1500],
        Severity.WARNING,
        change_id,
    )


def notice_of_record(record: Any, path: str) -> Notice | None:
    """The notice an inspection or drill record calls for: critical findings, a failed drill."""
    if record.kind == "inspection":
        critical = [f for f in record.findings if f.get("severity") == "critical"]
        if not critical:
            return None
        lines = [
            f"{f.get('host', '?')}: {f.get('check', '?')} — {f.get('message', '')}"[:300]
            for f in critical[:20]
        ]
        return Notice(
            ("critical_finding",),
            record.environment,
            f"[{record.environment}] {len(critical)} critical inspection finding(s)",
            "\n".join([*lines, f"record: {path}"]),
            Severity.FAILURE,
            path,
        )
    if record.kind == "drill" and record.result != "success":
        service = (record.measurements or {}).get("service") or record.runbook or "drill"
        reasons = "; ".join(str(f.get("reason", f)) for f in record.findings[:5])
        return Notice(
            ("drill_failed",),
            record.environment,
            f"[{record.environment}] DR drill {service} failed",
            "\n".join(filter(None, [reasons[:1500], f"record: {path}"])),
            Severity.FAILURE,
            path,
        )
    return None


def notify_records(project: Project, paths: list[Path]) -> list[NotifyResult]:
    """Notify what committed inspection and drill records call for; never raises.

    Records are read by the project's one JSON loader (inside the repository, not through a
    symlink, bounded, no duplicate keys): a record is evidence, and what it tells the team
    must be what git holds. A record that does not read sends nothing; its result carries the
    problem (file, field, fix) and the journal keeps it.

    Example:
        notify_records(find_project(), [Path("records/inspections/20261201T050000Z.json")])
    """
    results = []
    for path in paths:
        record, relative, problem = _read_record(project, Path(path))
        if record is None:
            unread = Notice((), "", f"record {relative} not read", "", Severity.WARNING, relative)
            result = NotifyResult(unread, [], [problem] if problem else [])
            _journal(project, result)
            results.append(result)
            continue
        notice = notice_of_record(record, relative)
        if notice is not None:
            results.append(notify(project, notice))
    return results


def _read_record(project: Project, path: Path) -> tuple[Any, str, Problem | None]:
    """(the record, its path in the repository, None) or (None, the path, why not)."""
    from opsledger.records import record_from_data

    absolute = path if path.is_absolute() else project.root / path
    try:
        relative = absolute.relative_to(project.root).as_posix()
    except ValueError:
        relative = str(path)
    try:
        record = record_from_data(load_json(absolute, what="record", root=project.root))
    except OpsledgerError as err:
        return None, relative, err.problems[0]
    if record is None:
        return (
            None,
            relative,
            Problem(
                "not a record (a field has the wrong type)",
                relative,
                "kind",
                "restore the record from git",
            ),
        )
    return record, relative, None


@dataclass
class BreachReport:
    """Incident clocks past their target or near it within the period, and what telling did."""

    breaches: list[tuple[str, str, dt.datetime]]  # (incident, clock, due)
    results: list[NotifyResult]
    near: list[tuple[str, str, dt.datetime]] = field(default_factory=list)  # (.., .., due)
    near_results: list[NotifyResult] = field(default_factory=list)
    # Incidents whose file does not read: their clocks cannot be judged, so they are named
    # (and the command exits 2) rather than silently counted as "no breach".
    unreadable: list[Problem] = field(default_factory=list)


def _clock_notice(incident: Incident, clock: Clock, event: str) -> Notice:
    """The notice of one incident clock: breached (`sla_breach`) or near it (`sla_near_breach`)."""
    due = clock.due.isoformat(timespec="minutes") if clock.due else "-"
    title = incident.data.get("title", "")
    if event == "sla_breach":
        headline, said, severity = f"breached its {clock.name} SLA", "was due", Severity.FAILURE
    else:
        headline = f"nears its {clock.name} SLA (due {due})"
        said, severity = "is due", Severity.WARNING
    return Notice(
        (event,),
        incident.environment,
        f"[{incident.environment}] {incident.id} ({incident.priority}) {headline}",
        f"{incident.id}: {title}\n{clock.name} {said} at {due} "
        f"(target {clock.target}); status {incident.status}",
        severity,
        incident.id,
    )


def notify_breaches(
    project: Project,
    *,
    environment: str | None = None,
    within: dt.timedelta,
    now: dt.datetime | None = None,
) -> BreachReport:
    """Notify incident clocks that passed their target, or came near it, in the last `within`.

    `sla_breach`: the target passed; `sla_near_breach`: the clock reached sla.yml's
    near_breach_percent of its target.

    Stateless and idempotent per period: run it every `within` (the scheduled pipelines run it
    every 15 minutes with --within 15m) and each deadline is told once, at the run after it —
    the breach after the clock's due time, the near breach after the instant it used the
    near-breach share, while the clock is still in the near_breach state (a clock met, paused
    or already breached by then is not warned of). A clock met before its deadline is no
    breach.

    Example:
        notify_breaches(find_project(), environment="production", within=timedelta(minutes=15))
    """
    from opsledger.faults.queries import list_incidents

    when = now or dt.datetime.now(dt.UTC)
    listing = list_incidents(project, environment=environment, now=when)
    report = BreachReport([], [], unreadable=list(listing.problems))
    for incident, clocks in listing.items:
        for clock in (clocks.response, clocks.resolution):
            if clock is None or clock.due is None:
                continue
            passed = clock.stopped is None or clock.stopped > clock.due
            if passed and when - within < clock.due <= when:
                report.breaches.append((incident.id, clock.name, clock.due))
                report.results.append(notify(project, _clock_notice(incident, clock, "sla_breach")))
            near = clock.near_due
            if (
                near is not None
                and clock.state(clocks.near) == "near_breach"
                and when - within < near <= when
            ):
                report.near.append((incident.id, clock.name, clock.due))
                report.near_results.append(
                    notify(project, _clock_notice(incident, clock, "sla_near_breach"))
                )
    return report
