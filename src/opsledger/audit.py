"""What auditors read from git history: the change log and the compliance findings.

`audit log` is one row per change; `audit check` lists findings (its rules are compliance.py).

Who requested a change comes from the commits (one `git log` stream, see gitlog.py); who
approved or rejected it, and whether their statements are proven (signature good, or in the
lab committed by the person), from every statement ever committed; when it ran, by whom and
what happened from the run records that count as evidence (committed by CI on the branch,
see evidence.py). A file that says one thing while its history says another is exactly what
`audit check` reports.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

from opsledger.approvals import allowed_signers, judge, parse_ahead, statements_in
from opsledger.base import Base, resolve_base
from opsledger.changes import Change, change_ids, load_change
from opsledger.compliance import (
    ComplianceResult,
    Finding,
    brought_at,
    ci_beyond_evidence,
    edit_findings,
    is_desired_state,
    judge_records,
    policy_version_findings,
    review_findings,
    run_findings,
    statement_findings,
    unauthorized_findings,
    uncommitted_records,
    unreadable,
    waiver_findings,
)
from opsledger.errors import OpsledgerError
from opsledger.evidence import Evidence, record_of, run_evidence
from opsledger.faults.findings import fault_findings
from opsledger.gitlog import by_change, history_in_background
from opsledger.gitrepo import blob_contents, git, nul_paths, require_history
from opsledger.layout import (
    APPROVALS,
    CHANGES,
    CHANGES_PREFIX,
    POLICIES_PREFIX,
    REQUEST,
    change_file,
    change_folder_name,
    change_pathspecs,
    stored_file,
    within_change,
)
from opsledger.localcache import schema_passes
from opsledger.policy.changes import load_policy_request, policy_change_ids
from opsledger.project import Project
from opsledger.records import Record, is_final_run_path, read_runs
from opsledger.reviews import load_review
from opsledger.steady import steady_tree


@dataclass
class Approver:
    person: str
    decision: str
    commit: str
    author: str
    at: str
    signature: str
    # counted in the decision of the change's last run; None before any run (nothing decided
    # yet: "not counted" would read as a verdict on an approval no run has weighed)
    counted: bool | None

    def label(self) -> str:
        mark = " (not counted)" if self.counted is False else ""
        return f"{self.person} [{self.signature}]{mark}"


@dataclass
class AuditRow:
    change: str
    title: str
    type: str
    priority: str
    environment: str
    requester: str
    requested_at: str
    approvers: list[Approver]
    window_start: str
    window_end: str
    applied_at: str
    applied_by: str
    result: str
    verification: str
    rollback: str
    review: str
    commits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """`asdict(self)`, without its deep copy of every value (a second of 5,000 rows)."""
        data = dict(vars(self))
        data["approvers"] = [dict(vars(a)) for a in self.approvers]
        data["commits"] = list(self.commits)
        return data

    def flat(self) -> dict[str, str]:
        """One line per change, for CSV and tables."""
        data = self.as_dict()
        data["approvers"] = "; ".join(a.label() for a in self.approvers)
        data["commits"] = " ".join(c[:10] for c in self.commits)
        return data


@dataclass
class AuditLog:
    rows: list[AuditRow]
    since: dt.datetime | None
    until: dt.datetime | None
    # Committed changes the log could not read, each "changes/<block>/<ID>: why" (where it is
    # stored): a log that leaves a change out must say so (the command exits 1), never read as
    # complete.
    unreadable: list[str] = field(default_factory=list)


def audit_log(
    project: Project,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    environment: str | None = None,
    change_type: str | None = None,
) -> AuditLog:
    """One row per change requested in the period (by the commit that added its change.yml).

    Example:
        log = audit_log(find_project(), since=datetime(2026, 1, 1, tzinfo=UTC))
        [(r.change, r.result, [a.person for a in r.approvers]) for r in log.rows]
    """
    require_history(project.root, "audit log")
    with steady_tree():  # the tree is only read: each inventory and runbook loads once
        return _audit_log(project, since, until, environment, change_type)


def _load(project: Project, change_id: str) -> Change | OpsledgerError:
    try:
        return load_change(project, change_id)
    except OpsledgerError as err:
        return err


def _load_all(project: Project) -> dict[str, Change | OpsledgerError]:
    """Every change of the working tree, read and checked, or why not.

    An audit needs each change it lists, and reads them while `git log` lists the history
    (gitlog.history_in_background): git's walk and these checks overlap instead of adding up
    (on a single free core they add up as before).
    """
    with schema_passes(project):  # one load and save of the passes, not one per change
        return {change_id: _load(project, change_id) for change_id in change_ids(project)}


def _ahead(project: Project, base: Base, whole: bool) -> dict[str, Change | OpsledgerError]:
    """What an audit reads whatever the history says, read while git lists the history.

    Each change (when the audit is not of a period: then the history picks them), and each
    statement and run record the branch holds, parsed by blob id (approvals.parse_ahead,
    evidence.record_of): the versions the history brings are mostly these.
    """
    loaded = _load_all(project) if whole else {}
    statements, records, requests = _held(project, base)
    # Kept in the scope's memo (gitrepo.blob_contents): judging the history after git has
    # listed it asks for these again, and then starts no `cat-file` for them.
    blob_contents(project.root, requests)
    # Statements and records are kept parsed, by blob id (approvals.parse_ahead,
    # evidence.record_of): their bytes are dropped once parsed, a batch at a time (one
    # `cat-file` of every one held them all at once, twice: git's output and each slice).
    for at in range(0, len(statements), _BATCH):
        batch = statements[at : at + _BATCH]
        contents = blob_contents(project.root, batch, keep=False)
        parse_ahead({blob: contents[blob] for blob in batch if blob in contents})
    for at in range(0, len(records), _BATCH):
        batch = records[at : at + _BATCH]
        contents = blob_contents(project.root, batch, keep=False)
        for blob in batch:
            record_of(blob, contents.get(blob, b""))
    return loaded


_BATCH = 2000  # objects read by one `cat-file` ahead of the judging


def _held(project: Project, base: Base) -> tuple[list[str], list[str], list[str]]:
    """The statements' and records' blob ids the branch holds, and its requests' names."""
    listing = git(project.root, "ls-tree", "-r", "-z", base.sha, "--", CHANGES).stdout
    statements, records, requests = [], [], []
    for entry in nul_paths(listing):
        meta, _, path = entry.partition("\t")
        mode, kind, blob = meta.split()
        if kind == "blob" and mode != "120000":
            if is_final_run_path(path):
                records.append(blob)
            elif inside := within_change(path):
                if inside[1].startswith(f"{APPROVALS}/"):
                    statements.append(blob)
                elif inside[1] == REQUEST:  # named as evidence.changes_on asks for it:
                    # both layouts' spellings, the one the branch lacks kept as missing
                    requests += [f"{base.sha}:{p}" for p in change_pathspecs(inside[0], REQUEST)]
    return statements, records, requests


