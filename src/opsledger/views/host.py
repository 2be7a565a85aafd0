"""A host's record and the estate as text, JSON and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from typing import Any

from opsledger.hostrecord import Estate, HostRecord


def _at(text: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM' (UTC as recorded); '-' when absent."""
    value = str(text or "")
    return value[:16].replace("T", " ") if value else "-"


def _package_lines(packages: dict[str, Any]) -> list[str]:
    lines = []
    for entry in packages.get("upgraded", []) + packages.get("downgraded", []):
        lines.append(f"{entry['name']} {entry['from']} -> {entry['to']}")
    lines += [f"{e['name']} {e['version']} (installed)" for e in packages.get("installed", [])]
    lines += [f"{e['name']} {e['version']} (removed)" for e in packages.get("removed", [])]
    lines += [f"{e['name']} {e['version']} (held)" for e in packages.get("held", [])]
    lines += [
        f"{e['name']} {e['version']} (no .deb kept: cannot be rolled back)"
        for e in packages.get("not_kept", [])
    ]
    return lines


def _patch_summary(patch: dict[str, Any]) -> str:
    packages = patch.get("packages", {})
    counts = ", ".join(
        f"{len(packages.get(k, []))} {k}" for k in ("upgraded", "installed", "removed", "held")
    )
    line = (
        f"{patch.get('change')} {patch.get('result')} at {_at(patch.get('finished_at'))} "
        f"by {patch.get('by') or '?'} ({patch.get('runbook')}): {counts}"
    )
    backup = patch.get("backup") or {}
    if backup:
        verified = "verified" if backup.get("verified") else "NOT verified"
        line += f"; backup {backup.get('label')} ({backup.get('type')}, {verified})"
    restored = patch.get("restored") or {}
    if restored:
        failed = restored.get("failed") or []
        line += f"; rolled back: {len(restored.get('restored') or {})} restored"
        line += f", {len(failed)} NOT restored" if failed else ""
    return line


def _change_line(change: dict[str, Any]) -> str:
    title = f' "{change["title"]}"' if change.get("title") else ""
    extra = f", verification {change['verification']}" if change.get("verification") else ""
    extra += f", rollback {change['rollback']}" if change.get("rollback") else ""
    return (
        f"{_at(change.get('finished_at'))} {change.get('change')} {change.get('result')} "
        f"({change.get('runbook')}) by {change.get('by') or '?'}{title}{extra}"
    )


def _finding_line(finding: dict[str, Any]) -> str:
    where = finding.get("schedule") or finding.get("source", "")
    return (
        f"[{finding.get('severity', '?')}] {finding.get('check', '')}: {finding.get('message', '')}"
        f" ({where} at {_at(finding.get('at'))})"
    )


def host_text(record: HostRecord) -> str:
    out = [f"{record.host} ({record.environment}) — {record.status.value}"]
    out.append(f"groups: {', '.join(record.groups) or '-'}")
    out.append(f"os: {record.os or '- (no converge has recorded it)'}")
    out.append("variables:")
    out += [f"  {k}: {json.dumps(v, default=str)}" for k, v in record.variables.items()] or ["  -"]
    hw = record.hardware
    if hw:
        asset = hw.get("asset", {})
        cpu = asset.get("cpu", {})
        memory = asset.get("memory", {})
        out.append(
            f"hardware (recorded by {hw.get('change')} at {_at(hw.get('recorded_at'))}): health "
            f"{hw.get('health')}; {cpu.get('count', '?')} CPU(s) {cpu.get('model', '')}".rstrip()
            + f"; memory {memory.get('total_mb', '?')} MiB"
        )
        out += [f"  {c.get('id')} {c.get('name')}: {c.get('status')}" for c in hw.get("checks", [])]
    else:
        out.append("hardware: - (no converge has recorded it)")
    if record.last_patch:
        out.append("last patch: " + _patch_summary(record.last_patch))
        out += [f"  {line}" for line in _package_lines(record.last_patch.get("packages", {}))]
        for failed in (record.last_patch.get("restored") or {}).get("failed") or []:
            out.append(f"  NOT restored: {failed['name']} {failed['version']}: {failed['why']}")
    else:
        out.append("last patch: -")
    out.append(f"changes ({len(record.changes)}):")
    out += [f"  {_change_line(c)}" for c in reversed(record.changes)] or ["  -"]
    out.append(f"open findings ({len(record.open_findings)}):")
    out += [f"  {_finding_line(f)}" for f in record.open_findings] or ["  -"]
    out.append("inspections:")
    out += [
        f"  {_at(i['at'])} {i['schedule']} {i['result']}, {len(i['findings'])} finding(s)"
        for i in record.inspections
    ] or ["  -"]
    out.append("drift:")
    out += [f"  {_at(d['at'])} {d['state']}" for d in record.drift] or ["  -"]
    out.append("drills:")
    out += [
        f"  {_at(d['at'])} {d['service']} {d['result']} (RTO {d['rto_s']} s, RPO {d['rpo_s']} s)"
        for d in record.drills
    ] or ["  -"]
    out.append("incidents:")
    out += [
        f"  {i['id']} {i['status']} {i['priority']} {i['class']}: {i['title']}"
        for i in record.incidents
    ] or ["  -"]
    out.append("waivers:")
    out += [
        f"  {w['id']} {', '.join(w['controls'])} until {w['expires']}"
        + (" (EXPIRED)" if w["expired"] else "")
        for w in record.waivers
    ] or ["  -"]
    return "\n".join(out) + "\n"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{cells}</table>"


