"""Policy changes are changes: requested, approved by the policy owners under the policy as it
was before, and only then in effect (real git repositories, real SSH keys)."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from opsledger.audit import audit_check
from opsledger.base import resolve_base
from opsledger.ci import pr_check
from opsledger.decide import decide
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.policy.changes import policy_content
from opsledger.signoff import approve_change, propose_policy_change, sign_off, submit_change

from .conftest import START

INSIDE = START + dt.timedelta(minutes=30)
PEOPLE = {
    "alice": "Alice Arnold",
    "bob": "Bob Brandt",
    "carol": "Carol Chen",
    "dave": "Dave Diaz",
}


def who(person):
    return {"name": PEOPLE[person], "email": f"{person}@example.org"}


def edit_policy(project, name, edit):
    path = project.root / "policies" / name
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def two_approvals(data):
    for rule in data["rules"]:
        if rule["name"] == "other normal changes need one approval":
            rule["approvals"] = 2


def propose(project, edits, person="alice", key=None):
    paths = [edit_policy(project, name, edit) for name, edit in edits]
    request, _ = propose_policy_change(
        project,
        title="Tighten the rules",
        requested_by=person,
        reason="Two pairs of eyes on every change",
        signing_key=key,
    )
    commit_paths(
        project.root, [*paths, request.file.parent], f"Propose {request.id}", **who(person)
    )
    return request.id


def failed(decision):
    return {c.rule: c.why for c in decision.checks if not c.passed}


def test_a_policy_edit_takes_effect_once_its_owners_approve_it(repo):
    """policies/ is part of every change's content, so the proposed edit voids CHG-0001's
    request and approval (they named the policies before it): alice re-submits and bob
    approves again. (This test once expected the approval to survive the edit; approvals now
    bind every tracked file but bookkeeping, content.py.) One approval is still enough until
    the owners approve the policy change; then two are needed."""
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    policy = propose(project, [("changes.yml", two_approvals)])
    why = failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "content changed since: policies/changes.yml" in why
    later = START + dt.timedelta(minutes=1)
    submit_change(project, change_id, person="alice", now=later)
    approve_change(project, change_id, person="bob", now=later)
    assert decide(project, change_id, now=INSIDE).allowed  # the edit is not in effect yet
    proposal = decide(project, policy)
    assert failed(proposal) == {"approvals": "policy owners (cab): 0 of 1 approval(s)"}
    approve_change(project, policy, person="carol")
    assert decide(project, policy).allowed
    assert "1 of 2 approval(s)" in failed(decide(project, change_id, now=INSIDE))["approvals"]
    version = resolve_base(project).policy_version
    assert version.change == policy and version.why == f"approved in {policy}"
    assert audit_check(project, now=INSIDE).findings == []


def test_a_policy_change_is_judged_by_the_people_before_it(repo):
    """dave puts himself into the CAB in the same change, then approves it: not under the old
    people.yml, so nothing takes effect and audit reports the commit. (CHG-0001 is re-submitted
    after the proposal: policies/ is part of its content, content.py.)"""
    project, change_id, _ = repo

    def dave_joins_the_cab(data):
        for person in data["people"]:
            if person["id"] == "dave":
                person["teams"].append("cab")

    policy = propose(project, [("people.yml", dave_joins_the_cab), ("changes.yml", two_approvals)])
    # approve refuses it; a statement made by hand must not count either
    sign_off(project, policy, person="dave")
    assert "dave is not in cab" in failed(decide(project, policy))["approvals"]
    assert resolve_base(project).policies.people["dave"].teams == ("netops", "oncall")
    submit_change(project, change_id, person="alice", now=START)
    approve_change(project, change_id, person="bob", now=START)
    assert decide(project, change_id, now=INSIDE).allowed  # one approval is still enough
    (finding,) = [f for f in audit_check(project, now=INSIDE).findings]
    assert finding.rule == "policy-change-unapproved" and "dave is not in cab" in finding.message


def test_the_requester_of_a_policy_change_cannot_approve_it(repo):
    project, _, _ = repo
    policy = propose(project, [("changes.yml", two_approvals)], person="carol")
    # approve refuses it; a statement made by hand must not count either
    sign_off(project, policy, person="carol")
    why = failed(decide(project, policy))["approvals"]
    assert "carol requested the change and cannot approve it" in why
    assert resolve_base(project).pending()


def test_an_edit_after_the_approval_is_not_in_effect(repo):
    project, change_id, _ = repo
    policy = propose(project, [("changes.yml", two_approvals)])
    approve_change(project, policy, person="carol")
    approved = resolve_base(project).policies.hash

    def quorum_zero(data):
        for rule in data["rules"]:
            rule["approvals"] = 0
            rule.pop("required_teams", None)

    path = edit_policy(project, "changes.yml", quorum_zero)
    commit_paths(project.root, [path], "Small fix", **who("alice"))
    base = resolve_base(project)
    assert base.policies.hash == approved
    assert [v.commit for v in base.pending()] == [
        git(project.root, "rev-parse", "HEAD").stdout.strip()
    ]
    checks = {c.rule: c.why for c in decide(project, change_id, now=INSIDE).checks}
    assert "ignored, not approved" in checks["policies"]


def test_signed_policy_changes_need_the_owners_signatures(repo):
    project, _, keys = repo

    def signed(data):
        data["policy_changes"]["signed"] = True

    first = propose(project, [("changes.yml", signed)])
    approve_change(project, first, person="carol")  # unsigned is still enough for this one
    assert resolve_base(project).policies.policy_changes.signed
    second = propose(project, [("changes.yml", two_approvals)], key=keys["alice"])
    with pytest.raises(OpsledgerError, match="must be signed for policy changes"):
        approve_change(project, second, person="carol")  # refused where it is typed
    sign_off(project, second, person="carol")  # written past approve, as by hand
    assert "signatures are required" in failed(decide(project, second))["approvals"]
    assert resolve_base(project).policy_version.change == first
    approve_change(project, second, person="carol", signing_key=keys["carol"])
    assert resolve_base(project).policy_version.change == second


def test_a_pull_request_changing_policies_needs_a_policy_change(repo):
    project, _, _ = repo
    git(project.root, "checkout", "-q", "-b", "feature")
    path = edit_policy(project, "changes.yml", two_approvals)
    commit_paths(project.root, [path], "Tighten", **who("alice"))
    uncovered = pr_check(project, base="main", with_plan=False)
    assert uncovered.uncovered == ["policies/changes.yml"]
    assert uncovered.exit_code == EXIT_INVALID
    request, _ = propose_policy_change(
        project, title="Tighten the rules", requested_by="alice", reason="Two pairs of eyes"
    )
    commit_paths(project.root, [request.file.parent], f"Propose {request.id}", **who("alice"))
    waiting = pr_check(project, base="main", with_plan=False)
    assert waiting.uncovered == [] and waiting.exit_code == EXIT_DENIED
    approve_change(project, request.id, person="carol")
    ready = pr_check(project, base="main", with_plan=False)
    assert ready.exit_code == 0, ready.markdown()


def test_a_symlink_in_policies_is_invalid(repo, tmp_path):
    project, _, _ = repo
    outside = tmp_path / "people.yml"
    outside.write_text((project.root / "policies" / "people.yml").read_text())
    (project.root / "policies" / "extra.yml").symlink_to(outside)
    with pytest.raises(OpsledgerError) as err:
        propose_policy_change(
            project, title="Add extra", requested_by="alice", reason="Extra policies here"
        )
    assert err.value.exit_code == EXIT_INVALID and "symlink" in str(err.value)
    assert not list((project.root / "changes").glob("POL-*"))
    with pytest.raises(OpsledgerError):
        policy_content(project, "POL-0001")


def test_editing_the_policy_docs_is_not_a_policy_change(repo):
    project, _, _ = repo
    docs = project.root / "policies" / "README.md"
    docs.write_text(docs.read_text() + "\nA note for new engineers.\n")
    commit_paths(project.root, [docs], "Docs", **who("alice"))
    base = resolve_base(project)
    assert base.pending() == [] and len(base.versions) == 1
    assert audit_check(project, now=INSIDE).findings == []
