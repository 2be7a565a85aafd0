"""KPIs for managers, computed from the change log and the records git holds.

Changes by type and priority, change success and failure rates, lead time (requested →
applied), the emergency ratio, mean time to restore after a failed change, change SLA
compliance (applied within the priority's resolution time), and — when present — inspection,
drift and DR-drill records, and incidents and problems (MTTA, MTTR, incident SLA compliance,
repeats, open problems; see faults/kpis.py). Everything can be limited to one environment, so
lab numbers do not mix with production's. One self-contained HTML page (inline SVG charts, no
scripts, no network), or markdown / JSON for pipelines; views/service_report.py lays the same
numbers out as the monthly service report.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from opsledger.audit import AuditRow, audit_log
from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.faults.kpis import IncidentKpis, incident_kpis
from opsledger.gitrepo import require_history
from opsledger.layout import REVIEW, change_folder, policies_folder, policy_file
from opsledger.policy.bundle import load_policies
from opsledger.project import Project
from opsledger.records import KINDS, DriftState, Record, RunResult, change_runs, load_records
from opsledger.timespec import parse_duration

FAILED = (RunResult.FAILED, RunResult.ROLLED_BACK, RunResult.ROLLBACK_FAILED)
PALETTE = {
    "standard": "#4e79a7",
    "normal": "#59a14f",
    "emergency": "#e15759",
    "success": "#59a14f",
    "failed": "#e15759",
    "rolled_back": "#f28e2b",
    "rollback_failed": "#b07aa1",
    "canceled": "#9c9c9c",
    "interrupted": "#76b7b2",
    "not applied": "#bab0ac",
    "clean": "#59a14f",
    "in sync": "#59a14f",
    "passed": "#59a14f",
    "worst warning": "#f28e2b",
    "worst critical": "#e15759",
    "drifted": "#e15759",
}
PRIORITY_COLORS = {"P1": "#b3202a", "P2": "#e15759", "P3": "#f28e2b", "P4": "#4e79a7"}
SEVERITY_COLORS = {"critical": "#e15759", "warning": "#f28e2b", "drifted": "#b07aa1"}


@dataclass(frozen=True)
class Target:
    """The target behind a card's colour: green at `good` or better, red past `bad`."""

    good: float
    bad: float
    higher_is_better: bool = True

    def tone(self, value: float | None) -> str:
        if value is None:
            return ""
        v, good, bad = (value, self.good, self.bad)
        if not self.higher_is_better:
            v, good, bad = -v, -good, -bad
        return "good" if v >= good else "bad" if v < bad else "warn"

    def text(self) -> str:
        good, bad = f"{100 * self.good:.0f}%", f"{100 * self.bad:.0f}%"
        if self.higher_is_better:
            return f"target ≥ {good} (green); red below {bad}, amber between"
        return f"target ≤ {good} (green); red above {bad}, amber between"


# What each KPI counts (the card's small print and the JSON's `definitions`), and its target.
DEFINITIONS: dict[str, tuple[str, str, Target | None]] = {
    "changes": ("changes requested", "change requests committed in the period", None),
    "success_rate": (
        "change success rate",
        "of the applied changes, those whose final result is success",
        Target(0.95, 0.85),
    ),
    "failure_rate": (
        "failed at least once",
        "of the applied changes, those with a failed, rolled-back or rollback-failed run — "
        "even when a later run succeeded (so it overlaps the success rate)",
        Target(0.05, 0.15, higher_is_better=False),
    ),
    "lead_time_hours_median": (
        "median lead time",
        "hours from the request to its first successful run (p90 beside it)",
        None,
    ),
    "emergency_ratio": (
        "emergency ratio",
        "of the changes requested, the emergency ones",
        Target(0.10, 0.25, higher_is_better=False),
    ),
    "sla_compliance": (
        "change SLA compliance",
        "of the changes that ran successfully, those within their priority's resolution time",
        Target(0.95, 0.85),
    ),
    "mttr_hours": (
        "MTTR after a failure",
        "mean hours from a failed run to its verified rollback or the next success on its hosts",
        None,
    ),
}
INCIDENT_DEFINITIONS: dict[str, tuple[str, str, Target | None]] = {
    "opened": ("incidents opened", "incidents opened in the period", None),
    "mtta_minutes": ("MTTA", "mean minutes from opened to acknowledged", None),
    "mttr_hours": ("MTTR", "mean hours from opened to resolved", None),
    "response_compliance": (
        "incident response SLA",
        "of the incidents, those acknowledged within their priority's response time",
        Target(0.95, 0.85),
    ),
    "resolution_compliance": (
        "incident resolution SLA",
        "of the incidents, those resolved within their priority's resolution time",
        Target(0.95, 0.85),
    ),
    "repeats": (
        "repeat incidents",
        "incidents whose fingerprint an earlier incident had; red when any",
        None,
    ),
    "open_problems": ("open problems", "problems not yet resolved; amber when any", None),
}


