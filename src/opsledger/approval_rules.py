"""Which approval rule governs a change, and who could still satisfy it.

`decide` judges approvals against a rule; `approve`, `change new`, `change show` and the
next-step hints need the same rule *before* the decision, to refuse an approval that could
never count and to name the people who can give the ones still missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opsledger.approvals import not_counted
from opsledger.policy.bundle import Policies, Rule
from opsledger.project import Project

RISK_ORDER = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True)
class ApprovalRule:
    """The rule a change's approvals are judged by, with the owners of its runbook."""

    change_id: str
    requester: str
    rule: Rule | None  # None: no rule covers the change (or policy edits are not controlled)
    owners: tuple[str, ...] = ()
    owned: str = ""  # the runbook the owners own
    why_none: str = ""


@dataclass
class Missing:
    """What a change's approvals still lack, and who can give it."""

    needs: list[str] = field(default_factory=list)  # e.g. "1 more approval from cab: carol"

    @property
    def complete(self) -> bool:
        return not self.needs


def approval_rule(project: Project, change_id: str, policies: Policies) -> ApprovalRule:
    """The rule for a valid change (CHG or POL) under the given policies.

    Example:
        approval_rule(find_project(), "CHG-0001", base.policies).rule.name
    """
    from opsledger.changes import load_change
    from opsledger.policy.changes import is_policy_change, load_policy_request
    from opsledger.runbooks import load_runbook

    if is_policy_change(change_id):
        request = load_policy_request(project, change_id)
        spec = policies.policy_changes
        if spec is None:
            return ApprovalRule(
                change_id, request.requested_by, None, why_none="policy edits need no approval"
            )
        rule = Rule("policy changes", (), (), None, spec.approvals, (), spec.owners)
        return ApprovalRule(change_id, request.requested_by, rule)
    change = load_change(project, change_id)
    runbook = load_runbook(project, change.runbook)
    risk = max(runbook.risk, change.risk or "low", key=RISK_ORDER.__getitem__)
    rule = policies.rule_for(change.type, risk, change.environment)
    return ApprovalRule(
        change_id,
        change.requested_by,
        rule,
        policies.runbook_teams.get(runbook.name, ()),
        runbook.name,
        ""
        if rule
        else f"no approval rule covers a {change.type} change of {risk} risk in "
        f"{change.environment}",
    )


def eligible(governing: ApprovalRule, policies: Policies) -> list[str]:
    """Everyone whose approval would count under the rule (the requester excluded)."""
    return [
        person
        for person in sorted(policies.people)
        if not not_counted(person, governing.requester, governing.rule, policies)
    ]


def missing(governing: ApprovalRule, policies: Policies, counted: list[str]) -> Missing:
    """What the counted approvers still leave open, each need with the people who can fill it.

    Example:
        missing(rule, policies, ["bob"]).needs  # ["1 more approval from cab: carol"]
    """
    rule = governing.rule
    if rule is None:
        return Missing([governing.why_none] if governing.why_none else [])
    people = [p for p in eligible(governing, policies) if p not in counted]

    def named(who: list[str]) -> str:
        return ", ".join(who) if who else "nobody in people.yml (add someone)"

    needs = []
    teams = {t for p in counted for t in policies.people[p].teams}
    wanted = [t for t in rule.required_teams if t not in teams]
    if rule.approvals and governing.owners and not teams & set(governing.owners):
        wanted.append(" or ".join(governing.owners))
    for team in wanted:
        members = [p for p in people if set(policies.people[p].teams) & set(team.split(" or "))]
        needs.append(f"one approver from {team}: {named(members)}")
    more = rule.approvals - len(counted) - len(wanted)
    if more > 0:
        needs.append(f"{more} more approval(s) from: {named(people)}")
    return Missing(needs)
