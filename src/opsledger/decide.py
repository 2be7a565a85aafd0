"""Deciding whether a change may run now: every rule evaluated, each with its reason.

The decision depends only on the repository (change, runbook, roles, inventory, statements
and their git history, run records), the protected base it trusts (policies, people and keys,
evidence: see base.py) and the clock, which callers inject: the same commits and time give the
same decision locally and in CI. A change is judged by the policies in effect on the base,
never by policy edits it brings itself. The decision records the policy bundle hash and the
change's content hash, so a run can be traced to exactly what was judged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from opsledger.approvals import (
    Standing,
    change_standing,
    quorum,
    require_clean_worktree,
    standing,
)
from opsledger.base import Base, resolve_base
from opsledger.changes import Change, load_withdrawal, validate_change
from opsledger.content import Content, change_content
from opsledger.evidence import run_evidence
from opsledger.gitrepo import git, require_history
from opsledger.layout import POLICIES_PREFIX, REVIEW, shown_path, stored_file
from opsledger.localcache import ensure_commit_graph, schema_passes
from opsledger.policy.bundle import Policies, Rule
from opsledger.policy.changes import is_policy_change, load_policy_request, policy_content
from opsledger.policy.windows import covered, freezes_over
from opsledger.policycheck import require_policies
from opsledger.project import Project
from opsledger.records import Record, runs_of
from opsledger.runbooks import Runbook
from opsledger.slots import candidates
from opsledger.steady import steady_tree

RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
# Results that end a change's current content: it runs again only once amended (new approvals).
FINAL_FAILURES = ("failed", "rolled_back", "rollback_failed")


@dataclass(frozen=True)
class Check:
    rule: str
    passed: bool
    why: str


@dataclass
class Decision:
    change_id: str
    allowed: bool
    checks: list[Check]
    at: dt.datetime
    policy_sha256: str
    content_sha256: str
    risk: str
    priority: str
    approvers: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    base: str = ""  # the protected base commit the decision trusted
    content: Content | None = field(default=None, repr=False)  # the manifest that was judged
    head: str = ""  # HEAD when it was decided: statements, runs and withdrawals as of then

    def as_dict(self) -> dict:
        return {
            "change": self.change_id,
            "allowed": self.allowed,
            "at": self.at.isoformat(),
            "risk": self.risk,
            "priority": self.priority,
            "approvers": self.approvers,
            "hosts": self.hosts,
            "policy_sha256": self.policy_sha256,
            "content_sha256": self.content_sha256,
            "base": self.base,
            "checks": [c.__dict__ for c in self.checks],
        }


def _requester(requester: str, policies: Policies, judged: Standing) -> Check:
    """The requester is a listed person who provably requested exactly this content."""
    if requester not in policies.people or requester == policies.records_by:
        return Check("requester", False, f"{requester} is not a person of people.yml")
    return Check("requester", judged.requester_proven, judged.requester_why)


def _approvals(
    change: Change, runbook: Runbook, policies: Policies, judged: Standing, risk: str, signed: bool
) -> tuple[Check, list[str]]:
    rule = policies.rule_for(change.type, risk, change.environment)
    if rule is None:
        return Check(
            "approvals",
            False,
            f"no approval rule covers a {change.type} change of "
            f"{risk} risk in {change.environment}",
        ), []
    owners = policies.runbook_teams.get(runbook.name, ())
    passed, why, counted = quorum(judged, rule, policies, owners, runbook.name)
    basis = f"rule '{rule.name}'" + (", signed" if signed else "")
    return Check("approvals", passed, f"{basis}: {why}"), counted


def _basis(base: Base) -> Check:
    """Which policies judged the change: always passes; says so when base edits are ignored."""
    version = base.policy_version
    why = (
        f"policies in effect on {base.ref} ({base.sha[:10]}): the version of "
        f"{version.accepted_at[:10]}, {version.why}"
    )
    ignored = base.pending()
    if ignored:
        why += "; ignored, not approved: " + ", ".join(
            f"{POLICIES_PREFIX} of {v.commit[:10]} ({v.why})" for v in ignored
        )
    return Check("policies", True, why)


def window_checks(change: Change, policies: Policies, now: dt.datetime) -> list[Check]:
    """Maintenance window, change window and freeze, judged at `now` (apply time or audit)."""
    emergency = change.type == "emergency"
    checks = []
    if emergency and policies.emergency.get("bypass_windows"):
        checks.append(Check("maintenance window", True, "emergency change: windows bypassed"))
    else:
        windows = policies.windows.get(change.environment, [])
        fits = covered(windows, change.window_start, change.window_end)
        checks.append(
            Check(
                "maintenance window",
                fits,
                "the change window lies inside the maintenance windows"
                if fits
                else f"{change.window_start.isoformat()} - {change.window_end.isoformat()}"
                f" is outside every maintenance window of {change.environment}",
            )
        )
    inside = change.window_start <= now <= change.window_end
    checks.append(
        Check(
            "change window",
            inside,
            f"now ({now.isoformat()}) is inside the change's window"
            if inside
            else f"now ({now.isoformat()}) is outside the change's window "
            f"{change.window_start.isoformat()} - {change.window_end.isoformat()}",
        )
    )
    if emergency and policies.emergency.get("bypass_freezes"):
        checks.append(Check("freeze", True, "emergency change: freezes bypassed"))
    else:
        over = freezes_over(
            policies.freezes, change.environment, change.window_start, change.window_end
        )
        hit = [
            f
            for f in policies.freezes
            if f in over or (change.environment in f.environments and f.start <= now <= f.end)
        ]
        checks.append(
            Check(
                "freeze",
                not hit,
                f"in freeze '{hit[0].name}'"
                if hit
                else "no freeze covers now or the change window",
            )
        )
    return checks


def _promotion(
    project: Project,
    base: Base,
    change: Change,
    runbook: Runbook,
    policies: Policies,
    now: dt.datetime,
) -> Check:
    promotion = policies.promotion
    if not (runbook.promotion and promotion and change.environment == promotion.get("to")):
        return Check("promotion", True, "not required")
    since = now - dt.timedelta(days=int(promotion["within_days"]))

    def candidate(record) -> bool:
        return (
            record.environment == promotion["from"]
            and record.result == "success"
            and record.runbook == runbook.name
            and record.params == change.params
            and record.finished >= since
        )

    rejected = []
    for evidence in reversed(run_evidence(project, base, only=candidate)):
        record = evidence.record
        assert record is not None
        if evidence.trusted:
            return Check(
                "promotion",
                True,
                f"{promotion['from']} ran it successfully in {record.change} at "
                f"{record.finished_at} (committed by CI on {base.ref}, {evidence.commit[:10]})",
            )
        shown = shown_path(project.root, evidence.path)  # the key, named where it lies
        rejected.append(f"{shown} is no evidence: {'; '.join(evidence.reasons)}")
    return Check(
        "promotion",
        False,
        f"no successful {promotion['from']} run of {runbook.name} "
        f"with the same params in the last {promotion['within_days']} days on {base.ref}"
        + ("; " + "; ".join(rejected[:3]) if rejected else ""),
    )


def run_order(change: Change) -> tuple[bool, dt.datetime, int, str]:
    """Who goes first among changes overlapping on hosts and windows.

    Emergencies first, then the earlier window, then the older request (lower id): a fixed
    order both changes agree on, so two approved changes never wait for each other.
    """
    digits = "".join(ch for ch in change.id if ch.isdigit())
    return (change.type != "emergency", change.window_start, int(digits or 0), change.id)


def _still_runs(
    project: Project,
    other: Change,
    runbook: Runbook,
    hosts: list[str],
    trusted: Base,
    runs: list[Record],
    now: dt.datetime,
) -> str | None:
    """Why another change no longer holds its hosts; None while it can still run."""
    # Another change holds its hosts until the *base* says it is withdrawn: a withdrawal a
    # branch brings for someone else's change releases nothing before it is merged.
    mine = runs  # its committed final records (records.runs_of)
    if any(r.result == "success" for r in mine):
        return "applied"
    if now > other.window_end:
        return "its window has closed"
    if load_withdrawal(project, other.id, [trusted.sha]) is not None:
        return "withdrawn"
    content = change_content(project, other, runbook, hosts)
    ended = [r for r in mine if r.content_sha256 == content.sha256 and r.result in FINAL_FAILURES]
    if ended:
        return f"its run ended {ended[-1].result}"
    policies = trusted.policies
    if other.type != "emergency" or not policies.emergency.get("bypass_windows"):
        windows = policies.windows.get(other.environment, [])
        if not covered(windows, other.window_start, other.window_end):
            return "its window lies outside every maintenance window"
    if not _approved(project, other, runbook, trusted, content):
        return "not approved"
    return None


def _judge(
    project: Project, change: Change, runbook: Runbook, trusted: Base, content: Content
) -> tuple[list[Check], list[str], str]:
    """The requester and approvals checks of a change (CHG) for a content, under the base.

    Returns (checks, counted approvers, risk).
    """
    policies = trusted.policies
    risk = max(runbook.risk, change.risk or "low", key=RISK_ORDER.__getitem__)
    signed = change.environment in policies.signature_environments
    judged = change_standing(project, change, content, policies, ["HEAD", trusted.sha])
    approval, approvers = _approvals(change, runbook, policies, judged, risk, signed)
    return [_requester(change.requested_by, policies, judged), approval], approvers, risk


def _approved(
    project: Project, change: Change, runbook: Runbook, trusted: Base, content: Content
) -> bool:
    """Whether a change's request and approvals hold now (the same judgement decide gives)."""
    checks, _, _ = _judge(project, change, runbook, trusted, content)
    return all(c.passed for c in checks)