@dataclass
class Kpis:
    period_start: str
    period_end: str
    changes: int
    by_type: dict[str, int]
    by_priority: dict[str, int]
    by_result: dict[str, int]
    applied: int
    success_rate: float | None
    failure_rate: float | None
    lead_time_hours_median: float | None
    lead_time_hours_p90: float | None
    emergency_ratio: float | None
    mttr_hours: float | None
    not_restored: int
    sla_compliance: float | None
    sla_breaches: list[str]
    weekly: dict[str, dict[str, int]]  # ISO week -> type -> count
    lead_times: list[float]
    failed_changes: list[dict[str, str]]
    operations: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> result -> n
    drills: list[dict[str, Any]] = field(default_factory=list)  # one per drill, oldest first
    findings_over_time: list[dict[str, Any]] = field(default_factory=list)  # per inspection/drift
    drills_overdue: list[str] = field(default_factory=list)
    environment: str | None = None  # None: every environment
    incidents: IncidentKpis = field(default_factory=IncidentKpis)
    changes_made: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)  # per environment, at period end
    inspections_missed: list[str] = field(default_factory=list)
    review_actions: list[str] = field(default_factory=list)  # from emergency change reviews
    # week -> severity -> findings, every week of the period (empty weeks included)
    findings_weekly: dict[str, dict[str, int]] = field(default_factory=dict)
    by_environment: list[dict[str, Any]] = field(default_factory=list)  # production first
    empty: bool = False  # nothing at all in the period: the page says how to get data
    how_to_get_data: list[str] = field(default_factory=list)


def parse_period(text: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """A duration ending now (`30d`, `12w`, `36h`), `2026-11` (a month) or `2026-Q4` (a quarter).

    The duration is the one syntax of every option (opsledger.timespec). At most ten years
    back, and only real months in years 1970 to 9000: anything else is refused rather than
    overflowing a date.
    """
    try:
        if m := re.fullmatch(r"(19[7-9][0-9]|[2-8][0-9]{3}|9000)-([0-9]{2})", text):
            start = dt.datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=dt.UTC)
            end = (start + dt.timedelta(days=32)).replace(day=1)
            return start, end
        elif m := re.fullmatch(r"(19[7-9][0-9]|[2-8][0-9]{3}|9000)-Q([1-4])", text):
            start = dt.datetime(int(m.group(1)), 3 * int(m.group(2)) - 2, 1, tzinfo=dt.UTC)
            end = (start + dt.timedelta(days=95)).replace(day=1)
            return start, end
        else:
            length = parse_duration(text, "--period")
            if dt.timedelta(0) < length <= dt.timedelta(days=3660):
                return now - length, now
    except (ValueError, OverflowError, OpsledgerError):
        pass
    raise OpsledgerError(
        Problem(
            f"{shown(text, 40)} is not a period",
            field="--period",
            fix="write a duration (30d, 12w), a month (2026-11) or a quarter (2026-Q4); at most "
            "ten years back",
        )
    )


def env_order(environments) -> list[str]:
    """Environments as a manager reads them: production first, then the others by name."""
    return sorted(set(environments), key=lambda env: (env != "production", env))


