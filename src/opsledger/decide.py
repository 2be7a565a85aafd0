"""Deciding whether a change may run now: every rule evaluated, each with its reason.

The decision depends only on the repository (change, runbook, roles, inventory, policies,
approvals and their git history, run records) and the clock, which callers inject: the same
commit and time give the same decision locally and in CI. It records the policy bundle hash and
the change's content hash, so a run can be traced to exactly what was judged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from opsledger.approvals import approval_states
from opsledger.changes import Change, change_ids, load_withdrawal, validate_change
from opsledger.content import Content, change_content
from opsledger.gitrepo import require_history
from opsledger.policy import Policies, Window, require_policies
from opsledger.project import Project
from opsledger.records import Record, change_runs
from opsledger.runbooks import Runbook

RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
# Results that end a change's current content: it runs again only once amended (new approvals).
FINAL_FAILURES = ("failed", "rolled_back", "rollback_failed")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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


def _in_window(window: Window, start: dt.datetime, end: dt.datetime) -> bool:
    """Whether [start, end] lies inside one occurrence of a recurring maintenance window."""
    zone = ZoneInfo(window.timezone)
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    day = local_start.date()
    if DAY_NAMES[day.weekday()] not in window.days:
        return False
    open_at = dt.datetime.combine(day, dt.time.fromisoformat(window.start), zone)
    if window.end == "24:00":
        close_at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    else:
        close_at = dt.datetime.combine(day, dt.time.fromisoformat(window.end), zone)
    return open_at <= local_start and local_end <= close_at


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
        fits = any(_in_window(w, change.window_start, change.window_end) for w in windows)
        checks.append(
            Check(
                "maintenance window",
                fits,
                "the change window lies inside a maintenance window"
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
    policies: Policies,
    runs: list[Record],
    now: dt.datetime,
) -> str | None:
    """Why another change no longer holds its hosts; None while it can still run."""
    if load_withdrawal(project, other.id) is not None:
        return "withdrawn"
    mine = [r for r in runs if r.change == other.id]
    if any(r.result == "success" for r in mine):
        return "applied"
    if now > other.window_end:
        return "its window has closed"
    content = change_content(project, other, runbook, hosts)
    ended = [r for r in mine if r.content_sha256 == content.sha256 and r.result in FINAL_FAILURES]
    if ended:
        return f"its run ended {ended[-1].result}"
    if other.type != "emergency" or not policies.emergency.get("bypass_windows"):
        windows = policies.windows.get(other.environment, [])
        if not any(_in_window(w, other.window_start, other.window_end) for w in windows):
            return "its window lies outside every maintenance window"
    if not _approved(project, other, runbook, policies, content):
        return "not approved"
    return None


def _approved(
    project: Project, change: Change, runbook: Runbook, policies: Policies, content: Content
) -> bool:
    """Whether a change's approvals hold now (the same judgement decide gives it)."""
    risk = max(runbook.risk, change.risk or "low", key=RISK_ORDER.__getitem__)
    approval, _ = _approvals(project, change, runbook, policies, content.sha256, content, risk)
    return approval.passed


def _conflicts(
    project: Project, change: Change, hosts: list[str], policies: Policies, now: dt.datetime
) -> Check:
    """Other changes that can still run, overlapping this one's hosts and window, and go first.

    Only a change that can still run holds its hosts: approved, not withdrawn, not applied, its
    window still open, and not ended by a failure of its current content. Between two such
    changes `run_order` decides, so one runs and the other waits instead of both waiting for
    their whole windows. An emergency is never held back (the overlap is noted in the check).
    """
    runs = change_runs(project)
    first, after, bypassed = [], [], []
    for other_id in change_ids(project):
        if other_id == change.id:
            continue
        other = validate_change(project, other_id)
        if other.change is None or other.change.environment != change.environment:
            continue
        overlap = set(other.hosts) & set(hosts)
        if not (
            overlap
            and other.change.window_start < change.window_end
            and change.window_start < other.change.window_end
        ):
            continue
        assert other.runbook is not None
        if _still_runs(project, other.change, other.runbook, other.hosts, policies, runs, now):
            continue
        shown = f"{other_id} ({', '.join(sorted(overlap)[:3])})"
        if change.type == "emergency":
            bypassed.append(shown)
        elif run_order(other.change) < run_order(change):
            first.append(shown)
        else:
            after.append(other_id)
    if first:
        return Check(
            "conflicts",
            False,
            "waits for " + ", ".join(first) + ", which can still run and go first "
            "(emergencies, then the earlier window, then the older request)",
        )
    if bypassed:
        return Check(
            "conflicts",
            True,
            "emergency change: runs despite " + ", ".join(bypassed) + " (recorded)",
        )
    if after:
        return Check("conflicts", True, "goes before " + ", ".join(after))
    return Check("conflicts", True, "no other change that can still run overlaps it")


def _withdrawn(project: Project, change: Change) -> list[Check]:
    withdrawal = load_withdrawal(project, change.id)
    if withdrawal is None:
        return []
    return [
        Check(
            "withdrawn",
            False,
            f"withdrawn by {withdrawal.person} at {withdrawal.at}: {withdrawal.reason}",
        )
    ]


def decide(project: Project, change_id: str, *, now: dt.datetime | None = None) -> Decision:
    """Evaluate every rule for a change at a moment (default: now).

    Raises OpsledgerError (exit 2) when the change itself is invalid, the policies do not pass
    `policy check` or there is no git history to read approvals from; a denial is a Decision
    with allowed=False (the CLI exits 3).

    Example:
        decision = decide(find_project(), "CHG-0001", now=datetime.now(UTC))
        decision.allowed, [(c.rule, c.passed, c.why) for c in decision.checks]
    """
    from opsledger.changes import load_change
    from opsledger.runbooks import load_runbook

    require_history(project.root, "decide")
    moment = now or dt.datetime.now(dt.UTC)
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    hosts = validate_change(project, change_id).hosts
    policies = require_policies(project)  # fail closed: no decision on rules that do not check
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
    checks.append(_conflicts(project, change, hosts, policies, moment))
    checks += _withdrawn(project, change)
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