def _conflicts(
    project: Project, change: Change, hosts: list[str], trusted: Base, now: dt.datetime
) -> Check:
    """Other changes that can still run, overlapping this one's hosts and window, and go first.

    Only a change that can still run holds its hosts: approved, not withdrawn, not applied, its
    window still open, and not ended by a failure of its current content. Between two such
    changes `run_order` decides, so one runs and the other waits instead of both waiting for
    their whole windows. An emergency is never held back (the overlap is noted in the check).
    """
    # The other changes are only read here: inventories and runbooks load once for all of them
    # (steady.py), not once per overlapping change (3 ms each, the inventory's files walked).
    with steady_tree():
        return _conflicts_read(project, change, hosts, trusted, now)


def _conflicts_read(
    project: Project, change: Change, hosts: list[str], trusted: Base, now: dt.datetime
) -> Check:
    first, bypassed = [], []
    # Only changes whose request names this environment and an overlapping window can
    # conflict: those (and any that do not read plainly) are validated in full (slots.py),
    # and only their run records are read: the cost follows the overlap, not the history.
    overlapping = []
    for other_id in candidates(
        project, change.id, change.environment, change.window_start, change.window_end
    ):
        other = validate_change(project, other_id)
        if other.change is None or other.change.environment != change.environment:
            continue
        overlap = set(other.hosts) & set(hosts)
        if (
            overlap
            and other.change.window_start < change.window_end
            and change.window_start < other.change.window_end
        ):
            overlapping.append((other_id, other, overlap))
    # A change that goes after this one holds nothing against it, whether it can still run or
    # not: only those that go first (or, for an emergency, every one it overrides) are judged.
    # Judging costs a content manifest and approvals per change; judging the later ones too
    # made `apply --pending` of N overlapping changes quadratic (each decided against all).
    judged = [
        item
        for item in overlapping
        if change.type == "emergency" or run_order(item[1].change) < run_order(change)
    ]
    judged_ids = {other_id for other_id, _, _ in judged}
    after = sorted(other_id for other_id, _, _ in overlapping if other_id not in judged_ids)
    runs = runs_of(project, [other_id for other_id, _, _ in judged])
    for other_id, other, overlap in judged:
        assert other.change is not None and other.runbook is not None
        if _still_runs(
            project, other.change, other.runbook, other.hosts, trusted, runs[other_id], now
        ):
            continue
        shown = f"{other_id} ({', '.join(sorted(overlap)[:3])})"
        (bypassed if change.type == "emergency" else first).append(shown)
    if first:
        return Check(
            "conflicts",
            False,
            "waits for " + _listed(first) + ", which can still run and go first "
            "(emergencies, then the earlier window, then the older request)",
        )
    if bypassed:
        return Check(
            "conflicts",
            True,
            "emergency change: runs despite " + _listed(bypassed) + " (recorded)",
        )
    if after:
        return Check("conflicts", True, "goes before " + _listed(after) + ", should they run")
    return Check("conflicts", True, "no other change that can still run overlaps it")