def _week(moment: dt.datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def weeks(start: dt.datetime, end: dt.datetime) -> list[str]:
    """Every ISO week that overlaps [start, end), oldest first: a chart covers the period."""
    day, found = start - dt.timedelta(days=start.weekday()), []
    while day < end:
        found.append(_week(day))
        day += dt.timedelta(days=7)
    return found


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _hours(a: str, b: str) -> float:
    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds() / 3600


def _mttr(runs: list[Record]) -> tuple[list[float], int]:
    """Hours from each failed run's start until service was proven restored.

    Restored means its verified rollback, else the next successful run touching its hosts.
    """
    restored, open_ = [], 0
    for i, run in enumerate(runs):
        if run.result not in FAILED:
            continue
        if run.result == "rolled_back":
            restored.append(_hours(run.started_at, run.finished_at))
            continue
        later = next(
            (r for r in runs[i + 1 :] if r.result == "success" and set(r.hosts) & set(run.hosts)),
            None,
        )
        if later:
            restored.append(_hours(run.started_at, later.finished_at))
        else:
            open_ += 1
    return restored, open_


def _outcome(record: Record) -> str:
    """What a manager reads from an operations record: worst finding, in sync, passed."""
    if record.kind == "inspection":
        worst = record.measurements.get("worst")
        return "clean" if worst == "ok" else f"worst {worst}" if worst else record.result
    if record.kind == "drift":
        return DriftState.IN_SYNC if record.result == RunResult.SUCCESS else DriftState.DRIFTED
    return "passed" if record.result == "success" else record.result


def kpis(
    project: Project, *, start: dt.datetime, end: dt.datetime, environment: str | None = None
) -> Kpis:
    """Compute the KPIs of changes requested and incidents opened in [start, end).

    Example:
        k = kpis(find_project(), start=datetime(2026, 10, 1, tzinfo=UTC), end=datetime.now(UTC),
                 environment="production")
        k.success_rate, k.lead_time_hours_median, k.incidents.mttr_hours
    """
    require_history(project.root, "report")
    if environment is not None:
        project.require_environment(environment)
    policies, _ = load_policies(project, strict=False)
    rows: list[AuditRow] = audit_log(project, since=start, until=end, environment=environment).rows
    runs = [r for r in change_runs(project) if environment in (None, r.environment)]
    first_success = {}
    for run in runs:
        if run.result == "success" and run.change not in first_success:
            first_success[run.change] = run
    ever_failed = {r.change for r in runs if r.result in FAILED}
    applied = [r for r in rows if r.result != "not applied"]
    lead = sorted(
        round(_hours(r.requested_at, first_success[r.change].finished_at), 2)
        for r in rows
        if r.change in first_success
    )
    breaches, within = [], 0
    for row in rows:
        if row.change not in first_success:
            continue
        limit = policies.priorities.get(row.priority, {}).get("resolution_hours")
        took = _hours(row.requested_at, first_success[row.change].finished_at)
        if limit is None or took <= limit:
            within += 1
        else:
            breaches.append(f"{row.change} ({row.priority}): {took:.1f} h > {limit} h")
    # every week of the period, empty weeks included: the chart covers the whole period
    weekly: dict[str, dict[str, int]] = {w: Counter() for w in weeks(start, end)}
    for row in rows:
        weekly.setdefault(_week(dt.datetime.fromisoformat(row.requested_at)), Counter())[
            row.type
        ] += 1
    requested = {row.change for row in rows}
    period_runs = [r for r in runs if r.change in requested]
    restored, open_ = _mttr(period_runs)
    now = min(end, dt.datetime.now(dt.UTC))
    operations: dict[str, dict[str, int]] = {}
    drills, findings = [], []
    findings_weekly: dict[str, dict[str, int]] = {
        w: dict.fromkeys(SEVERITY_COLORS, 0) for w in weeks(start, end)
    }
    records = [r for r in load_records(project) if environment in (None, r.environment)]
    for record in records:
        moment = dt.datetime.fromisoformat(record.finished_at)
        if not start <= moment < end:
            continue
        operations.setdefault(record.kind, Counter())[_outcome(record)] += 1
        if record.kind == "drill":
            drills.append(
                {
                    "finished_at": record.finished_at,
                    "environment": record.environment,
                    "result": record.result,
                    "change": record.change,
                    **{k: v for k, v in record.measurements.items() if k != "timeline"},
                }
            )
        elif record.kind in ("inspection", "drift"):
            severities = Counter(
                str(f.get("severity", f.get("state", ""))) for f in record.findings
            )
            findings.append(
                {
                    "finished_at": record.finished_at,
                    "kind": record.kind,
                    "environment": record.environment,
                    "warning": severities.get("warning", 0),
                    "critical": severities.get("critical", 0),
                    "drifted": severities.get("drifted", 0),
                }
            )
            bucket = findings_weekly.setdefault(_week(moment), dict.fromkeys(SEVERITY_COLORS, 0))
            for severity in SEVERITY_COLORS:
                bucket[severity] += severities.get(severity, 0)
    k = Kpis(
        period_start=start.isoformat(),
        period_end=end.isoformat(),
        changes=len(rows),
        by_type=dict(Counter(r.type for r in rows)),
        by_priority=dict(sorted(Counter(r.priority for r in rows).items())),
        by_result=dict(Counter(r.result for r in rows)),
        applied=len(applied),
        success_rate=_ratio(sum(r.result == "success" for r in applied), len(applied)),
        failure_rate=_ratio(sum(r.change in ever_failed for r in applied), len(applied)),
        lead_time_hours_median=round(statistics.median(lead), 2) if lead else None,
        lead_time_hours_p90=lead[min(len(lead) - 1, int(0.9 * len(lead)))] if lead else None,
        emergency_ratio=_ratio(sum(r.type == "emergency" for r in rows), len(rows)),
        mttr_hours=round(statistics.mean(restored), 2) if restored else None,
        not_restored=open_,
        sla_compliance=_ratio(within, within + len(breaches)),
        sla_breaches=breaches,
        weekly={k: dict(v) for k, v in sorted(weekly.items())},
        lead_times=lead,
        failed_changes=[
            {"change": r.change, "title": r.title, "result": r.result, "rollback": r.rollback}
            for r in applied
            if r.change in ever_failed
        ],
        operations={k: dict(v) for k, v in operations.items()},
        drills=drills,
        findings_over_time=findings,
        drills_overdue=[
            d
            for d in _overdue(project, min(end, dt.datetime.now(dt.UTC)))
            if environment is None or f" on {environment}:" in d
        ],
        environment=environment,
        incidents=incident_kpis(project, start=start, end=end, environment=environment),
        changes_made=[
            {
                "change": r.change,
                "title": r.title,
                "type": r.type,
                "priority": r.priority,
                "environment": r.environment,
                "result": r.result,
                "applied_at": r.applied_at,
            }
            for r in applied
        ],
        review_actions=_review_actions(project, [r.change for r in rows]),
        findings_weekly=findings_weekly,
        by_environment=[]
        if environment
        else [
            _environment_row(env, [r for r in rows if r.environment == env], ever_failed)
            for env in env_order(r.environment for r in rows)
        ],
    )
    k.empty = not (rows or k.operations or k.incidents.opened or k.incidents.open_problems)
    if k.empty:
        k.how_to_get_data = _how_to_get_data(project, environment, start)
    k.status = _status(records, k.incidents, now, environment)
    k.inspections_missed = _missed(project, [s["environment"] for s in k.status], now)
    return k


def _environment_row(env: str, rows: list[AuditRow], ever_failed: set[str]) -> dict[str, Any]:
    applied = [r for r in rows if r.result != "not applied"]
    return {
        "environment": env,
        "changes": len(rows),
        "applied": len(applied),
        "success_rate": _ratio(sum(r.result == "success" for r in applied), len(applied)),
        "failure_rate": _ratio(sum(r.change in ever_failed for r in applied), len(applied)),
        "emergency_ratio": _ratio(sum(r.type == "emergency" for r in rows), len(rows)),
    }


def _how_to_get_data(project: Project, environment: str | None, start: dt.datetime) -> list[str]:
    """What to do when the period holds nothing: the commands that make the numbers."""
    env = environment or "lab"
    steps = []
    earlier = audit_log(project, until=start, environment=environment).rows
    if earlier:
        newest = max(r.requested_at for r in earlier)[:10]
        steps.append(
            f"the newest change before this period was requested on {newest}: "
            "widen it, e.g. --period 365d"
        )
    steps += [
        f"request a change: opsledger change new --title ... --runbook converge --env {env} "
        "--targets all --reason ... --requested-by YOU",
        "have it approved and run: opsledger approve CHG-0001 --as APPROVER, then "
        "opsledger apply CHG-0001 (or let CI's apply job run it)",
        f"inspections and drift: opsledger inspect --due --env {env}; opsledger drift --env {env}",
        "DR drills: opsledger drill --due",
        f"incidents: opsledger incident new --title ... --class software --impact low "
        f"--urgency low --env {env} --as YOU",
    ]
    return steps


def _status(
    records: list[Record], incidents: IncidentKpis, now: dt.datetime, environment: str | None
) -> list[dict[str, Any]]:
    """Per environment at the period's end: open incidents, last inspection, drift and drill."""
    envs = env_order(
        {environment}
        if environment
        else {r.environment for r in records} | {o["environment"] for o in incidents.open_now}
    )
    status = []
    for env in envs:
        mine = [r for r in records if r.environment == env and r.finished <= now]
        last = {kind: next((r for r in reversed(mine) if r.kind == kind), None) for kind in KINDS}
        open_now = [o for o in incidents.open_now if o["environment"] == env]
        inspection, drift, drill = last["inspection"], last["drift"], last["drill"]
        serious = [o for o in open_now if o["priority"] in ("P1", "P2")]
        worst = (inspection.measurements.get("worst") if inspection else None) or "none"
        drifted = drift is not None and drift.result != "success"
        verdict = (
            "degraded"
            if serious or worst == "critical"
            else "attention"
            if open_now or worst == "warning" or drifted or (drill and drill.result != "success")
            else "normal"
        )
        status.append(
            {
                "environment": env,
                "status": verdict,
                "open_incidents": len(open_now),
                "open_p1_p2": len(serious),
                "last_inspection": f"{inspection.finished_at[:16]} worst {worst}"
                if inspection
                else "none",
                "last_drift": (
                    f"{drift.finished_at[:16]} {'drifted' if drifted else 'in sync'}"
                    if drift
                    else "none"
                ),
                "last_drill": f"{drill.finished_at[:16]} {drill.result}" if drill else "none",
            }
        )
    return status


def _missed(project: Project, environments: list[str], now: dt.datetime) -> list[str]:
    """Inspection periods that passed with no inspection, per environment."""
    if not policies_folder(project.root, "inspections.yml").is_file():
        return []
    from opsledger.inspections import due_states

    missed = []
    for env in environments:
        try:
            states = due_states(project, environment=env, now=now)
        except OpsledgerError:
            return [f"{policy_file('inspections.yml')} is invalid: run opsledger policy check"]
        missed += [f"{env}: {s.schedule} missed {s.missed} period(s)" for s in states if s.missed]
    return missed


def _review_actions(project: Project, changes: list[str]) -> list[str]:
    """Follow-up actions the post-implementation reviews of these changes committed to."""
    from opsledger.yamlio import load_yaml

    actions = []
    for change_id in changes:
        path = change_folder(project.root, change_id, REVIEW)
        if not path.is_file():
            continue
        try:
            data = load_yaml(path, what="review")
        except OpsledgerError:
            continue
        actions += [f"{change_id}: {a}" for a in data.get("actions") or []]
    return actions


def _overdue(project: Project, now: dt.datetime) -> list[str]:
    """'postgres on lab: last passed drill 120 days ago (every 90 days)' per overdue drill."""
    if not policies_folder(project.root, "dr.yml").is_file():
        return []
    from opsledger.drill import drills_due

    try:
        due = drills_due(project, now=now)
    except OpsledgerError:
        return [f"{policy_file('dr.yml')} is invalid: run opsledger policy check"]
    out = []
    for d in due:
        if d.overdue:
            every = d.every_days
            last = (
                "never drilled"
                if d.days_since is None
                else (f"last passed drill {d.days_since:.0f} days ago")
            )
            out.append(f"{d.service} on {d.environment}: {last} (every {every:.0f} days)")
    return out


# --- rendering -------------------------------------------------------------------------------


def md_text(value: Any) -> str:
    """Free text (titles, causes, root causes) as one markdown line that keeps its table.

    People write causes over several lines and titles may hold `|`; either, written raw,
    ends a table row or the list item it sits in, and the rest of the report shifts.
    """
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def _bars(title: str, data: dict[str, int], colors: dict[str, str] | None = None) -> str:
    """Horizontal bar chart as inline SVG."""
    width, bar, gap, label_w = 420, 22, 8, 120
    top = max(data.values(), default=0) or 1
    height = max(1, len(data)) * (bar + gap) + 10
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
    ]
    for i, (name, value) in enumerate(data.items()):
        y = 5 + i * (bar + gap)
        w = (width - label_w - 50) * value / top
        color = (colors or {}).get(name, "#4e79a7")
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar * 0.7}" text-anchor="end">'
            f"{html.escape(name)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}" rx="3"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar * 0.7}">{value}</text>'
        )
    if not data:
        parts.append('<text x="10" y="20" fill="#888">no data in this period</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _stacked_weeks(
    title: str,
    weekly: dict[str, dict[str, int]],
    colors: dict[str, str] | None = None,
    empty: str = "no changes in this period",
) -> str:
    """One stacked bar per week of the period, bottom to top in `colors`' order."""
    colors = colors or {k: PALETTE[k] for k in ("standard", "normal", "emergency")}
    width, height, pad = 560, 220, 30
    weeks = list(weekly)
    every = max(1, -(-len(weeks) // 14))  # at most ~14 week labels, however long the period
    top = max((sum(v.values()) for v in weekly.values()), default=0) or 1
    slot = (width - 2 * pad) / max(1, len(weeks))
    parts = [
        f'<svg width="{width}" height="{height + 30}" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#999"/>')
    for i, week in enumerate(weeks):
        x = pad + i * slot + slot * 0.15
        y = height
        for kind, color in colors.items():
            n = weekly[week].get(kind, 0)
            if not n:
                continue
            h = (height - 20) * n / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{week} {kind}: {n}</title></rect>'
            )
        total = sum(weekly[week].values())
        if total:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" '
                f'text-anchor="middle">{total}</text>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{height + 16}" text-anchor="middle" '
                f'font-size="10">{week[5:]}</text>'
            )
    if not any(sum(v.values()) for v in weekly.values()):
        parts.append(f'<text x="40" y="40" fill="#888">{html.escape(empty)}</text>')
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key" style="background:{color}"></span>{k}' for k, color in colors.items()
    )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}"
        f"<div class='legend'>{legend}</div></figure>"
    )


