"""Compliance findings: every way the history can betray the change process.

Each finding names the rule, its severity, the change, the file and the commit(s), read from
one `git log` stream plus the records and approvals those commits added:

- `evidence-edited` — a run record or approval modified or deleted after its commit;
- `approval-by-requester` / `approval-by-stranger` — approved by the requester, by someone not
  in people.yml when they approved, or committed by someone other than the approver;
- `unsigned` — an approval or run record commit without a good signature where policy
  requires signatures for the change's environment;
- `applied-without-quorum` — a run whose counted approvers did not approve the content that
  ran, or approved only after it started, or fewer than the rule requires;
- `applied-outside-window` / `applied-in-freeze` — the run started outside the change window
  or a maintenance window, or in a freeze (emergency bypasses as policy allows);
- `review-missing` / `review-late` — an emergency change's post-implementation review;
- `waiver-expired` / `waiver-invalid` — the waiver register (expiry; approver = author);
- `incident-*`, `problem-*` — SLA breaches and near breaches of incidents, and breaches of
  their append-only ledger (see faults/findings.py);
- `unauthorized-change` — a commit on the branch's first-parent line (a direct commit, a squash
  or a merge with everything it brought) that changes desired state (inventories, roles,
  runbooks, site.yml, ansible.cfg) without adding a change request alongside;
  `change-not-applied` — it adds one, but that change never ran. History before
  `audit.from` in policies/changes.yml (when the repository adopted opsledger) is the baseline,
  as is the first commit.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opsledger.approvals import allowed_signers
from opsledger.changes import Change, change_ids, load_change
from opsledger.decide import window_checks
from opsledger.errors import OpsledgerError
from opsledger.faults.findings import fault_findings
from opsledger.gitlog import Commit, by_change, first_parent_chain, read_history
from opsledger.gitrepo import git, require_history
from opsledger.policy import Policies, load_policies
from opsledger.project import Project
from opsledger.records import STARTED_SUFFIX, read_record
from opsledger.reviews import load_review
from opsledger.waivers import load_waivers
from opsledger.yamlio import load_yaml, parse_yaml

SEVERITIES = ("low", "medium", "high", "critical")
DESIRED_STATE = ("inventories/", "roles/", "runbooks/", "site.yml", "ansible.cfg")
# Documentation beside desired state (role READMEs, generated from argument specs) changes
# nothing on a host: editing it is not a desired-state change.
DOCUMENTATION_SUFFIXES = (".md", ".rst")


def is_desired_state(path: str) -> bool:
    """True for a file whose edit changes what hosts run (see DESIRED_STATE)."""
    return path.startswith(DESIRED_STATE) and not path.endswith(DOCUMENTATION_SUFFIXES)


_REQUEST = re.compile(r"changes/(CHG-[0-9]+)/change\.yml")  # fullmatch: not "change.yml\n"


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    message: str
    file: str
    change: str = ""
    commits: tuple[str, ...] = ()

    def __str__(self) -> str:
        shas = ", ".join(c[:10] for c in self.commits)
        return f"[{self.severity}] {self.rule}: {self.file}: {self.message}" + (
            f" (commit {shas})" if shas else ""
        )


@dataclass
class ComplianceResult:
    findings: list[Finding] = field(default_factory=list)
    commits_read: int = 0
    baseline: dt.datetime | None = None  # audit.from: history before it is not judged

    def at_least(self, severity: str) -> list[Finding]:
        floor = SEVERITIES.index(severity)
        return [f for f in self.findings if SEVERITIES.index(f.severity) >= floor]

    def as_json(self) -> str:
        return json.dumps([asdict(f) for f in self.findings], indent=2) + "\n"


class _PeopleHistory:
    """Who people.yml listed at any point of the history, from the commits that changed it.

    Only the versions of policies/people.yml are read (one `git show` per version, not per
    approval); an approval is judged against the newest version committed before it.
    """

    def __init__(self, project: Project, commits: list[Commit]) -> None:
        self.project = project
        self.order = {c.sha: i for i, c in enumerate(commits)}
        self.versions = [
            (i, c.sha)
            for i, c in enumerate(commits)
            if any(f.path == "policies/people.yml" for f in c.files) and not c.merge
        ]
        self.loaded: dict[str, dict[str, str]] = {}

    def before(self, sha: str) -> dict[str, str]:
        """person id -> email as people.yml said just before commit `sha`."""
        position = self.order.get(sha, len(self.order))
        earlier = [v for i, v in self.versions if i < position]
        if not earlier:
            return {}
        version = earlier[-1]
        if version not in self.loaded:
            shown = git(self.project.root, "show", f"{version}:policies/people.yml", check=False)
            try:
                data = parse_yaml(shown.stdout, source="people.yml") if not shown.returncode else {}
            except OpsledgerError:  # an unreadable version knew nobody
                data = {}
            people = data.get("people") if isinstance(data, dict) else None
            self.loaded[version] = {
                str(p.get("id")): str(p.get("email"))
                for p in (people if isinstance(people, list) else [])
                if isinstance(p, dict)
            }
        return self.loaded[version]


def _evidence(history: list[Commit], policies: Policies, project: Project) -> list[Finding]:
    """Records and approvals are written once: any later commit touching one is a finding."""
    findings = []
    added: dict[str, str] = {}
    for commit in history:
        if commit.merge:  # a merge repeats what its branch's commits did
            continue
        for f in commit.files:
            parts = f.path.split("/")
            if len(parts) != 4 or parts[0] != "changes" or parts[2] not in ("runs", "approvals"):
                continue
            if f.status == "A" and f.path not in added:
                added[f.path] = commit.sha
            elif f.path in added:
                verb = "deleted" if f.status == "D" else "modified"
                findings.append(
                    Finding(
                        "evidence-edited",
                        "critical",
                        f"{parts[2][:-1]} {verb} after its commit {added[f.path][:10]} "
                        f"by {commit.author_email}",
                        f.path,
                        parts[1],
                        (commit.sha,),
                    )
                )
    return findings


def _approvals(
    project: Project,
    change: Change,
    history: list[Commit],
    policies: Policies,
    people_history: _PeopleHistory,
) -> list[Finding]:
    findings = []
    prefix = f"changes/{change.id}/approvals/"
    signed = change.environment in policies.signature_environments
    for commit in history:
        for f in commit.files:
            if f.status != "A" or not f.path.startswith(prefix) or not f.path.endswith(".yml"):
                continue
            person = f.path[len(prefix) : -len(".yml")]
            people = people_history.before(commit.sha)
            if person == change.requested_by:
                findings.append(
                    Finding(
                        "approval-by-requester",
                        "high",
                        f"{person} requested the change and approved it",
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
            if person not in people:
                findings.append(
                    Finding(
                        "approval-by-stranger",
                        "high",
                        f"{person} was not in policies/people.yml when approving",
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
            elif people[person] != commit.author_email:
                findings.append(
                    Finding(
                        "approval-by-stranger",
                        "high",
                        f"{person}'s approval was committed by {commit.author_email}",
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
            if signed and commit.signature != "G":
                findings.append(
                    Finding(
                        "unsigned",
                        "high",
                        f"approval commit not signed with a key from people.yml "
                        f"(git says {commit.signature}) in {change.environment}",
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
    return findings


def _approval_data(project: Project, path: Path) -> dict:
    """An approval file's data; a missing or unreadable one (itself a finding) reads empty."""
    try:
        return load_yaml(path, what="approval", root=project.root) if path.exists() else {}
    except OpsledgerError:
        return {}