_STYLE = (
    "<style>body{font:14px sans-serif;margin:1.5em}td,th{border:1px solid #ccc;padding:3px 6px;"
    "text-align:left;vertical-align:top}table{border-collapse:collapse;margin-bottom:1em}"
    ".attention{color:#b00}.clean{color:#070}</style>"
)


def host_html(record: HostRecord) -> str:
    e = html.escape
    patch = record.last_patch
    sections = [
        f"<h1>{e(record.host)} <small>({e(record.environment)})</small> "
        f"<span class='{record.status.value}'>{e(record.status.value)}</span></h1>",
        f"<p>groups: {e(', '.join(record.groups) or '-')} — os: {e(record.os or '-')}</p>",
        "<h2>Key variables</h2>",
        _table(
            ["variable", "value"],
            [[k, json.dumps(v, default=str)] for k, v in record.variables.items()],
        ),
        "<h2>Hardware</h2>",
        f"<pre>{e(json.dumps(record.hardware, indent=1, default=str))}</pre>"
        if record.hardware
        else "<p>no converge has recorded it</p>",
        "<h2>Last patch</h2>",
        f"<p>{e(_patch_summary(patch))}</p>"
        + _table(["package"], [[line] for line in _package_lines(patch.get("packages", {}))])
        if patch
        else "<p>none</p>",
        "<h2>Changes</h2>",
        _table(
            ["finished", "change", "title", "runbook", "result", "by", "verification", "rollback"],
            [
                [
                    _at(c["finished_at"]),
                    c["change"],
                    c["title"],
                    c["runbook"],
                    c["result"],
                    c["by"],
                    c["verification"],
                    c["rollback"],
                ]
                for c in reversed(record.changes)
            ],
        ),
        "<h2>Open findings</h2>",
        _table(
            ["severity", "check", "finding", "from", "at"],
            [
                [
                    f.get("severity"),
                    f.get("check"),
                    f.get("message"),
                    f.get("schedule") or f.get("source"),
                    _at(f.get("at")),
                ]
                for f in record.open_findings
            ],
        ),
        "<h2>Inspections</h2>",
        _table(
            ["at", "schedule", "result", "findings"],
            [
                [_at(i["at"]), i["schedule"], i["result"], len(i["findings"])]
                for i in record.inspections
            ],
        ),
        "<h2>Drift</h2>",
        _table(
            ["at", "state", "tasks"],
            [[_at(d["at"]), d["state"], "; ".join(d["tasks"])] for d in record.drift],
        ),
        "<h2>Drills</h2>",
        _table(
            ["at", "service", "result", "RTO s", "RPO s"],
            [
                [_at(d["at"]), d["service"], d["result"], d["rto_s"], d["rpo_s"]]
                for d in record.drills
            ],
        ),
        "<h2>Incidents</h2>",
        _table(
            ["id", "status", "priority", "class", "title"],
            [
                [i["id"], i["status"], i["priority"], i["class"], i["title"]]
                for i in record.incidents
            ],
        ),
        "<h2>Waivers</h2>",
        _table(
            ["id", "controls", "expires", "reason"],
            [
                [
                    w["id"],
                    ", ".join(w["controls"]),
                    w["expires"] + (" (expired)" if w["expired"] else ""),
                    w["reason"],
                ]
                for w in record.waivers
            ],
        ),
    ]
    return (
        f"<!doctype html><meta charset='utf-8'><title>{e(record.host)}</title>{_STYLE}"
        + "".join(sections)
        + "\n"
    )


def render_host(record: HostRecord, fmt: str = "text") -> str:
    """A host's record as text, json or html."""
    if fmt == "json":
        return json.dumps(record.as_dict(), indent=2, default=str) + "\n"
    if fmt == "html":
        return host_html(record)
    return host_text(record)


def _estate_rows(estate: Estate) -> list[list[str]]:
    rows = []
    for r in estate.rows:
        last = r.last_change
        patch = r.last_patch
        rows.append(
            [
                r.host,
                r.environment,
                ",".join(r.groups),
                r.os or "-",
                f"{last['change']} {last['result']} {_at(last['finished_at'])}" if last else "-",
                f"{patch['change']} {_at(patch['finished_at'])} ({patch['upgraded']} upgraded)"
                if patch
                else "-",
                f"{r.open_findings} ({r.worst})" if r.open_findings else "0",
            ]
        )
    return rows


ESTATE_HEAD = ["host", "env", "groups", "os", "last change", "last patch", "open findings"]


def render_estate(estate: Estate, fmt: str = "text") -> str:
    """The estate as text (aligned columns), json or html."""
    if fmt == "json":
        return json.dumps(estate.as_dict(), indent=2, default=str) + "\n"
    rows = _estate_rows(estate)
    if fmt == "html":
        return (
            f"<!doctype html><meta charset='utf-8'><title>estate</title>{_STYLE}"
            f"<h1>Estate <span class='{estate.status.value}'>{estate.status.value}</span></h1>"
            + _table(ESTATE_HEAD, rows)
            + "\n"
        )
    widths = [max(len(str(x)) for x in col) for col in zip(ESTATE_HEAD, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in [ESTATE_HEAD, *rows]]  # fmt: skip
    return "\n".join(lines) + "\n"