def _histogram(title: str, values: list[float]) -> str:
    edges = [0, 4, 8, 24, 72, 168, 240]
    labels = ["< 4 h", "4-8 h", "8-24 h", "1-3 d", "3-7 d", "7-10 d", "> 10 d"]
    counts = dict.fromkeys(labels, 0)
    for v in values:
        index = sum(v >= e for e in edges) - 1
        counts[labels[index]] += 1
    return _bars(title, counts)


def _trend(title: str, points: list[tuple[str, float | None]], objective: float | None) -> str:
    """Seconds per drill, oldest left, against the objective (dashed); misses in red."""
    width, height, pad = 560, 200, 40
    values = [v for _, v in points if v is not None]
    top = max([*values, objective or 0, 1.0]) * 1.15
    slot = (width - 2 * pad) / max(1, len(points))
    parts = [
        f'<svg width="{width}" height="{height + 30}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#999"/>',
    ]

    def y(value: float) -> float:
        return height - (height - 20) * value / top

    if objective is not None:
        parts.append(
            f'<line x1="{pad}" y1="{y(objective):.1f}" x2="{width - pad}" y2="{y(objective):.1f}" '
            f'stroke="#e15759" stroke-dasharray="6 4"/>'
            f'<text x="{width - pad}" y="{y(objective) - 4:.1f}" text-anchor="end" '
            f'fill="#e15759">objective {objective:.0f} s</text>'
        )
    line = []
    for i, (label, value) in enumerate(points):
        x = pad + (i + 0.5) * slot
        parts.append(
            f'<text x="{x:.1f}" y="{height + 16}" text-anchor="middle" font-size="10">'
            f"{html.escape(label)}</text>"
        )
        if value is None:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#e15759">✗</text>'
            )
            continue
        line.append(f"{x:.1f},{y(value):.1f}")
        miss = objective is not None and value > objective
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y(value):.1f}" r="4" '
            f'fill="{"#e15759" if miss else "#59a14f"}"><title>{html.escape(label)}: '
            f"{value:.1f} s</title></circle>"
            f'<text x="{x:.1f}" y="{y(value) - 8:.1f}" text-anchor="middle">{value:.0f}</text>'
        )
    if len(line) > 1:
        parts.insert(2, f'<polyline points="{" ".join(line)}" fill="none" stroke="#4e79a7"/>')
    if not points:
        parts.append('<text x="40" y="40" fill="#888">no drills in this period</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _findings_chart(title: str, weekly: dict[str, dict[str, int]]) -> str:
    """Findings of inspections and drift per week of the whole period, stacked by severity."""
    return _stacked_weeks(title, weekly, SEVERITY_COLORS, "no findings in this period")


def _drill_charts(k: Kpis) -> str:
    charts = []
    for service in sorted({d.get("service", "?") for d in k.drills}):
        mine = [d for d in k.drills if d.get("service") == service]
        objectives = mine[-1].get("objectives") or {}
        for key, name in (("rto_s", "RTO"), ("rpo_s", "RPO")):
            points = [(f"{d['finished_at'][5:10]} {d['environment']}", d.get(key)) for d in mine]
            charts.append(
                _trend(f"{service}: {name} per drill (seconds)", points, objectives.get(key))
            )
    return "".join(charts)


CSS = """
body{font:14px/1.4 'DejaVu Sans',system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}.sub{color:#666;margin-bottom:18px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin-bottom:22px}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 12px}
.card .v{font-size:26px;font-weight:bold}.card .k{color:#555;font-size:12px}
.card .c,.card .t{color:#777;font-size:11px;margin-top:4px}.card .t{font-style:italic}
.good{color:#2e7d32}.bad{color:#c62828}.warn{color:#e67e22}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:18px}
figure{margin:0;border:1px solid #eee;border-radius:8px;padding:10px}
figcaption{font-weight:bold;margin-bottom:6px}svg text{font-size:12px;fill:#333}
.legend{font-size:12px;color:#555}
.key{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
table{border-collapse:collapse;margin-top:8px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
h2{font-size:17px;margin:22px 0 8px}
"""


def _card(label: str, value: str, tone: str = "", counts: str = "", target: str = "") -> str:
    """A KPI card: the value, its name, what it counts and the target behind its colour."""
    small = "".join(
        f'<div class="{cls}">{html.escape(text)}</div>'
        for cls, text in (("c", counts), ("t", target))
        if text
    )
    return (
        f'<div class="card"><div class="v {tone}">{value}</div><div class="k">{label}</div>'
        f"{small}</div>"
    )


def _defined_card(
    definitions: dict[str, tuple[str, str, Target | None]],
    key: str,
    value: float | None,
    shown_value: str,
    tone: str = "",
) -> str:
    label, counts, target = definitions[key]
    return _card(
        label,
        shown_value,
        target.tone(value) if target else tone,
        counts,
        target.text() if target else "",
    )


def definitions() -> dict[str, dict[str, str | None]]:
    """What every KPI counts and its target, for the JSON report and the markdown table."""
    return {
        key: {"label": label, "counts": counts, "target": target.text() if target else None}
        for group, table in (("", DEFINITIONS), ("incidents.", INCIDENT_DEFINITIONS))
        for key, (label, counts, target) in ((group + k, v) for k, v in table.items())
    }


def render_html(k: Kpis, title: str = "") -> str:
    title = title or "opsledger — change and operations report" + (
        f" ({k.environment})" if k.environment else ""
    )
    if k.empty:
        return _empty_html(k, title)
    d = DEFINITIONS
    cards = "".join(
        [
            _defined_card(d, "changes", None, str(k.changes)),
            _defined_card(d, "success_rate", k.success_rate, _pct(k.success_rate)),
            _defined_card(d, "failure_rate", k.failure_rate, _pct(k.failure_rate)),
            _defined_card(d, "lead_time_hours_median", None, _num(k.lead_time_hours_median, "h")),
            _defined_card(d, "emergency_ratio", k.emergency_ratio, _pct(k.emergency_ratio)),
            _defined_card(d, "sla_compliance", k.sla_compliance, _pct(k.sla_compliance)),
            _defined_card(d, "mttr_hours", None, _num(k.mttr_hours, "h")),
        ]
    )
    charts = "".join(
        [
            _stacked_weeks("Changes per week, by type", k.weekly),
            _bars("Results of changes", k.by_result, PALETTE),
            _bars("Changes by priority", k.by_priority),
            _histogram("Lead time: requested → applied", k.lead_times),
        ]
    )
    failed = "".join(
        f"<tr><td>{html.escape(f['change'])}</td><td>{html.escape(f['title'])}</td>"
        f"<td>{html.escape(f['result'])}</td><td>{html.escape(f['rollback'] or 'none')}</td></tr>"
        for f in k.failed_changes
    )
    failed_table = (
        "<table><tr><th>change</th><th>title</th><th>result</th><th>rollback</th></tr>"
        f"{failed}</table>"
        if failed
        else "<p>No failed changes in this period.</p>"
    )
    ops = ""
    for kind in KINDS[1:]:
        counts = k.operations.get(kind)
        ops += (
            _bars(f"{kind.capitalize()} results", counts, PALETTE)
            if counts
            else f"<figure><figcaption>{kind.capitalize()}</figcaption>"
            "<p style='color:#888'>No records in this period.</p></figure>"
        )
    breaches = "".join(f"<li>{html.escape(b)}</li>" for b in k.sla_breaches) or "<li>none</li>"
    ops += _findings_chart(
        "Findings over time: per week of the period, by severity (inspections, drift)",
        k.findings_weekly,
    )
    ops += _drill_charts(k)
    overdue = "".join(f"<li>{html.escape(o)}</li>" for o in k.drills_overdue) or "<li>none</li>"
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><body><h1>{html.escape(title)}</h1>"
        f"<div class='sub'>{_scope(k)} · "
        f"changes requested {k.period_start[:10]} to {k.period_end[:10]} · "
        f"{k.applied} applied · lead time p90 {_num(k.lead_time_hours_p90, 'h')}"
        f"{f' · {k.not_restored} failed change(s) not restored' if k.not_restored else ''}</div>"
        f"<div class='cards'>{cards}</div>{_environments_html(k)}"
        f"<div class='charts'>{charts}</div>"
        f"<h2>Failed changes</h2>{failed_table}"
        f"<h2>SLA breaches</h2><ul>{breaches}</ul>"
        f"<h2>Operations: inspections, drift, DR drills</h2><div class='charts'>{ops}</div>"
        f"<h2>DR drills overdue</h2><ul>{overdue}</ul>"
        f"{incidents_html(k.incidents)}"
        "</body></html>\n"
    )