def _audit_log(
    project: Project,
    since: dt.datetime | None,
    until: dt.datetime | None,
    environment: str | None,
    change_type: str | None,
) -> AuditLog:
    base = resolve_base(project, "HEAD")
    policies = base.policies
    # The whole history in one stream, its commits touching changes/ kept: a `git log --
    # changes/` plus the records' own first-parent log read it twice (git costs the same
    # either way; a path-limited log also hides merges git finds TREESAME to one parent).
    with history_in_background(
        project, allowed_signers=allowed_signers(policies), rev=base.sha, keep=_in_changes
    ) as history:
        loaded = _ahead(project, base, whole=since is None and until is None)
        ledger = read_runs(project)  # the committed records: HEAD's, not the history's
        commits = list(history())
    base.position.want(c.sha for c in commits)  # one pass places every commit kept
    histories = by_change(commits)
    statements = statements_in(project, commits)
    runs: dict[str, list[Record]] = {}
    for evidence in run_evidence(
        project, base, statements=statements, history=commits, ledger=ledger
    ):
        if evidence.trusted and evidence.record and evidence.record.change:
            runs.setdefault(evidence.record.change, []).append(evidence.record)
    rows, unreadable = [], []
    for change_id in change_ids(project):
        history = histories.get(change_id, [])
        request = next(
            (c for c in history for f in c.files if f.path == change_file(change_id, REQUEST)),
            None,
        )
        if request is None:
            continue  # not committed: not part of the change log yet
        if (since and request.authored_at < since) or (until and request.authored_at > until):
            continue
        change = loaded.get(change_id) or _load(project, change_id)
        if isinstance(change, OpsledgerError):  # audit check reports it too (change-unreadable)
            why = change.problems[0].message if change.problems else "cannot be read"
            unreadable.append(f"{stored_file(project.root, change_id)}: {why}")
            continue
        if environment and change.environment != environment:
            continue
        if change_type and change.type != change_type:
            continue
        change_runs_ = runs.get(change_id, [])
        last = change_runs_[-1] if change_runs_ else None
        counted = set((last.decision or {}).get("approvers", [])) if last else set()
        approvers = []
        signed = change.environment in policies.signature_environments
        excluded = frozenset({policies.records_by} if policies.records_by else ())
        for found in statements.get(change_id, []):
            judged = judge(
                found, change_id, policies.people, signatures_required=signed, excluded=excluded
            )
            statement = judged.statement
            if statement is not None and statement.decision == "requested":
                continue
            first = found.introduced_by[0] if found.introduced_by else None
            approvers.append(
                Approver(
                    judged.person or found.path,
                    statement.decision if statement else "invalid",
                    judged.commit,
                    first.author if first else "",
                    statement.at.isoformat() if statement else "",
                    "good"
                    if judged.proof == "signed"
                    else "bad"
                    if statement and statement.signature
                    else "unsigned",
                    (judged.valid and judged.person in counted) if last else None,
                )
            )
        review = load_review(project, change_id)
        if review is None:
            pir = "n/a" if change.type != "emergency" else ("missing" if last else "n/a")
        else:
            now = dt.datetime.now(dt.UTC)
            pir = review.status + (" (late)" if review.late(now) else "")
        rows.append(
            AuditRow(
                change=change_id,
                title=change.title,
                type=change.type,
                priority=policies.priority(change.impact, change.urgency),
                environment=change.environment,
                requester=change.requested_by,
                requested_at=request.authored_at.isoformat(),
                approvers=approvers,
                window_start=change.window_start.isoformat(),
                window_end=change.window_end.isoformat(),
                applied_at=last.finished_at if last else "",
                applied_by=(last.runner or {}).get("person", "") if last else "",
                result=last.result if last else "not applied",
                verification=(last.verification or {}).get("status", "") if last else "",
                rollback=((last.rollback or {}).get("result", "") or "") if last else "",
                review=pir,
                commits=[c.sha for c in history],
            )
        )
    return AuditLog(rows, since, until, unreadable)


