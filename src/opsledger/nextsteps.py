"""What to do next, and who can do it, after `change new`, `approve` and a denying `decide`.

A denial names the rule that failed; the person reading it still has to work out whom to ask
and when the change may run. These hints do that from the same policies decide uses: the
people whose approval would count, the next maintenance window, the command to type.
"""

from __future__ import annotations

import datetime as dt

from opsledger.approval_rules import approval_rule, missing
from opsledger.base import policies_for, resolve_base
from opsledger.changes import load_change
from opsledger.decide import Decision
from opsledger.errors import OpsledgerError
from opsledger.layout import REQUEST, stored_file
from opsledger.policy.bundle import Policies
from opsledger.policy.changes import is_policy_change
from opsledger.policy.windows import freezes_over, next_allowed, shown_opening, shown_time, zone_of
from opsledger.project import Project


def _counted(project: Project, change_id: str, policies: Policies) -> list[str]:
    """Who counts toward the change's approvals now (the same judgement as decide)."""
    from opsledger.approvals import not_counted
    from opsledger.history import judge_approvals

    change = load_change(project, change_id)
    try:
        revs = ["HEAD", resolve_base(project).sha]
    except OpsledgerError:
        revs = ["HEAD"]
    _, judged, rule = judge_approvals(project, change, policies, revs)
    return [p for p in judged.approvers if not not_counted(p, change.requested_by, rule, policies)]


def _approval_hint(project: Project, change_id: str, policies: Policies, counted: list[str]) -> str:
    gaps = missing(approval_rule(project, change_id, policies), policies, counted)
    if gaps.complete:
        return ""
    return "needs " + "; ".join(gaps.needs) + f" (opsledger approve {change_id} --as PERSON)"


def _next_start(policies: Policies, change, after: dt.datetime) -> dt.datetime | None:
    """The next start the change's environment allows for its window's length.

    Maintenance windows and freezes, as decide judges them; None when none fits.
    """
    windows = policies.windows.get(change.environment, [])
    if not windows:
        return None
    emergency = change.type == "emergency"
    return next_allowed(
        windows,
        policies.freezes,
        change.environment,
        after,
        change.window_end - change.window_start,
        bypass_windows=emergency and bool(policies.emergency.get("bypass_windows")),
        bypass_freezes=emergency and bool(policies.emergency.get("bypass_freezes")),
    )


def _window_hint(change_id: str, policies: Policies, project: Project, now: dt.datetime) -> str:
    change = load_change(project, change_id)
    request = stored_file(project.root, change_id, REQUEST)  # where the person edits it
    windows = policies.windows.get(change.environment, [])
    if now < change.window_start:
        return f"the change window opens at {shown_time(windows, change.window_start)}"
    if now > change.window_end:
        fit = _next_start(policies, change, now)
        when = f"next window opens {shown_opening(windows, fit)}; " if fit else ""
        return (
            f"the change window closed at {shown_time(windows, change.window_end)}: {when}"
            f"{change.requested_by} moves window in {request} and runs "
            f"opsledger change submit {change_id}"
        )
    return ""


def after_request(project: Project, change_id: str) -> list[str]:
    """Hints after `change new`: commit it, then the approvals it needs and from whom.

    Example:
        after_request(find_project(), "CHG-0001")
    """
    policies = policies_for(project)
    steps = [f"commit it with your edits: git add -A && git commit -m 'Request {change_id}'"]
    hint = _approval_hint(project, change_id, policies, [])
    steps.append(hint or f"pre-approved: opsledger apply {change_id} inside its window")
    return steps


def after_approval(project: Project, change_id: str, now: dt.datetime | None = None) -> list[str]:
    """Hints after `approve`: who else must approve, or that it can run (and when).

    Example:
        after_approval(find_project(), "CHG-0001")
    """
    policies = policies_for(project)
    if is_policy_change(change_id):
        return []
    counted = _counted(project, change_id, policies)
    hint = _approval_hint(project, change_id, policies, counted)
    if hint:
        return [hint]
    moment = now or dt.datetime.now(dt.UTC)
    window = _window_hint(change_id, policies, project, moment)
    return ["approvals complete: opsledger decide " + change_id] + ([window] if window else [])


def after_denial(project: Project, decision: Decision) -> list[str]:
    """One hint per failed rule of a denied decision, naming who can act and how.

    Example:
        after_denial(find_project(), decide(find_project(), "CHG-0001"))
    """
    policies = policies_for(project)
    failed = {c.rule for c in decision.checks if not c.passed}
    change_id = decision.change_id
    steps = []
    if "requester" in failed and not is_policy_change(change_id):
        change = load_change(project, change_id)
        key = " --key KEY" if change.environment in policies.signature_environments else ""
        steps.append(
            f"{change.requested_by} requests the current content"
            f"{' (signed: required in ' + change.environment + ')' if key else ''}: "
            f"opsledger change submit {change_id} --as {change.requested_by}{key}"
        )
    if "approvals" in failed:
        hint = _approval_hint(project, change_id, policies, list(decision.approvers))
        if "rejected by" in next(c.why for c in decision.checks if c.rule == "approvals"):
            hint = "a rejection stands until its author approves: ask them, or amend the change"
        if hint:
            steps.append(hint)
    if is_policy_change(change_id):
        return steps
    change = load_change(project, change_id)
    request = stored_file(project.root, change_id, REQUEST)  # where the person edits it
    windows = policies.windows.get(change.environment, [])
    if "maintenance window" in failed:
        fit = _next_start(policies, change, max(decision.at, change.window_start))
        if fit is not None:
            steps.append(
                f"next window opens {shown_opening(windows, fit)} "
                f"({fit.astimezone(zone_of(windows)).isoformat()}): "
                f"move the change window there in {request}, then "
                f"opsledger change submit {change_id}"
            )
    if "change window" in failed:
        hint = _window_hint(change_id, policies, project, decision.at)
        if hint:
            steps.append(hint)
    if "freeze" in failed:
        frozen = freezes_over(
            policies.freezes, change.environment, change.window_start, change.window_end
        ) or freezes_over(policies.freezes, change.environment, decision.at, decision.at)
        if frozen:
            last = max(frozen, key=lambda f: f.end)
            fit = _next_start(policies, change, last.end)
            after = ""
            if fit is not None:
                after = f"; the next window after it opens {shown_opening(windows, fit)}"
            steps.append(
                f"the freeze '{last.name}' ends {shown_time(windows, last.end)}{after}: move "
                f"the change window there in {request}, or make it an "
                "emergency change"
            )
        else:
            steps.append("wait for the freeze to end, or make it an emergency change")
    if "conflicts" in failed:
        steps.append("it runs once the changes it waits for have run or are withdrawn")
    if "promotion" in failed:
        steps.append("run the same runbook and params in staging first")
    return steps