def _scope(k: Kpis) -> str:
    if k.environment:
        return f"environment {k.environment} only"
    return "all environments together (--env production for production alone)"


def _environments_html(k: Kpis) -> str:
    """Per environment, production first: lab numbers visibly apart from production's."""
    if not k.by_environment:
        return ""
    body = "".join(
        f"<tr><td>{html.escape(e['environment'])}</td><td>{e['changes']}</td>"
        f"<td>{e['applied']}</td><td>{_pct(e['success_rate'])}</td>"
        f"<td>{_pct(e['failure_rate'])}</td><td>{_pct(e['emergency_ratio'])}</td></tr>"
        for e in k.by_environment
    )
    return (
        "<h2>By environment</h2><table><tr><th>environment</th><th>changes requested</th>"
        "<th>applied</th><th>change success rate</th><th>failed at least once</th>"
        f"<th>emergency ratio</th></tr>{body}</table>"
        "<p class='sub'>One environment alone: opsledger report --env production</p>"
    )


def _empty_html(k: Kpis, title: str) -> str:
    steps = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in k.how_to_get_data)
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><body><h1>{html.escape(title)}</h1>"
        f"<div class='sub'>{_scope(k)} · {k.period_start[:10]} to {k.period_end[:10]}</div>"
        "<h2>No data in this period yet</h2>"
        "<p>No change was requested, no inspection, drift or drill recorded and no incident "
        "opened in this period, so there is nothing to count. The numbers come from:</p>"
        f"<ol>{steps}</ol></body></html>\n"
    )


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape('-' if r.get(c) in (None, '') else str(r.get(c)))}</td>"
            for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def incidents_html(i: IncidentKpis) -> str:
    """Incidents and problems: cards, charts by class and priority, breaches, open problems."""
    d = INCIDENT_DEFINITIONS
    cards = "".join(
        [
            _defined_card(d, "opened", None, str(i.opened)),
            _defined_card(d, "mtta_minutes", None, _num(i.mtta_minutes, "min")),
            _defined_card(d, "mttr_hours", None, _num(i.mttr_hours, "h")),
            _defined_card(
                d, "response_compliance", i.response_compliance, _pct(i.response_compliance)
            ),
            _defined_card(
                d, "resolution_compliance", i.resolution_compliance, _pct(i.resolution_compliance)
            ),
            _defined_card(d, "repeats", None, str(i.repeats), "bad" if i.repeats else ""),
            _defined_card(
                d,
                "open_problems",
                None,
                str(len(i.open_problems)),
                "warn" if i.open_problems else "",
            ),
        ]
    )
    charts = _bars("Incidents by class", i.by_class) + _bars(
        "Incidents by priority", i.by_priority, PRIORITY_COLORS
    )
    breaches = "".join(f"<li>{html.escape(b)}</li>" for b in i.breaches) or "<li>none</li>"
    return (
        f"<h2>Incidents and problems</h2><div class='cards'>{cards}</div>"
        f"<div class='charts'>{charts}</div>"
        f"<h3>Incident SLA breaches</h3><ul>{breaches}</ul>"
        "<h3>Incidents of the period</h3>"
        + _table(
            i.rows,
            (
                "incident",
                "priority",
                "class",
                "title",
                "status",
                "hours_to_resolve",
                "sla",
                "resolved_by",
                "root_cause",
            ),
            "No incidents in this period.",
        )
        + "<h3>Open problems</h3>"
        + _table(
            i.open_problems,
            ("problem", "title", "status", "incidents", "age_days", "workaround"),
            "No open problems.",
        )
    )