def _in_changes(sha: str, committer_email: str, paths: list[str]) -> bool:
    return any(path.startswith(CHANGES_PREFIX) for path in paths)


COLUMNS = (
    "change",
    "title",
    "type",
    "priority",
    "environment",
    "requester",
    "requested_at",
    "approvers",
    "window_start",
    "window_end",
    "applied_at",
    "applied_by",
    "result",
    "verification",
    "rollback",
    "review",
    "commits",
)


def render_log(log: AuditLog, fmt: str) -> str:
    """The log as json (full detail), csv, md or html (self-contained)."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in log.rows], indent=2) + "\n"
    flat = [r.flat() for r in log.rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        return out.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += [
            "| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |" for r in flat
        ]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>"
            for r in flat
        )
        return (
            "<!doctype html><meta charset='utf-8'><title>opsledger audit log</title>"
            "<style>body{font:13px system-ui,sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
            "th{background:#f3f3f3}</style>"
            f"<h1>Audit log</h1><table><tr>{head}</tr>{body}</table>\n"
        )
    raise ValueError(f"unknown format {fmt!r}")


def parse_csv(text: str) -> list[dict[str, Any]]:
    """Read the CSV back (round trip for spreadsheets and tests)."""
    return list(csv.DictReader(io.StringIO(text)))


class _Judged:
    """Whether any rule of audit check reads a commit; the others are counted and dropped.

    Kept: what touches changes/ (requests, statements, records, reviews), policies/ (and the
    commits that brought a policy version), desired state, and every commit of the CI identity
    (whether it is on the first-parent line is asked once, of the commits kept: the line is
    not held while git walks). A history of 100,000 commits is streamed, not held: the commits
    dropped are never built (see gitlog.Keep).
    """

    def __init__(self, ci_email: str, versions: set[str]):
        self.ci_email, self.versions = ci_email, versions
        self.read = 0

    def __call__(self, sha: str, committer_email: str, paths: list[str]) -> bool:
        self.read += 1
        if sha in self.versions:
            return True
        if committer_email == self.ci_email:
            return True
        return any(
            path.startswith((CHANGES_PREFIX, POLICIES_PREFIX)) or is_desired_state(path)
            for path in paths
        )


def audit_check(
    project: Project, *, since: dt.datetime | None = None, now: dt.datetime | None = None
) -> ComplianceResult:
    """Every compliance finding in the history (optionally only for changes since a time).

    One `git log` stream of the whole branch; only the commits a rule reads are kept (see
    `_judged`), so memory grows with the changes, not with the commits.

    Example:
        result = audit_check(find_project())
        [str(f) for f in result.at_least("high")]
    """
    require_history(project.root, "audit check")
    with steady_tree():  # the tree is only read: each inventory and runbook loads once
        return _audit_check(project, since, now or dt.datetime.now(dt.UTC))


def _audit_check(
    project: Project, since: dt.datetime | None, moment: dt.datetime
) -> ComplianceResult:
    base = resolve_base(project, "HEAD")  # the branch audited is the protected line
    policies = base.policies
    ci = policies.people.get(policies.records_by or "")
    versions = {v.commit for v in base.versions}
    judged = _Judged(ci.email if ci else "", versions)
    with history_in_background(
        project, allowed_signers=allowed_signers(policies), rev=base.sha, keep=judged
    ) as history:
        loaded = _ahead(project, base, whole=since is None)
        uncommitted = uncommitted_records(project)
        commits = list(history())
    base.position.want(c.sha for c in commits)  # one pass places every commit kept
    result = ComplianceResult(commits_read=judged.read, baseline=policies.audit_from)
    when = {c.sha: c.committed_at for c in commits}
    histories = by_change(commits)
    edits = edit_findings(commits)
    statements = statements_in(project, commits)
    records = judge_records(project, base, commits, statements)
    brought = brought_at(base, commits)
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    result.findings += [
        Finding(
            "evidence-forged",
            "critical",
            "run record is no evidence: " + "; ".join(e.reasons),
            e.path,
            change_folder_name(e.path),
            (e.commit,),
        )
        for e in records
        if not e.trusted and not (since and when.get(e.commit, never) < since)
    ]
    result.findings += uncommitted
    evidence: dict[str, list[Evidence]] = {}
    for item in records:
        if item.trusted and item.record and item.record.change:
            evidence.setdefault(item.record.change, []).append(item)
    for change_id in change_ids(project):
        history = histories.get(change_id, [])
        if not history or (since and history[0].committed_at < since):
            continue
        change = loaded.get(change_id) or _load(project, change_id)
        if isinstance(change, OpsledgerError):
            result.findings.append(unreadable(change_id, "change.yml", change, history))
            continue
        signed = change.environment in policies.signature_environments
        result.findings += [f for f in edits if f.change == change_id]
        found = statements.get(change_id, [])
        result.findings += statement_findings(
            found, change_id, change.requested_by, signed, base, brought
        )
        result.findings += run_findings(
            project, change, base, evidence.get(change_id, []), found, brought
        )
        result.findings += review_findings(project, change, history, moment)
    for change_id in policy_change_ids(project):
        history = histories.get(change_id, [])
        if not history or (since and history[0].committed_at < since):
            continue
        try:
            request = load_policy_request(project, change_id)
        except OpsledgerError as err:
            result.findings.append(unreadable(change_id, "policy.yml", err, history))
            continue
        rule = policies.policy_changes
        result.findings += [f for f in edits if f.change == change_id]
        result.findings += statement_findings(
            statements.get(change_id, []),
            change_id,
            request.requested_by,
            bool(rule and rule.signed),
            base,
            brought,
        )
    start = max(filter(None, (policies.audit_from, since)), default=None)
    result.findings += policy_version_findings(base, when, start)
    result.findings += waiver_findings(project, moment.date())
    ran = {e.record.change for e in records if e.trusted and e.record}
    # the branch's own line after its first commit (the baseline), oldest first
    chain = [c for c in commits if base.position.get(c.sha, 0) > 0]
    chain.sort(key=lambda c: base.position[c.sha])
    result.findings += unauthorized_findings(chain, policies, ran, since)
    result.findings += ci_beyond_evidence(chain, policies, since)
    result.findings += [  # incidents: SLA breaches, timeline edits, steps by strangers
        Finding(f.rule, f.severity, f.message, f.file, commits=f.commits)
        for f in fault_findings(project, since=since, now=moment)
    ]
    return result
