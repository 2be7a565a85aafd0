"""The pull-request comment: one sticky comment per PR, saying which commit it was made from.

A reviewer approving a production change reads this comment, so it must be about the commit
they approve: its head names the commit the plan was made from (a newer push makes a new
plan, and the comment is replaced in place — found by its marker — rather than piling up).
Converge plans touch many hosts with the same edit: an identical diff on several hosts is
shown once, with the list of hosts. GitHub refuses a comment over 65,536 characters; a long
plan is split into numbered parts below that limit, each saying where the full plan is (the
job's artifact), and when even the parts would be too many the rest is left to the artifact.

Example:
    parts = comment_parts(report.markdown(), artifact_url="https://ci.example.org/run/1")
"""

from __future__ import annotations

from typing import Any

from opsledger.plan import markdown_tables

GITHUB_LIMIT = 65_536
LIMIT = 60_000  # room below GitHub's limit for the markers and the artifact line
MAX_PARTS = 5


def marker(part: int, key: str = "plan") -> str:
    """The hidden line that finds part `part` (1-based) of a PR's `key` comment again."""
    return f"<!-- opsledger-{key}:{part} -->"


def grouped_diffs(hosts: list[Any]) -> list[tuple[str, str, list[str]]]:
    """(task, diff, hosts) with each identical (task, diff) once, in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for host in hosts:
        for change in host.changes:
            if change.diff:
                groups.setdefault((change.task, change.diff), []).append(host.host)
    return [(task, diff, names) for (task, diff), names in groups.items()]


def host_list(names: list[str], shown: int = 8) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def diff_section(hosts: list[Any]) -> list[str]:
    """The diffs block of a plan in markdown, identical diffs once with their hosts."""
    groups = grouped_diffs(hosts)
    if not groups:
        return []
    out = ["", "<details><summary>Diffs</summary>", ""]
    for task, diff, names in groups:
        fence = "````" if "```" in diff else "```"
        out += [f"#### {task} — {host_list(names)}", f"{fence}diff", diff, fence, ""]
    out.append("</details>")
    return out


def comment_parts(
    body: str,
    *,
    artifact_url: str = "",
    key: str = "plan",
    limit: int = LIMIT,
    max_parts: int = MAX_PARTS,
) -> list[str]:
    """The comment(s) to post: each under `limit` characters, marked, pointing at the artifact.

    Splits at line boundaries (a single longer line is cut); fences left open at a split are
    closed and reopened so each part renders on its own.
    """
    where = f"Full plan: {artifact_url}" if artifact_url else "Full plan: the job's artifact"
    if len(body) + len(marker(1, key)) + 1 <= limit:
        return [f"{marker(1, key)}\n{body}"]
    room = limit - len(where) - 200
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    fence = ""
    for raw in body.splitlines():
        line = raw if len(raw) <= room // 2 else raw[: room // 2] + " …(cut)"
        if size + len(line) + 1 > room and current:
            if fence:
                current.append(fence)
            chunks.append("\n".join(current))
            current, size = ([fence + "diff"] if fence else []), 0
        current.append(line)
        size += len(line) + 1
        stripped = line.strip()
        if stripped.startswith("```"):
            ticks = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            fence = "" if fence and ticks == fence else (fence or ticks)
    if current:
        chunks.append("\n".join(current))
    total = len(chunks)
    parts = []
    for index, chunk in enumerate(chunks[:max_parts], start=1):
        head = f"{marker(index, key)}\n_opsledger plan, part {index} of {total}. {where}_\n\n"
        tail = ""
        if index == max_parts and total > max_parts:
            tail = f"\n\n_{total - max_parts} more part(s) left out. {where}_"
        parts.append(head + chunk + tail)
    return parts


def plan_markdown(p: Any) -> str:
    """One change's plan for the PR comment: rules, hosts, diffs (identical ones once)."""
    verdict = "ALLOWED" if p.decision.allowed else "DENIED"
    out = [
        f"### {p.change_id}: {p.title} — {p.runbook} on {p.environment}:{p.targets} "
        f"({p.decision.priority}, {p.decision.risk} risk) — {verdict}",
        "",
        *markdown_tables(p),
    ]
    out += [f"\n**Error on {h.host}:** `{h.note[:500]}`" for h in p.errors]
    out += diff_section(p.hosts)
    out += [
        "",
        f"policy {p.decision.policy_sha256[:12]} · content {p.decision.content_sha256[:12]}",
        "",
    ]
    return "\n".join(out)
