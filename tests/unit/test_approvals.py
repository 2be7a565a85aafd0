"""Approvals judged from real git history in a tmp repository, with real SSH signatures."""

from __future__ import annotations

import yaml

from opsledger.approvals import approval_states, approve
from opsledger.changes import validate_change
from opsledger.content import change_content
from opsledger.gitrepo import commit_paths, git
from opsledger.policy import load_policies


def current(project, change_id):
    result = validate_change(project, change_id)
    policies, _ = load_policies(project)
    return change_content(project, result.change, result.runbook, result.hosts), policies


def states(project, change_id, signatures_required=False):
    content, policies = current(project, change_id)
    return {
        s.person: s
        for s in approval_states(
            project,
            change_id=change_id,
            content=content,
            policies=policies,
            signatures_required=signatures_required,
        )
    }


def do_approve(project, change_id, person, key=None, decision="approved"):
    content, policies = current(project, change_id)
    return approve(
        project,
        change_id=change_id,
        person=person,
        content=content,
        policies=policies,
        signing_key=key,
        decision=decision,
    )


def test_an_approval_is_committed_as_its_person(repo):
    project, change_id, _ = repo
    result = do_approve(project, change_id, "bob")
    author = git(project.root, "log", "-1", "--format=%an <%ae>", result.commit).stdout.strip()
    assert author == "Bob Brandt <bob@example.org>"
    (state,) = states(project, change_id).values()
    assert state.valid and state.decision == "approved"


def test_signatures_are_checked_by_git_against_people_yml(repo):
    project, change_id, keys = repo
    do_approve(project, change_id, "carol", key=keys["carol"])
    do_approve(project, change_id, "bob")  # unsigned
    judged = states(project, change_id, signatures_required=True)
    assert judged["carol"].valid and judged["carol"].signed_by == "carol@example.org"
    assert not judged["bob"].valid
    assert "not signed with bob's key" in judged["bob"].reasons[0]


def test_a_signature_with_someone_elses_key_does_not_count(repo):
    project, change_id, keys = repo
    do_approve(project, change_id, "carol", key=keys["bob"])
    state = states(project, change_id, signatures_required=True)["carol"]
    assert not state.valid and "bob@example.org" in state.reasons[0]


def test_editing_the_change_after_approval_voids_it(repo):
    project, change_id, _ = repo
    do_approve(project, change_id, "bob")
    change_file = project.root / "changes" / change_id / "change.yml"
    change_file.write_text(change_file.read_text().replace("targets: db", "targets: all"))
    state = states(project, change_id)["bob"]
    assert not state.valid
    assert any(f"changes/{change_id}/change.yml" in r for r in state.reasons)


def test_editing_a_role_after_approval_voids_it(repo):
    project, change_id, _ = repo
    do_approve(project, change_id, "bob")
    with open(project.root / "roles/postgresql/defaults/main.yml", "a") as handle:
        handle.write("# tweak\n")
    assert "roles/postgresql/defaults/main.yml" in states(project, change_id)["bob"].reasons[0]


def test_an_approval_touched_by_someone_else_does_not_count(repo):
    project, change_id, _ = repo
    result = do_approve(project, change_id, "bob", decision="rejected")
    result.path.write_text(result.path.read_text().replace("rejected", "approved"))
    commit_paths(
        project.root, [result.path], "fix typo", name="Dave Diaz", email="dave@example.org"
    )
    state = states(project, change_id)["bob"]
    assert not state.valid and "by dave@example.org touched it" in state.reasons[0]


def test_an_uncommitted_approval_does_not_count(repo):
    project, change_id, _ = repo
    folder = project.root / "changes" / change_id / "approvals"
    folder.mkdir()
    content, _ = current(project, change_id)
    (folder / "carol.yml").write_text(
        yaml.safe_dump(
            {
                "change": change_id,
                "person": "carol",
                "decision": "approved",
                "content_sha256": content.sha256,
            }
        )
    )
    state = states(project, change_id)["carol"]
    assert not state.valid and state.reasons == ["not committed (or edited since its commit)"]