_LISTED = 10  # changes a conflict message names (a decision is kept in every run record)


def _listed(ids: list[str]) -> str:
    """The first ids, and how many more: the message stays one line, whatever the overlap."""
    more = len(ids) - _LISTED
    return ", ".join(ids[:_LISTED]) + (f" and {more} more" if more > 0 else "")


def _withdrawn(project: Project, change: Change, trusted: Base) -> list[Check]:
    """A withdrawal anywhere in the history of HEAD or the base: deleting it revives nothing."""
    withdrawal = load_withdrawal(project, change.id, ["HEAD", trusted.sha])
    if withdrawal is None:
        return []
    return [
        Check(
            "withdrawn",
            False,
            f"withdrawn by {withdrawal.person} at {withdrawal.at}: {withdrawal.reason}",
        )
    ]


def decide(
    project: Project,
    change_id: str,
    *,
    now: dt.datetime | None = None,
    base: str | None = None,
) -> Decision:
    """Evaluate every rule for a change (CHG-<n> or POL-<n>) at a moment (default: now).

    `base` names the protected branch whose policies, keys and evidence are trusted (default
    $OPSLEDGER_BASE or main). Raises OpsledgerError (exit 2) when the change itself is invalid,
    there is no git history to read statements from, or the policies do not pass `policy
    check` — the base's policies in effect, which decide, and the working tree's, which apply
    and CI act under (locks, incidents); a denial is a Decision with allowed=False (the CLI
    exits 3).

    Example:
        decision = decide(find_project(), "CHG-0001", now=datetime.now(UTC), base="origin/main")
        decision.allowed, [(c.rule, c.passed, c.why) for c in decision.checks]
    """
    with schema_passes(project):  # files that passed their schema before: no jsonschema
        return _decide(project, change_id, now=now, base=base)


