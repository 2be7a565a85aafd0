"""One change's whole life from the repository: request, approvals, runs, review, commits.

Showing a change first settles earlier runs' evidence (reconcile.py): a run whose apply died is
recorded as interrupted, a record whose commit failed is committed again; what still is not
committed is shown as such and never counted as a run.

`git log -- changes/<block>/<ID>` (or its legacy flat folder) is the change's life; this puts
it in one view for the engineer and the reviewer (`opsledger change show`). Audit (many
changes, history-wide rules) builds on the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.approval_rules import approval_rule
from opsledger.approvals import ApprovalState, Judged, change_standing, not_counted
from opsledger.base import resolve_base
from opsledger.changes import Change, Withdrawal, load_change, load_withdrawal, validate_change
from opsledger.content import Content, change_content
from opsledger.gitrepo import git, require_history
from opsledger.layout import change_pathspecs, shown_path
from opsledger.policy.bundle import Policies, Rule
from opsledger.project import Project
from opsledger.reconcile import reconcile_runs
from opsledger.records import Record, RunFile, read_runs
from opsledger.reviews import Review, load_review
from opsledger.runbooks import load_runbook


@dataclass
class ChangeHistory:
    change: Change
    content_sha256: str
    approvals: list[ApprovalState]
    statements: list[Judged]
    requester: str  # whether the requester's request is proven, and why
    runs: list[Record]
    review: Review | None
    commits: list[dict[str, str]]  # sha, date, author, subject — oldest first
    uncommitted: list[RunFile] = field(default_factory=list)  # written, git refused: no count
    running: list[RunFile] = field(default_factory=list)  # started, not ended
    withdrawal: Withdrawal | None = None
    notes: list[str] = field(default_factory=list)  # what reconciling earlier runs did or needs
    # person -> why their (valid) statement does not count under the change's rule
    uncounted: dict[str, str] = field(default_factory=dict)
    # where the project lies: text and JSON name a file where it is stored (the JSON keeps a
    # statement's flat-form key too, as statements, hashes and audit findings name it)
    root: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        c = self.change
        return {
            "change": c.id,
            "folder": self._relative(c.path),
            "title": c.title,
            "type": c.type,
            "runbook": c.runbook,
            "environment": c.environment,
            "targets": c.targets,
            "params": c.params,
            "window": [c.window_start.isoformat(), c.window_end.isoformat()],
            "requested_by": c.requested_by,
            "content_sha256": self.content_sha256,
            "approvals": [
                {
                    **a.__dict__,
                    "counts": a.valid and a.person not in self.uncounted,
                    "not_counted": self.uncounted.get(a.person, ""),
                }
                for a in self.approvals
            ],
            "request": self.requester,
            "statements": [
                {
                    "path": self._shown(j.path),  # where it lies now: a file a person opens
                    "key": j.path,  # its flat form (layout.flat_form), as audit findings name it
                    "person": j.person,
                    "decision": j.statement.decision if j.statement else "",
                    "valid": j.valid,
                    "proof": j.proof,
                    "reasons": j.reasons,
                }
                for j in self.statements
            ],
            "runs": [
                {
                    "finished_at": r.finished_at,
                    "result": r.result,
                    "verification": r.verification.get("status"),
                    "rollback": (r.rollback or {}).get("result"),
                    "runner": r.runner.get("person"),
                    "git_commit": r.git_commit,
                }
                for r in self.runs
            ],
            "review": None
            if self.review is None
            else {
                "path": self._relative(self.review.path),
                "status": self.review.status,
                "due_by": self.review.due_by.isoformat(),
                "reviewed_by": self.review.reviewed_by,
            },
            "commits": self.commits,
            "uncommitted_runs": [
                {"path": f.path, "result": f.record.result} for f in self.uncommitted
            ],
            "running": [
                {
                    "path": f.path,
                    "started_at": f.record.started_at,
                    "run": f.record.runner.get("run"),
                }
                for f in self.running
            ],
            "withdrawn": None
            if self.withdrawal is None
            else {
                "path": self._relative(self.withdrawal.path),
                "by": self.withdrawal.person,
                "at": self.withdrawal.at,
                "reason": self.withdrawal.reason,
            },
            "notes": self.notes,
        }

    def _shown(self, path: str) -> str:
        """A key or stored path, named where the file lies now (layout.shown_path)."""
        return shown_path(self.root, path) if self.root is not None else path

    def _relative(self, path: Path) -> str:
        """A file of the change as a relative POSIX path (as stored), absolute outside root."""
        if self.root is not None and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return str(path)

    def render(self) -> str:
        data = self.as_dict()
        out = [
            f"{data['change']}: {data['title']}",
            f"  {data['type']} change, runbook {data['runbook']} on "
            f"{data['environment']}:{data['targets']} {data['params'] or ''}".rstrip(),
            f"  requested by {data['requested_by']}, window {data['window'][0]} - "
            f"{data['window'][1]}",
            f"  content {self.content_sha256[:12]}",
            f"  request: {self.requester}",
            "approvals (each person's newest statement):",
        ]
        for a in self.approvals:
            verdict = (
                f"DOES NOT COUNT: {self.uncounted[a.person]}"
                if a.valid and a.person in self.uncounted
                else "stands"
                if a.valid and a.decision == "rejected"
                else "valid"
                if a.valid
                else "VOID: " + "; ".join(a.reasons)
            )
            signed = ", signed" if a.signed_by else ""
            out.append(f"  {a.person}: {a.decision} at {a.at} ({verdict}{signed})")
        if not self.approvals:
            out.append("  none")
        void = [j for j in self.statements if not j.valid]
        if void:
            out.append("statements that do not count:")
            out += [f"  {self._shown(j.path)}: {'; '.join(j.reasons)}" for j in void]
        out.append("runs:")
        for r in data["runs"]:
            extra = f", rollback {r['rollback']}" if r["rollback"] else ""
            out.append(
                f"  {r['finished_at']}: {r['result']} (verification {r['verification']}{extra}) "
                f"by {r['runner']} at {r['git_commit'][:10]}"
            )
        for f in self.running:
            out.append(
                f"  RUNNING since {f.record.started_at} (run {f.record.runner.get('run')}, "
                f"pid {f.record.runner.get('pid')} on {f.record.runner.get('machine')})"
            )
        for f in self.uncommitted:
            out.append(
                f"  {f.record.finished_at or f.record.started_at}: {f.record.result} — NOT "
                f"COMMITTED ({f.path}): does not count until committed"
            )
        if not (self.runs or self.running or self.uncommitted):
            out.append("  none")
        if self.withdrawal:
            w = self.withdrawal
            out.append(f"withdrawn by {w.person} at {w.at}: {w.reason}")
        out += [f"note: {n}" for n in self.notes]
        if self.review:
            out.append(
                f"review: {self.review.status}, due by {self.review.due_by.isoformat()}"
                + (f", by {self.review.reviewed_by}" if self.review.reviewed_by else "")
            )
        out.append("commits:")
        out += [
            f"  {c['sha'][:10]} {c['date']} {c['author']}: {c['subject']}" for c in self.commits
        ]
        return "\n".join(out) + "\n"


def judge_approvals(
    project: Project, change: Change, policies: Policies, revs: list[str]
) -> tuple[Content, Judged, Rule]:
    """The change's content now, every statement on it judged against it, and the rule to meet.

    One judgement for `change show` and the next-step hints, so neither can say a different
    thing from what decide will.
    """
    runbook = load_runbook(project, change.runbook)
    hosts = validate_change(project, change.id).hosts
    content = change_content(project, change, runbook, hosts)
    judged = change_standing(project, change, content, policies, revs)
    return content, judged, approval_rule(project, change.id, policies).rule


def change_history(project: Project, change_id: str) -> ChangeHistory:
    """Everything the repository knows about one change.

    Example:
        history = change_history(find_project(), "CHG-0001")
        [(r.result, r.finished_at) for r in history.runs]
    """
    require_history(project.root, "change show")
    change = load_change(project, change_id)
    done = reconcile_runs(project)
    base = resolve_base(project)
    policies = base.policies
    content, judged, rule = judge_approvals(project, change, policies, ["HEAD", base.sha])
    uncounted = {}
    for state in judged.states:
        if state.decision == "approved":
            why = not_counted(state.person, change.requested_by, rule, policies)
        else:
            nothing = policies.approves_nothing(state.person)
            why = f"{state.person} approves nothing" if nothing else ""
        if why:
            uncounted[state.person] = why
    log = git(
        project.root,
        "log",
        "--reverse",
        "--format=%H%x1f%aI%x1f%ae%x1f%s",
        "--",
        *change_pathspecs(change_id),  # either layout: before and after migrate-layout
    ).stdout
    commits = [
        dict(zip(("sha", "date", "author", "subject"), line.split("\x1f", 3), strict=True))
        for line in log.splitlines()
        if line
    ]
    ledger = read_runs(project)
    return ChangeHistory(
        change,
        content.sha256,
        judged.states,
        judged.judged,
        judged.requester_why,
        [r for r in ledger.committed if r.change == change_id],
        load_review(project, change_id),
        commits,
        [f for f in ledger.uncommitted if f.record.change == change_id],
        [f for f in ledger.started if f.record.change == change_id],
        load_withdrawal(project, change_id),
        done.notes + [f"{p}" for p in done.problems],
        uncounted,
        project.root,
    )
