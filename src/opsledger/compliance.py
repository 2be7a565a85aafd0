"""Compliance findings: every way the history can betray the change process.

The rules, each a function of the history it needs; `audit.audit_check` streams the history
once and hands each rule the commits it reads.

Each finding names the rule, its severity, the change, the file and the commit(s), read from
one `git log` stream of the checked-out branch (judged as the protected line: its first-parent
commits and the policies in effect on it, see base.py) plus the statements and records those
commits added:

- `evidence-edited` — a statement or run record modified or deleted after the commit that
  added it, also inside a merge (adding a newer statement is not an edit);
- `evidence-forged` — a run record that is no evidence: not committed (or not only) by the CI
  identity, not on the branch's first-parent line, brought by a merge, unsigned where
  signatures are required, for a change that does not exist or content nobody requested, or
  a record file that is not committed at all;
- `approval-by-requester` / `approval-by-stranger` / `unsigned` — a statement approving the
  change by its requester; one whose identity is not proven (signature not the person's key
  from people.yml, or, unsigned, not authored *and* committed by the person; not a person of
  people.yml; not a statement file); an unsigned one where signatures are required;
- `applied-without-quorum` — a run whose statements, as they stood before it was committed,
  do not prove the request and the rule's quorum for the content that ran (or that ran
  despite a standing rejection, or whose decision was a denial);
- `applied-outside-window` / `applied-in-freeze` — the run started outside the change window
  or the maintenance windows, or in a freeze (emergency bypasses as policy allows);
- `policy-change-unapproved` — a version of policies/ on the first-parent line that no
  approved policy change covers (it never took effect);
- `review-missing` / `review-late` — an emergency change's post-implementation review;
- `waiver-expired` / `waiver-invalid` — the waiver register (expiry; approver = author);
- `incident-*`, `problem-*` — SLA breaches and near breaches of incidents, and breaches of
  their append-only ledger (see faults/findings.py);
- `unauthorized-change` — a commit on the branch's first-parent line (a direct commit, a squash
  or a merge with everything it brought) that changes desired state (inventories, roles,
  runbooks, site.yml, ansible.cfg, the Ansible folders next to site.yml) without adding a
  change request alongside; `change-not-applied` — it adds one, but that change never ran.
  History before `audit.from` in policies/changes.yml (when the repository adopted
  opsledger) is the baseline, as is the first commit.
- `ci-commit-beyond-evidence` — a commit of the CI identity (`records.committed_by`) on the
  first-parent line that does more than add evidence (run records, job logs, reviews,
  `records/`) or add and update incidents: the only commits that reach the protected branch
  without review are the CI's, so one that edits the pipelines, the tool, a policy or desired
  state is the deploy key misused. The forge's hook (scripts/forge/protect-main) refuses such
  a push where it can run; on github.com only this audit, run from a trusted checkout, sees it
  (the pushed commit could have changed the workflow that checks pushes).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field

from opsledger.approvals import Found, judge, quorum, standing
from opsledger.base import Base
from opsledger.changes import Change
from opsledger.content import Content, blob_id
from opsledger.decide import window_checks
from opsledger.errors import OpsledgerError, one_line
from opsledger.evidence import Added, Evidence, changes_on, judge_record, unparsed_records
from opsledger.gitlog import Commit
from opsledger.gitrepo import blob_contents, git_env
from opsledger.layout import (
    CHANGES,
    POLICIES_PREFIX,
    RECORDS,
    REVIEW,
    any_change_id_pattern,
    change_file,
    change_file_pattern,
    change_folder_name,
    policies_folder,
    policy_file,
)
from opsledger.policy.bundle import Policies
from opsledger.policy.waivers import load_waivers
from opsledger.project import Project
from opsledger.reach import PLAYBOOK_DIRS
from opsledger.records import STARTED_SUFFIX
from opsledger.reviews import load_review

SEVERITIES = ("low", "medium", "high", "critical")
# Paths whose edits change what Ansible runs (reach.py: the root is site.yml's basedir, and
# ansible.cfg points at plugins/).
DESIRED_STATE = (
    "inventories/",
    "roles/",
    "runbooks/",
    "site.yml",
    "ansible.cfg",
    "plugins/",
    *(f"{folder}/" for folder in PLAYBOOK_DIRS),
)
# Documentation beside desired state (role READMEs, generated from argument specs) changes
# nothing on a host: editing it is not a desired-state change.
DOCUMENTATION_SUFFIXES = (".md", ".rst")


def is_desired_state(path: str) -> bool:
    """True for a file whose edit changes what hosts run (see DESIRED_STATE)."""
    return path.startswith(DESIRED_STATE) and not path.endswith(DOCUMENTATION_SUFFIXES)


_REQUEST = change_file_pattern("CHG-[0-9]+", r"change\.yml")


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


_ANY = any_change_id_pattern()
_STATEMENT = change_file_pattern(_ANY, r"approvals/[\s\S]*")
_RECORD = change_file_pattern(_ANY, r"runs/[^/]+\.json")


def _evidence_kind(path: str) -> str:
    if _RECORD.fullmatch(path):
        return "run record"
    return "statement" if _STATEMENT.match(path) else ""


def edit_findings(history: list[Commit]) -> list[Finding]:
    """Statements and records are written once: changing or deleting one is a finding.

    Merges count for what they brought; an identical copy (a merge bringing the same file)
    is not an edit.
    """
    findings, original, reported = [], {}, set()
    for commit in history:
        for f in commit.files:
            kind = _evidence_kind(f.path)
            if not kind:
                continue
            first = original.get(f.path)
            if first is None:
                if f.status == "A":
                    original[f.path] = (f.blob, commit.sha)
                continue
            if f.status != "D" and f.blob == first[0]:
                continue
            verb = "deleted" if f.status == "D" else "modified"
            if (f.path, verb, f.blob) in reported:
                continue
            reported.add((f.path, verb, f.blob))
            where = "in a merge, " if commit.merge else ""
            findings.append(
                Finding(
                    "evidence-edited",
                    "critical",
                    f"{kind} {verb} {where}after its commit {first[1][:10]}, "
                    f"by {commit.author_email}",
                    f.path,
                    change_folder_name(f.path),
                    (commit.sha,),
                )
            )
    return findings


def _added_records(history: list[Commit]) -> list[tuple[Commit, str, str]]:
    """(commit, path, blob) for each final record as first added (later versions are edits).

    A write-ahead record (`runs/<stamp>.started.json`) is not judged: its final record is.
    """
    seen: dict[str, tuple[Commit, str, str]] = {}
    for commit in history:
        for f in commit.files:
            if f.path.endswith(STARTED_SUFFIX):
                continue
            if f.status == "A" and _RECORD.fullmatch(f.path) and f.path not in seen:
                seen[f.path] = (commit, f.path, f.blob)
    return list(seen.values())


def judge_records(
    project: Project, base: Base, history: list[Commit], statements: dict[str, list[Found]]
) -> list[Evidence]:
    """Every committed run record, judged as evidence (see evidence.py)."""
    added = _added_records(history)
    contents = blob_contents(project.root, unparsed_records(blob for _, _, blob in added))
    requests = changes_on(project, base, [change_folder_name(path) for _, path, _ in added])
    judged = []
    for commit, path, blob in added:
        entry = Added.of(commit, path, blob)
        change_id = change_folder_name(path)
        known = statements.get(change_id, [])
        request = requests.get(change_id, b"")
        judged.append(judge_record(project, base, entry, contents.get(blob, b""), known, request))
    return judged


def uncommitted_records(project: Project) -> list[Finding]:
    """Record files in the working tree that no commit carries, or that differ from it.

    Judged by key (layout.flat_form): a change moved between the layouts and not yet committed
    (`git mv` staged, or a plain `mv`) deletes each record at one path and adds the same bytes
    at the other, which is no edit of evidence; other bytes under the key are one edit.
    """
    out = subprocess.run(
        ["git", "-C", str(project.root), "status", "--porcelain=v2", "-z", "-uall",
         "--no-renames", "--", CHANGES],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        env=git_env(),
    ).stdout  # fmt: skip
    by_key: dict[str, list[tuple[str, str]]] = {}  # key -> [(XY, blob it holds or held)]
    ids: dict[str, str] = {}
    for entry in filter(None, out.split("\0")):
        status, stored, blob = _status_entry(project, entry)
        if match := _RECORD.fullmatch(stored):
            key = match.string  # its key (layout.flat_form), as every other finding names it
            by_key.setdefault(key, []).append((status, blob))
            ids[key] = match.group(1)
    findings = []
    for key, entries in by_key.items():
        change_id = ids[key]
        gone = {blob for status, blob in entries if "D" in status}
        came = {blob for status, blob in entries if status[0] == "A" or status == "??"}
        if gone and came:  # one path deleted, another added: moved between the layouts
            clean = all(status in ("D.", ".D", "A.", "??") for status, _ in entries)
            if clean and gone == came and len(entries) == 2:
                continue  # the same bytes: nothing changed
            entries = [(".M", "")]  # other bytes under the key: one edited record
        for status, _ in entries:
            untracked = status == "??"
            findings.append(
                Finding(
                    "evidence-forged" if untracked else "evidence-edited",
                    "critical",
                    "run record not committed: it is nobody's evidence (a record whose "
                    "commit failed is committed by the next opsledger command)"
                    if untracked
                    else "run record changed in the working tree",
                    key,
                    change_id,
                )
            )
    return findings


def _status_entry(project: Project, entry: str) -> tuple[str, str, str]:
    """(XY, stored path, blob) of one `git status --porcelain=v2 -z` entry.

    The blob is the one HEAD held for a deletion, the index's for an addition, the file's own
    bytes for an untracked file ("" when none applies).
    """
    if entry.startswith("? "):
        path = entry[2:]
        try:
            return "??", path, blob_id((project.root / path).read_bytes())
        except OSError:
            return "??", path, ""
    if entry.startswith("1 "):
        fields = entry.split(" ", 8)  # 1 XY sub mH mI mW hH hI path
        status, head, index = fields[1], fields[6], fields[7]
        return status, fields[8], head if "D" in status else index
    if entry.startswith("u "):
        return "UU", entry.split(" ", 10)[-1], ""
    return "", "", ""


def brought_at(base: Base, history: list[Commit]) -> dict[tuple[str, str], str]:
    """For each file version, the first-parent commit that brought it into the branch."""
    found: dict[tuple[str, str], str] = {}
    base.position.want(commit.sha for commit in history)  # one pass for them all
    for commit in history:
        if commit.sha in base.position:
            for f in commit.files:
                if f.status != "D":
                    found.setdefault((f.path, f.blob), commit.sha)
    return found


def statement_findings(
    found_versions: list[Found],
    change_id: str,
    requester: str,
    signed: bool,
    base: Base,
    brought: dict[tuple[str, str], str],
) -> list[Finding]:
    """Each statement version ever committed, judged by the policies of when it arrived."""
    findings = []
    for found in found_versions:
        policies = base.policies_at(brought.get((found.path, found.blob), base.sha))
        excluded = frozenset({policies.records_by} if policies.records_by else ())
        judged = judge(
            found, change_id, policies.people, signatures_required=signed, excluded=excluded
        )
        commits = (judged.commit,) if judged.commit else ()
        if not judged.valid:
            unsigned = judged.reasons == ["not signed, and signatures are required here"]
            if unsigned and judged.statement and judged.statement.decision == "requested":
                continue  # an unsigned request only fails its own change (decide says so)
            rule = "unsigned" if unsigned else "approval-by-stranger"
            findings.append(
                Finding(
                    rule,
                    "high",
                    f"{judged.person or '?'}'s statement does not count: "
                    + "; ".join(judged.reasons),
                    found.path,
                    change_id,
                    commits,
                )
            )
        elif (
            judged.statement
            and judged.statement.decision == "approved"
            and judged.person == requester
        ):
            findings.append(
                Finding(
                    "approval-by-requester",
                    "high",
                    f"{judged.person} requested the change and approved it",
                    found.path,
                    change_id,
                    commits,
                )
            )
    return findings


def run_findings(
    project: Project,
    change: Change,
    base: Base,
    evidence: list[Evidence],
    found_versions: list[Found],
    brought: dict[tuple[str, str], str],
) -> list[Finding]:
    """Each run that is evidence, replayed as decide saw it.

    The statements as they stood before its commit, the rule of the policies in effect then,
    the windows at its start.
    """
    findings = []
    for item in evidence:
        record = item.record
        assert record is not None
        if record.result == "canceled" and not record.changed_tasks:
            continue
        policies = base.policies_at(item.commit)
        signed = change.environment in policies.signature_environments
        ran_at = base.position[item.commit]
        earlier = [
            f
            for f in found_versions
            if base.position.get(brought.get((f.path, f.blob), ""), ran_at) < ran_at
        ]
        before = standing(
            project,
            change_id=change.id,
            requester=change.requested_by,
            content=Content(record.content_sha256, {}),
            policies=policies,
            signatures_required=signed,
            found=earlier,
        )
        risk = (record.decision or {}).get("risk", "low")
        rule = policies.rule_for(change.type, risk, change.environment)
        problems = []
        if not before.requester_proven:
            problems.append(before.requester_why)
        if rule is None:
            problems.append(f"no approval rule covers {change.type}/{risk}")
        else:
            owners = policies.runbook_teams.get(change.runbook, ())
            passed, why, _ = quorum(before, rule, policies, owners, change.runbook)
            if not passed:
                problems.append(why)
        if not (record.decision or {}).get("allowed"):
            problems.append("its decision was a denial")
        if problems:
            findings.append(
                Finding(
                    "applied-without-quorum",
                    "critical",
                    f"run at {record.started_at}: " + "; ".join(problems),
                    item.path,
                    change.id,
                    (item.commit,),
                )
            )
        started = dt.datetime.fromisoformat(record.started_at)
        for check in window_checks(change, policies, started):
            if not check.passed:
                rule_name = (
                    "applied-in-freeze" if check.rule == "freeze" else "applied-outside-window"
                )
                findings.append(
                    Finding(rule_name, "high", check.why, item.path, change.id, (item.commit,))
                )
    return findings


def policy_version_findings(
    base: Base, when: dict[str, dt.datetime], start: dt.datetime | None
) -> list[Finding]:
    """Versions of policies/ that never took effect: edited without an approved policy change.

    `when`: the commit time of each version's commit.
    """
    findings = []
    for version in base.versions:
        if version.accepted_at:
            continue
        if start and when.get(version.commit) and when[version.commit] < start:
            continue
        findings.append(
            Finding(
                "policy-change-unapproved",
                "critical",
                f"{POLICIES_PREFIX} edited without an approved policy change, so it has no "
                f"effect: {version.why}",
                POLICIES_PREFIX,
                commits=(version.commit,),
            )
        )
    return findings


def review_findings(
    project: Project, change: Change, history: list[Commit], now: dt.datetime
) -> list[Finding]:
    if change.type != "emergency":
        return []
    ran = [c for c in history for f in c.files if f.status == "A" and "/runs/" in f.path]
    if not ran:
        return []
    review = load_review(project, change.id)
    file = change_file(change.id, REVIEW)
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


def waiver_findings(project: Project, today: dt.date) -> list[Finding]:
    path = policies_folder(project.root, "waivers.yml")
    if not path.exists():
        return []
    findings = []
    try:
        waivers = load_waivers(path)
    except OpsledgerError as err:  # e.g. approved by its author: the register itself is wrong
        return [
            Finding("waiver-invalid", "high", p.message, policy_file("waivers.yml"))
            for p in err.problems
        ]
    for waiver in waivers:
        if waiver.expires < today:
            findings.append(
                Finding(
                    "waiver-expired",
                    "medium",
                    f"{waiver.id} ({', '.join(waiver.controls)}) expired on {waiver.expires}",
                    policy_file("waivers.yml"),
                )
            )
    return findings


# What the CI identity may commit past review: the same rules as scripts/forge/protect-main.
CI_MAY_ADD = (
    change_file_pattern(_ANY, r"runs/[0-9TZ]+(\.started)?\.json"),
    change_file_pattern(_ANY, r"runs/[0-9TZ]+\.log\.jsonl\.gz"),
    # a sharded apply's shard records (shards.py): working papers, never evidence themselves
    change_file_pattern(_ANY, r"shards/[0-9]{3}-[0-9]+of[0-9]+(\.started)?\.json"),
    change_file_pattern(_ANY, r"shards/[0-9]{3}-[0-9]+of[0-9]+\.log\.jsonl\.gz"),
    change_file_pattern(_ANY, r"review\.yml"),
    re.compile(rf"{RECORDS}/[a-z-]+/[^/]+\.json"),
)
CI_MAY_UPDATE = (re.compile(r"incidents/INC-[0-9]+/.+"),)


def _beyond_evidence(commit: Commit) -> tuple[str, str]:
    """What a CI commit does that is not evidence and the file (the first such), or ("", "")."""
    if commit.merge:
        return "made a merge", next((f.path for f in commit.files), "")
    for change in commit.files:
        if change.status == "A" and any(p.fullmatch(change.path) for p in CI_MAY_ADD):
            continue
        if change.status in ("A", "M") and any(p.fullmatch(change.path) for p in CI_MAY_UPDATE):
            continue
        verb = {"A": "added", "M": "modified", "D": "deleted"}.get(change.status, "changed")
        return f"{verb} {change.path}", change.path
    return "", ""


def ci_beyond_evidence(
    chain: list[Commit], policies: Policies, since: dt.datetime | None
) -> list[Finding]:
    """CI commits that do more than add evidence; `chain`: first-parent commits after the first.

    The first commit is the baseline (the repository as adopted), never judged.
    """
    ci = policies.people.get(policies.records_by or "")
    if ci is None:
        return []
    start = max(filter(None, (policies.audit_from, since)), default=None)
    findings = []
    for commit in chain:
        if commit.committer_email != ci.email or (start and commit.committed_at < start):
            continue
        what, path = _beyond_evidence(commit)
        if what:
            findings.append(
                Finding(
                    "ci-commit-beyond-evidence",
                    "high",
                    f"the CI identity {ci.email} committed past review and {what}, which is "
                    "not evidence: only run records, job logs, reviews, records/ and incidents "
                    "may reach the branch that way",
                    path,
                    commits=(commit.sha,),
                )
            )
    return findings


def unauthorized_findings(
    chain: list[Commit], policies: Policies, ran: set[str], since: dt.datetime | None
) -> list[Finding]:
    """Desired state changed without a change request, or with one that never ran.

    `chain`: the first-parent commits after the first (the baseline), oldest first.
    """
    findings = []
    start = max(filter(None, (policies.audit_from, since)), default=None)
    for commit in chain:
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


def unreadable(change_id: str, name: str, err: OpsledgerError, history: list[Commit]) -> Finding:
    """A committed request that does not read (a duplicate key, a symlink, bad YAML).

    Skipping it would hide the change from the audit, with its statements and runs unjudged.
    """
    return Finding(
        "change-unreadable",
        "high",
        "the request does not read, so its approvals and runs cannot be judged: "
        + one_line(str(err.problems[0]), 200),
        change_file(change_id, name),
        change_id,
        (history[-1].sha,) if history else (),
    )