def _runs(
    project: Project, change: Change, history: list[Commit], policies: Policies
) -> list[Finding]:
    findings = []
    order = {c.sha: i for i, c in enumerate(history)}
    approvals: dict[str, tuple[Commit, dict]] = {}
    prefix = f"changes/{change.id}/approvals/"
    for commit in history:
        for f in commit.files:
            person = f.path[len(prefix) : -len(".yml")]
            if f.status == "A" and f.path.startswith(prefix) and person not in approvals:
                approvals[person] = (commit, _approval_data(project, project.root / f.path))
    signed = change.environment in policies.signature_environments
    for commit in history:
        for f in commit.files:
            if f.status != "A" or not f.path.startswith(f"changes/{change.id}/runs/"):
                continue
            if f.path.endswith(STARTED_SUFFIX):  # write-ahead: its final record is judged
                continue
            path = project.root / f.path
            if not path.exists():
                continue  # evidence-edited reports the deletion
            record = read_record(path)
            if record is None:
                continue
            if signed and commit.signature != "G":
                findings.append(
                    Finding(
                        "unsigned",
                        "high",
                        f"run record commit not signed (git says {commit.signature})",
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
            if record.result == "canceled" and not record.changed_tasks:
                continue
            started = dt.datetime.fromisoformat(record.started_at)
            counted = (record.decision or {}).get("approvers", [])
            good = []
            for person in counted:
                entry = approvals.get(person)
                if entry is None:
                    continue
                approved_in, data = entry
                if (
                    data.get("decision") == "approved"
                    and data.get("content_sha256") == record.content_sha256
                    and approved_in.committed_at <= started
                    and order.get(approved_in.sha, 0) < order.get(commit.sha, 0)
                ):
                    good.append(person)
            risk = (record.decision or {}).get("risk", "low")
            rule = policies.rule_for(change.type, risk, change.environment)
            needed = rule.approvals if rule else 1
            if len(good) < needed or not (record.decision or {}).get("allowed"):
                findings.append(
                    Finding(
                        "applied-without-quorum",
                        "critical",
                        f"run at {record.started_at}: {len(good)} of {needed} approval(s) of "
                        "the content that ran, committed before it started"
                        + ("" if (record.decision or {}).get("allowed") else "; decision denied"),
                        f.path,
                        change.id,
                        (commit.sha,),
                    )
                )
            for check in window_checks(change, policies, started):
                if check.passed:
                    continue
                rule_name = (
                    "applied-in-freeze" if check.rule == "freeze" else "applied-outside-window"
                )
                findings.append(
                    Finding(rule_name, "high", check.why, f.path, change.id, (commit.sha,))
                )
    return findings


def _review(
    project: Project, change: Change, history: list[Commit], now: dt.datetime
) -> list[Finding]:
    if change.type != "emergency":
        return []
    ran = [c for c in history for f in c.files if f.status == "A" and "/runs/" in f.path]
    if not ran:
        return []
    review = load_review(project, change.id)
    file = f"changes/{change.id}/review.yml"
    if review is None:
        return [
            Finding(
                "review-missing",
                "high",
                "emergency change ran; no review.yml",
                file,
                change.id,
                (ran[0].sha,),
            )
        ]
    if review.late(now):
        state = f"done at {review.reviewed_at.isoformat()}" if review.reviewed_at else "still open"
        return [
            Finding(
                "review-late",
                "medium",
                f"review due by {review.due_by.isoformat()}, {state}",
                file,
                change.id,
            )
        ]
    return []


def _waivers(project: Project, today: dt.date) -> list[Finding]:
    path = project.root / "policies" / "waivers.yml"
    if not path.exists():
        return []
    findings = []
    try:
        waivers = load_waivers(path)
    except OpsledgerError as err:  # e.g. approved by its author: the register itself is wrong
        return [
            Finding("waiver-invalid", "high", p.message, "policies/waivers.yml")
            for p in err.problems
        ]
    for waiver in waivers:
        if waiver.expires < today:
            findings.append(
                Finding(
                    "waiver-expired",
                    "medium",
                    f"{waiver.id} ({', '.join(waiver.controls)}) expired on {waiver.expires}",
                    "policies/waivers.yml",
                )
            )
    return findings


def _unauthorized(
    chain: list[Commit], policies: Policies, ran: set[str], since: dt.datetime | None
) -> list[Finding]:
    findings = []
    start = max(filter(None, (policies.audit_from, since)), default=None)
    for commit in chain[1:]:  # the first commit is the baseline
        if start and commit.committed_at < start:
            continue
        touched = [f.path for f in commit.files if is_desired_state(f.path)]
        if not touched:
            continue
        requests = sorted(
            {
                m.group(1)
                for f in commit.files
                if f.status == "A" and (m := _REQUEST.fullmatch(f.path))
            }
        )
        shown = ", ".join(touched[:3]) + (
            f" and {len(touched) - 3} more" if len(touched) > 3 else ""
        )
        if not requests:
            findings.append(
                Finding(
                    "unauthorized-change",
                    "high",
                    f"changes desired state ({shown}) with no change request in the same "
                    f"{'merge' if commit.merge else 'commit'}, by {commit.author_email}",
                    touched[0],
                    commits=(commit.sha,),
                )
            )
        elif not set(requests) & ran:
            findings.append(
                Finding(
                    "change-not-applied",
                    "medium",
                    f"desired state ({shown}) changed with {', '.join(requests)}, "
                    "which has not run",
                    touched[0],
                    requests[0],
                    (commit.sha,),
                )
            )
    return findings


def audit_check(
    project: Project, *, since: dt.datetime | None = None, now: dt.datetime | None = None
) -> ComplianceResult:
    """Every compliance finding in the history (optionally only for changes since a time).

    Example:
        result = audit_check(find_project())
        [str(f) for f in result.at_least("high")]
    """
    require_history(project.root, "audit check")
    moment = now or dt.datetime.now(dt.UTC)
    policies, _ = load_policies(project, strict=False)
    commits = read_history(project, allowed_signers=allowed_signers(policies))
    result = ComplianceResult(commits_read=len(commits), baseline=policies.audit_from)
    histories = by_change(commits)
    evidence = _evidence(commits, policies, project)
    people_history = _PeopleHistory(project, commits)
    for change_id in change_ids(project):
        history = histories.get(change_id, [])
        if not history or (since and history[0].committed_at < since):
            continue
        try:
            change = load_change(project, change_id)
        except OpsledgerError:
            continue
        result.findings += [f for f in evidence if f.change == change_id]
        result.findings += _approvals(project, change, history, policies, people_history)
        result.findings += _runs(project, change, history, policies)
        result.findings += _review(project, change, history, moment)
    result.findings += _waivers(project, moment.date())
    ran = {
        change_id
        for change_id, history in histories.items()
        if any(f.status == "A" and "/runs/" in f.path for c in history for f in c.files)
    }
    result.findings += _unauthorized(first_parent_chain(commits), policies, ran, since)
    result.findings += [  # incidents: SLA breaches, timeline edits, steps by strangers
        Finding(f.rule, f.severity, f.message, f.file, commits=f.commits)
        for f in fault_findings(project, since=since, now=moment)
    ]
    return result