def _decide(
    project: Project, change_id: str, *, now: dt.datetime | None, base: str | None
) -> Decision:
    from opsledger.changes import load_change
    from opsledger.runbooks import load_runbook

    require_history(project.root, "decide")
    ensure_commit_graph(project.root)  # history walks by path prune with changed-path filters
    moment = now or dt.datetime.now(dt.UTC)
    head = _head(project)
    if is_policy_change(change_id):
        decided = _decide_policy_change(project, change_id, moment, base)
        decided.head = head
        return decided
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    hosts = validate_change(project, change_id).hosts
    require_clean_worktree(project, change_id)
    trusted = _trusted_base(project, base)
    policies = trusted.policies
    content = change_content(project, change, runbook, hosts)
    judged, approvers, risk = _judge(project, change, runbook, trusted, content)
    checks = [_basis(trusted), *judged]
    checks += window_checks(change, policies, moment)
    checks.append(_promotion(project, trusted, change, runbook, policies, moment))
    checks.append(_conflicts(project, change, hosts, trusted, moment))
    checks += _withdrawn(project, change, trusted)
    if change.type == "emergency":
        hours = policies.emergency.get("review_within_hours")
        review = stored_file(project.root, change_id, REVIEW)  # where the reviewer writes it
        checks.append(
            Check(
                "post-implementation review", True, f"due within {hours} h of the apply ({review})"
            ),
        )
    return Decision(
        change_id,
        all(c.passed for c in checks),
        checks,
        moment,
        policies.hash,
        content.sha256,
        risk,
        policies.priority(change.impact, change.urgency),
        approvers,
        hosts,
        trusted.sha,
        content,
        head,
    )


