"""The monthly service report a service manager hands to the business.

The O&M service plan promises periodic reports: system status, the faults of the period and how
each was handled, the changes made, DR drills, inspections, and the improvement actions that
follow (problems with their workarounds and fixes, review actions, missed inspections, overdue
drills). Same numbers as `opsledger report` (report.kpis), laid out in that order: markdown
tables, or one self-contained HTML page with charts.
"""

from __future__ import annotations

import html
from typing import Any

from opsledger.report import (
    CSS,
    DEFINITIONS,
    INCIDENT_DEFINITIONS,
    PALETTE,
    PRIORITY_COLORS,
    Kpis,
    _bars,
    _card,
    _defined_card,
    _drill_charts,
    _num,
    _pct,
    _table,
    md_text,
)

STATUS_TONE = {"normal": "good", "attention": "warn", "degraded": "bad"}


def improvement_actions(k: Kpis) -> list[str]:
    """What the service will do next, from the ledger: problems, reviews, missed work."""
    actions = []
    for p in k.incidents.open_problems:
        if p["status"] == "known_error":
            runbook = f" (runbook {p['runbook']})" if p.get("runbook") else ""
            actions.append(
                f"{p['problem']} {p['title']}: known error, workaround "
                f"{p['workaround']}{runbook}; permanent fix pending"
            )
        else:
            actions.append(f"{p['problem']} {p['title']}: root-cause analysis open")
    actions += [
        f"{p['problem']} {p['title']}: fixed by {p['fix_change']}, watch for recurrence"
        for p in k.incidents.problems_fixed
    ]
    actions += [
        f"{r['incident']} root cause: {r['root_cause']}"
        for r in k.incidents.rows
        if r["root_cause"]
    ]
    actions += [f"review action {a}" for a in k.review_actions]
    actions += [f"inspection {m}" for m in k.inspections_missed]
    actions += [f"DR drill overdue: {d}" for d in k.drills_overdue]
    return actions


def _md_table(rows: list[dict[str, Any]], columns: tuple[str, ...], empty: str) -> list[str]:
    if not rows:
        return [empty]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [md_text(row.get(c) if row.get(c) is not None else "-") for c in columns]
        out.append("| " + " | ".join(cells) + " |")
    return out


def service_markdown(k: Kpis) -> str:
    i = k.incidents
    scope = k.environment or "all environments"
    lines = [
        f"# Service report {k.period_start[:10]} to {k.period_end[:10]} ({scope})",
        "",
        "## 1. System status",
        "",
        *_md_table(
            k.status,
            (
                "environment",
                "status",
                "open_incidents",
                "open_p1_p2",
                "last_inspection",
                "last_drift",
                "last_drill",
            ),
            "No inspection, drift, drill or incident recorded yet.",
        ),
        "",
        "## 2. Faults and their handling",
        "",
        f"{i.opened} incident(s) opened; MTTA {_num(i.mtta_minutes, 'min')}, MTTR "
        f"{_num(i.mttr_hours, 'h')}; SLA compliance: response {_pct(i.response_compliance)}, "
        f"resolution {_pct(i.resolution_compliance)}; {i.repeats} repeat incident(s).",
        "",
        "By priority: " + (", ".join(f"{p} {n}" for p, n in i.by_priority.items()) or "none"),
        "By class: " + (", ".join(f"{c} {n}" for c, n in i.by_class.items()) or "none"),
        "",
        *_md_table(
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
                "cause",
                "root_cause",
            ),
            "No incidents in this period.",
        ),
    ]
    if i.breaches:
        lines += ["", "SLA breaches: " + "; ".join(i.breaches)]
    lines += [
        "",
        "## 3. Changes made",
        "",
        f"{k.changes} requested, {k.applied} applied; success rate {_pct(k.success_rate)}, "
        f"emergency ratio {_pct(k.emergency_ratio)}, change SLA compliance "
        f"{_pct(k.sla_compliance)}, lead time median {_num(k.lead_time_hours_median, 'h')}.",
        "",
        *_md_table(
            k.changes_made,
            ("change", "type", "priority", "environment", "title", "result", "applied_at"),
            "No change applied in this period.",
        ),
        "",
        "## 4. Disaster-recovery drills",
        "",
        *_md_table(
            [
                {
                    "finished_at": d["finished_at"][:16],
                    "service": d.get("service"),
                    "environment": d["environment"],
                    "result": d["result"],
                    "RTO s": d.get("rto_s"),
                    "RTO objective s": (d.get("objectives") or {}).get("rto_s"),
                    "RPO s": d.get("rpo_s"),
                    "RPO objective s": (d.get("objectives") or {}).get("rpo_s"),
                }
                for d in k.drills
            ],
            (
                "finished_at",
                "service",
                "environment",
                "result",
                "RTO s",
                "RTO objective s",
                "RPO s",
                "RPO objective s",
            ),
            "No DR drill in this period.",
        ),
        "",
        "## 5. Inspections",
        "",
        "Inspection results: "
        + (
            ", ".join(f"{o} {n}" for o, n in (k.operations.get("inspection") or {}).items())
            or "none"
        ),
        "Drift checks: "
        + (", ".join(f"{o} {n}" for o, n in (k.operations.get("drift") or {}).items()) or "none"),
        "Missed inspections: " + ("; ".join(k.inspections_missed) or "none"),
        "",
        "## 6. Problems and improvement actions",
        "",
    ]
    actions = improvement_actions(k)
    lines += [f"- {md_text(a)}" for a in actions] or ["- none"]
    return "\n".join(lines) + "\n"