def incidents_md(i: IncidentKpis) -> list[str]:
    """Incidents and problems as markdown tables."""

    def row(key: str, value: str) -> str:
        label, counts, target = INCIDENT_DEFINITIONS[key]
        return f"| {label} | {value} | {counts} | {target.text() if target else ''} |"

    lines = [
        "",
        "### Incidents and problems",
        "",
        "| KPI | value | what it counts | target |",
        "|---|---|---|---|",
        row("opened", str(i.opened)),
        "| by priority | "
        + (", ".join(f"{p} {n}" for p, n in i.by_priority.items()) or "-")
        + " | the incidents opened, by priority | |",
        "| by class | "
        + (", ".join(f"{c} {n}" for c, n in i.by_class.items()) or "-")
        + " | the incidents opened, by fault class | |",
        row("mtta_minutes", _num(i.mtta_minutes, "min")),
        row("mttr_hours", _num(i.mttr_hours, "h")),
        row("response_compliance", _pct(i.response_compliance)),
        row("resolution_compliance", _pct(i.resolution_compliance)),
        row("repeats", str(i.repeats)),
        row("open_problems", str(len(i.open_problems))),
    ]
    if i.rows:
        lines += [
            "",
            "| incident | priority | class | title | status | hours to resolve | SLA | fix |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['incident']} | {r['priority']} | {r['class']} | {md_text(r['title'])} "
            f"| {r['status']} "
            f"| {r['hours_to_resolve'] if r['hours_to_resolve'] is not None else '-'} "
            f"| {r['sla']} | {r['resolved_by'] or '-'} |"
            for r in i.rows
        ]
    if i.breaches:
        lines += ["", "Incident SLA breaches: " + "; ".join(i.breaches)]
    if i.open_problems:
        lines += [
            "",
            "| open problem | title | status | incidents | age (days) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['problem']} | {md_text(p['title'])} | {p['status']} | {p['incidents']} | "
            f"{p['age_days']} |"
            for p in i.open_problems
        ]
    return lines