def _head(project: Project) -> str:
    proc = git(project.root, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def decide_again(
    project: Project,
    change_id: str,
    previous: Decision | None,
    *,
    now: dt.datetime | None = None,
    base: str | None = None,
) -> Decision:
    """`decide`, reusing an earlier decision of the same change when nothing it read moved.

    `apply --pending` decides each change once and hands the decision to apply, which judges
    again before and after taking the locks: deciding from scratch each time made a pending
    queue quadratic. The earlier decision stands only for the same change, HEAD (statements,
    run records, withdrawals and the request are read from git), protected base and content
    (hashed again here); then only what the clock changes is judged again at `now` — the
    windows, freezes and promotion's age limit (conflicts only ease with time: another
    change's window closes). Anything else, a denial, or no earlier decision is a full
    `decide`.

    Example:
        decision = decide_again(project, "CHG-0001", pending_decision, base="origin/main")
    """
    if (
        previous is None
        or not previous.allowed  # time only closes windows: a denial is judged afresh
        or previous.change_id != change_id
        or is_policy_change(change_id)
    ):
        return decide(project, change_id, now=now, base=base)
    require_history(project.root, "decide")
    trusted = _trusted_base(project, base)
    head = _head(project)
    if not (head and previous.head == head and previous.base == trusted.sha):
        return decide(project, change_id, now=now, base=base)
    from opsledger.changes import load_change
    from opsledger.runbooks import load_runbook

    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    require_clean_worktree(project, change_id)
    content = change_content(project, change, runbook, previous.hosts)
    if content.sha256 != previous.content_sha256:
        return decide(project, change_id, now=now, base=base)
    moment = now or dt.datetime.now(dt.UTC)
    policies = trusted.policies
    timed = {c.rule: c for c in window_checks(change, policies, moment)}
    timed["promotion"] = _promotion(project, trusted, change, runbook, policies, moment)
    checks = [timed.get(c.rule, c) for c in previous.checks]
    return Decision(
        change_id,
        all(c.passed for c in checks),
        checks,
        moment,
        previous.policy_sha256,
        content.sha256,
        previous.risk,
        previous.priority,
        previous.approvers,
        previous.hosts,
        trusted.sha,
        content,
        head,
    )


def _decide_policy_change(
    project: Project, change_id: str, moment: dt.datetime, base: str | None
) -> Decision:
    """A policy change: requested, then approved by the owners under the base's policies."""
    request = load_policy_request(project, change_id)
    require_clean_worktree(project, change_id)
    trusted = _trusted_base(project, base)
    policies = trusted.policies
    content = policy_content(project, change_id)
    rule = policies.policy_changes
    judged = standing(
        project,
        change_id=change_id,
        requester=request.requested_by,
        content=content,
        policies=policies,
        signatures_required=bool(rule and rule.signed),
        revs=["HEAD", trusted.sha],
    )
    checks = [_basis(trusted), _requester(request.requested_by, policies, judged)]
    approvers: list[str] = []
    if rule is None:
        checks.append(
            Check("approvals", True, "policy changes are not under change control on the base")
        )
    else:
        passed, why, approvers = quorum(
            judged, Rule("policy changes", (), (), None, rule.approvals, (), rule.owners), policies
        )
        basis = f"policy owners ({', '.join(rule.owners)})" + (", signed" if rule.signed else "")
        checks.append(Check("approvals", passed, f"{basis}: {why}"))
    return Decision(
        change_id,
        all(c.passed for c in checks),
        checks,
        moment,
        policies.hash,
        content.sha256,
        "high",
        "-",
        approvers,
        [],
        trusted.sha,
        content,
    )


def _trusted_base(project: Project, base: str | None) -> Base:
    """The base whose policies decide, failing closed on every policy that does not check.

    Nothing is decided on rules that do not pass `policy check`: neither the working tree's
    (apply and CI act under its locks and incident policies, and a pull request must not bring
    broken rules to the base) nor the base's version in effect, which decides (resolve_base
    refuses it when it does not check).
    """
    require_policies(project)
    return resolve_base(project, base)