def service_html(k: Kpis) -> str:
    i = k.incidents
    scope = k.environment or "all environments"
    title = f"Service report {k.period_start[:10]} to {k.period_end[:10]} ({scope})"
    status_cards = "".join(
        _card(
            f"{s['environment']}: {s['open_incidents']} open incident(s)",
            s["status"],
            STATUS_TONE.get(s["status"], ""),
            "open incidents, the newest inspection, drift and drill at the period's end",
            "red: a P1/P2 open or a critical finding; amber: anything open, a warning, drift "
            "or a failed drill",
        )
        for s in k.status
    ) or _card("no records yet", "-")
    di, dk = INCIDENT_DEFINITIONS, DEFINITIONS
    kpi_cards = "".join(
        [
            _defined_card(di, "opened", None, str(i.opened)),
            _defined_card(di, "mtta_minutes", None, _num(i.mtta_minutes, "min")),
            _defined_card(di, "mttr_hours", None, _num(i.mttr_hours, "h")),
            _defined_card(
                di, "response_compliance", i.response_compliance, _pct(i.response_compliance)
            ),
            _defined_card(
                di,
                "resolution_compliance",
                i.resolution_compliance,
                _pct(i.resolution_compliance),
            ),
            _card(
                "changes applied", str(k.applied), "", "requested changes that ran at least once"
            ),
            _defined_card(dk, "success_rate", k.success_rate, _pct(k.success_rate)),
        ]
    )
    charts = "".join(
        [
            _bars("Incidents by priority", i.by_priority, PRIORITY_COLORS),
            _bars("Incidents by class", i.by_class),
            _bars("Results of changes", k.by_result, PALETTE),
            _bars("Inspection results", k.operations.get("inspection") or {}, PALETTE),
        ]
    )
    actions = (
        "".join(f"<li>{html.escape(a)}</li>" for a in improvement_actions(k)) or "<li>none</li>"
    )
    return (
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><body><h1>{html.escape(title)}</h1>"
        "<h2>1. System status</h2>"
        f"<div class='cards'>{status_cards}</div>"
        + _table(
            k.status,
            (
                "environment",
                "status",
                "open_incidents",
                "last_inspection",
                "last_drift",
                "last_drill",
            ),
            "No records yet.",
        )
        + f"<h2>2. Faults and their handling</h2><div class='cards'>{kpi_cards}</div>"
        f"<div class='charts'>{charts}</div>"
        + _table(
            i.rows,
            (
                "incident",
                "priority",
                "class",
                "title",
                "hours_to_resolve",
                "sla",
                "resolved_by",
                "cause",
                "root_cause",
            ),
            "No incidents in this period.",
        )
        + "<h2>3. Changes made</h2>"
        + _table(
            k.changes_made,
            ("change", "type", "priority", "title", "result", "applied_at"),
            "No change applied in this period.",
        )
        + f"<h2>4. Disaster-recovery drills</h2><div class='charts'>{_drill_charts(k)}</div>"
        + ("" if k.drills else "<p>No DR drill in this period.</p>")
        + "<h2>5. Inspections</h2>"
        + f"<p>Missed inspections: {html.escape('; '.join(k.inspections_missed) or 'none')}</p>"
        + f"<h2>6. Problems and improvement actions</h2><ul>{actions}</ul>"
        + "</body></html>\n"
    )


def render_service(k: Kpis, fmt: str) -> str:
    """The service report as md or html (json is the KPIs themselves)."""
    return service_html(k) if fmt == "html" else service_markdown(k)
