"""Deciding whether a change may run now: every rule evaluated, each with its reason.

The decision depends only on the repository (change, runbook, roles, inventory, policies,
approvals and their git history, run records) and the clock, which callers inject: the same
commit and time give the same decision locally and in CI. It records the policy bundle hash and
the change's content hash, so a run can be traced to exactly what was judged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from opsledger.approvals import approval_states
from opsledger.changes import Change, change_ids, validate_change
from opsledger.content import change_content
from opsledger.policy import Policies, load_policies
from opsledger.project import Project
from opsledger.records import change_runs
from opsledger.runbooks import Runbook
from opsledger.windows import covered

RISK_ORDER = {"low": 0, "medium": 1, "high": 2}


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
            "checks": [c.__dict__ for c in self.checks],
        }


def _approvals(
    project: Project,
    change: Change,
    runbook: Runbook,
    policies: Policies,
    content_sha: str,
    content,
    risk: str,
) -> tuple[Check, list[str]]:
    rule = policies.rule_for(change.type, risk, change.environment)
    if rule is None:
        return Check(
            "approvals",
            False,
            f"no approval rule covers a {change.type} change of "
            f"{risk} risk in {change.environment}",
        ), []
    signed = change.environment in policies.signature_environments
    states = approval_states(
        project, change_id=change.id, content=content, policies=policies, signatures_required=signed
    )
    notes, counted = [], []
    for state in states:
        if not state.valid:
            notes.append(
                f"{state.person}'s {state.decision or 'approval'} does not count: "
                + "; ".join(state.reasons)
            )
            continue
        if state.decision == "rejected":
            return Check("approvals", False, f"rejected by {state.person}"), []
        if policies.four_eyes and state.person == change.requested_by:
            notes.append(f"{state.person} requested the change and cannot approve it")
            continue
        teams = set(policies.people[state.person].teams)
        if rule.any_of_teams and not teams & set(rule.any_of_teams):
            notes.append(f"{state.person} is not in {' or '.join(rule.any_of_teams)}")
            continue
        counted.append(state.person)
    missing = []
    if len(counted) < rule.approvals:
        missing.append(f"{len(counted)} of {rule.approvals} approval(s)")
    member_teams = {t for p in counted for t in policies.people[p].teams}
    for team in rule.required_teams:
        if team not in member_teams:
            missing.append(f"no approver from {team}")
    owners = policies.runbook_teams.get(runbook.name, ())
    if rule.approvals and owners and not member_teams & set(owners):
        missing.append(f"no approver from {' or '.join(owners)} (owners of {runbook.name})")
    basis = f"rule '{rule.name}'" + (", signed" if signed else "")
    if missing:
        return Check("approvals", False, f"{basis}: " + "; ".join(missing + notes)), counted
    why = f"{basis}: " + (", ".join(counted) if counted else "pre-approved")
    if notes:
        why += " (" + "; ".join(notes) + ")"
    return Check("approvals", True, why), counted


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
        hit = [
            f
            for f in policies.freezes
            if change.environment in f.environments
            and (
                f.start <= now <= f.end
                or (change.window_start < f.end and f.start < change.window_end)
            )
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
    project: Project, change: Change, runbook: Runbook, policies: Policies, now: dt.datetime
) -> Check:
    promotion = policies.promotion
    if not (runbook.promotion and promotion and change.environment == promotion.get("to")):
        return Check("promotion", True, "not required")
    since = now - dt.timedelta(days=int(promotion["within_days"]))
    for record in reversed(change_runs(project)):
        if (
            record.environment == promotion["from"]
            and record.result == "success"
            and record.runbook == runbook.name
            and record.params == change.params
            and record.finished >= since
        ):
            return Check(
                "promotion",
                True,
                f"{promotion['from']} ran it successfully in {record.change} at "
                f"{record.finished_at}",
            )
    return Check(
        "promotion",
        False,
        f"no successful {promotion['from']} run of {runbook.name} "
        f"with the same params in the last {promotion['within_days']} days",
    )


def _conflicts(project: Project, change: Change, hosts: list[str]) -> Check:
    """Other changes not yet applied whose hosts and windows overlap this one's."""
    applied = {r.change for r in change_runs(project) if r.result == "success"}
    clashes = []
    for other_id in change_ids(project):
        if other_id == change.id or other_id in applied:
            continue
        other = validate_change(project, other_id)
        if other.change is None or other.change.environment != change.environment:
            continue
        overlap = set(other.hosts) & set(hosts)
        if (
            overlap
            and other.change.window_start < change.window_end
            and change.window_start < other.change.window_end
        ):
            clashes.append(f"{other_id} ({', '.join(sorted(overlap)[:3])})")
    return Check(
        "conflicts",
        not clashes,
        "overlaps " + ", ".join(clashes)
        if clashes
        else "no other pending change overlaps its hosts and window",
    )


def decide(project: Project, change_id: str, *, now: dt.datetime | None = None) -> Decision:
    """Evaluate every rule for a change at a moment (default: now).

    Raises OpsledgerError (exit 2) when the change itself is invalid; a denial is a Decision
    with allowed=False (the CLI exits 3).

    Example:
        decision = decide(find_project(), "CHG-0001", now=datetime.now(UTC))
        decision.allowed, [(c.rule, c.passed, c.why) for c in decision.checks]
    """
    from opsledger.changes import load_change
    from opsledger.runbooks import load_runbook

    moment = now or dt.datetime.now(dt.UTC)
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    hosts = validate_change(project, change_id).hosts
    policies, _ = load_policies(project)
    content = change_content(project, change, runbook, hosts)
    risk = max(runbook.risk, change.risk or "low", key=RISK_ORDER.__getitem__)
    checks = [
        Check(
            "requester",
            change.requested_by in policies.people,
            f"{change.requested_by} is in people.yml"
            if change.requested_by in policies.people
            else f"{change.requested_by} is not in people.yml",
        )
    ]
    approval, approvers = _approvals(
        project, change, runbook, policies, content.sha256, content, risk
    )
    checks.append(approval)
    checks += window_checks(change, policies, moment)
    checks.append(_promotion(project, change, runbook, policies, moment))
    checks.append(_conflicts(project, change, hosts))
    if change.type == "emergency":
        hours = policies.emergency.get("review_within_hours")
        checks.append(
            Check(
                "post-implementation review",
                True,
                f"due within {hours} h of the apply (changes/{change_id}/review.yml)",
            )
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
    )