def render(k: Kpis, fmt: str) -> str:
    """The report as html (self-contained), md or json."""
    if fmt == "json":
        return json.dumps({**asdict(k), "definitions": definitions()}, indent=2) + "\n"
    if fmt == "html":
        return render_html(k)
    heading = f"## Change report {k.period_start[:10]} to {k.period_end[:10]}" + (
        f" ({k.environment})" if k.environment else ""
    )
    if k.empty:
        return (
            "\n".join(
                [
                    heading,
                    "",
                    f"{_scope(k)}. No data in this period yet: no change requested, no inspection, "
                    "drift or drill recorded, no incident opened. The numbers come from:",
                    "",
                    *(f"{n}. `{step}`" for n, step in enumerate(k.how_to_get_data, 1)),
                ]
            )
            + "\n"
        )

    def row(key: str, value: str) -> str:
        label, counts, target = DEFINITIONS[key]
        return f"| {label} | {value} | {counts} | {target.text() if target else ''} |"

    lines = [
        heading,
        "",
        f"{_scope(k)}.",
        "",
        "| KPI | value | what it counts | target |",
        "|---|---|---|---|",
        row("changes", str(k.changes)),
        f"| applied | {k.applied} | of the changes requested, those that ran at least once | |",
        row("success_rate", _pct(k.success_rate)),
        row("failure_rate", _pct(k.failure_rate)),
        row(
            "lead_time_hours_median",
            f"{_num(k.lead_time_hours_median, 'h')} (p90 {_num(k.lead_time_hours_p90, 'h')})",
        ),
        row("emergency_ratio", _pct(k.emergency_ratio)),
        row("mttr_hours", _num(k.mttr_hours, "h")),
        row("sla_compliance", _pct(k.sla_compliance)),
        "",
        "By type: " + ", ".join(f"{t} {n}" for t, n in k.by_type.items()),
        "By priority: " + ", ".join(f"{p} {n}" for p, n in k.by_priority.items()),
    ]
    if k.failed_changes:
        lines += ["", "| failed change | title | result | rollback |", "|---|---|---|---|"]
        lines += [
            f"| {f['change']} | {f['title']} | {f['result']} | {f['rollback'] or 'none'} |"
            for f in k.failed_changes
        ]
    if k.not_restored:
        lines += ["", f"Failed changes not restored: {k.not_restored}"]
    lines += ["", "Change SLA breaches: " + ("; ".join(k.sla_breaches) or "none")]
    lines += [
        "",
        "Operations (records of the period by outcome): "
        + "; ".join(
            f"{kind} "
            + (", ".join(f"{n} {what}" for what, n in k.operations[kind].items()) or "none")
            if k.operations.get(kind)
            else f"{kind} none recorded"
            for kind in KINDS[1:]
        ),
    ]
    if k.by_environment:
        lines += [
            "",
            "| environment | changes requested | applied | change success rate "
            "| failed at least once | emergency ratio |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {e['environment']} | {e['changes']} | {e['applied']} | "
            f"{_pct(e['success_rate'])} | {_pct(e['failure_rate'])} | "
            f"{_pct(e['emergency_ratio'])} |"
            for e in k.by_environment
        ]
    if any(sum(v.values()) for v in k.findings_weekly.values()):
        lines += [
            "",
            "Findings per week (critical / warning / drifted): "
            + ", ".join(
                f"{w[5:]} {v['critical']}/{v['warning']}/{v['drifted']}"
                for w, v in k.findings_weekly.items()
            ),
        ]
    if k.findings_over_time:
        lines += [
            "",
            "| record | kind | env | warning | critical | drifted |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['finished_at'][:16]} | {r['kind']} | {r['environment']} | {r['warning']} | "
            f"{r['critical']} | {r['drifted']} |"
            for r in k.findings_over_time
        ]
    if k.drills:
        lines += [
            "",
            "| DR drill | service | env | result | RTO / objective | RPO / objective |",
            "|---|---|---|---|---|---|",
        ]
        for d in k.drills:
            goal = d.get("objectives") or {}
            rto, rpo = d.get("rto_s"), d.get("rpo_s")
            lines.append(
                f"| {d['finished_at'][:16]} | {d.get('service', '?')} | {d['environment']} | "
                f"{d['result']} | {'n/a' if rto is None else f'{rto:.0f}'} s / "
                f"{goal.get('rto_s', 0):.0f} s | {'n/a' if rpo is None else f'{rpo:.0f}'} s / "
                f"{goal.get('rpo_s', 0):.0f} s |"
            )
    if k.drills_overdue:
        lines += ["", "DR drills overdue: " + "; ".join(k.drills_overdue)]
    lines += incidents_md(k.incidents)
    return "\n".join(lines) + "\n"
