"""Statements judged from real git history in a tmp repository, with real SSH signatures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess

import pytest
import yaml

from opsledger.approvals import standing
from opsledger.base import resolve_base
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder, stored_file
from opsledger.signoff import approve_change, sign_off, subject, submit_change
from opsledger.statements import Statement, parse_statement, sign, verify

from .conftest import START


def states(project, change_id, signatures_required=False):
    return judged(project, change_id, signatures_required)[0]


def judged(project, change_id, signatures_required=False):
    requester, content = subject(project, change_id)
    base = resolve_base(project)
    result = standing(
        project,
        change_id=change_id,
        requester=requester,
        content=content,
        policies=base.policies,
        signatures_required=signatures_required,
        revs=["HEAD", base.sha],
    )
    return {s.person: s for s in result.states}, result


def test_an_approval_is_a_statement_committed_as_its_person(repo):
    project, change_id, _ = repo
    result = approve_change(project, change_id, person="bob", comment="fits in RAM")
    who = git(project.root, "log", "-1", "--format=%an <%ae> | %cn <%ce>", result.commit)
    assert who.stdout.strip() == "Bob Brandt <bob@example.org> | Bob Brandt <bob@example.org>"
    assert (
        result.path.parent
        == project.root / "changes" / "CHG-00xx" / change_id / "approvals" / "bob"
    )
    statement = parse_statement(result.path.read_bytes())
    assert (statement.change, statement.person, statement.decision) == (
        change_id,
        "bob",
        "approved",
    )
    assert statement.content_sha256 == result.content_sha256 and statement.comment == "fits in RAM"
    (state,) = states(project, change_id).values()
    assert state.valid and state.decision == "approved"


def test_signatures_are_checked_against_the_keys_of_people_yml(repo):
    project, change_id, keys = repo
    approve_change(project, change_id, person="carol", signing_key=keys["carol"])
    approve_change(project, change_id, person="bob")  # unsigned
    found, result = judged(project, change_id, signatures_required=True)
    assert found["carol"].valid and found["carol"].signed_by == "carol"
    assert "bob" not in found
    assert any("bob" in n and "not signed" in n for n in result.notes)


def test_a_signature_with_someone_elses_key_does_not_count(repo):
    project, change_id, keys = repo
    approve_change(project, change_id, person="carol", signing_key=keys["bob"])
    found, result = judged(project, change_id, signatures_required=True)
    assert "carol" not in found
    assert any("signature is not carol's" in n for n in result.notes)


def test_a_signed_statement_verifies_only_as_written(repo):
    project, change_id, keys = repo
    result = approve_change(project, change_id, person="bob", signing_key=keys["bob"])
    statement = parse_statement(result.path.read_bytes())
    bob = keys["bob"].with_suffix(".pub").read_text().strip()
    assert verify(statement, bob)
    for field, value in [
        ("decision", "rejected"),
        ("comment", "something else"),
        ("content_sha256", "0" * 64),
        ("change", "CHG-0002"),
        ("at", statement.at + dt.timedelta(seconds=1)),
    ]:
        assert not verify(dataclasses.replace(statement, **{field: value}), bob), field
    carol = keys["carol"].with_suffix(".pub").read_text().strip()
    assert not verify(statement, carol)


def test_a_git_commit_signature_is_not_a_statement_signature(repo, tmp_path):
    """Signatures are namespaced: a signature made for git (or anything else) never counts."""
    project, change_id, keys = repo
    _, content = subject(project, change_id)
    statement = Statement(change_id, "bob", "approved", content.sha256, "0" * 64, START)
    other = subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys["bob"]), "-n", "git"],
        input=statement.text().encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    bob = keys["bob"].with_suffix(".pub").read_text().strip()
    assert not verify(dataclasses.replace(statement, signature=other), bob)
    assert verify(
        dataclasses.replace(statement, signature=sign(statement.text(), keys["bob"])), bob
    )


def test_editing_the_change_after_approval_voids_it(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    change_file = change_folder(project.root, change_id, "change.yml")
    change_file.write_text(change_file.read_text().replace("targets: db", "targets: all"))
    state = states(project, change_id)["bob"]
    assert not state.valid
    # named where it lies (its block), not by the flat-form key of the content manifest
    assert any(f"{stored_file(project.root, change_id)}/change.yml" in r for r in state.reasons)


def test_editing_a_role_after_approval_voids_it(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    with open(project.root / "roles/postgresql/defaults/main.yml", "a") as handle:
        handle.write("# tweak\n")
    assert "roles/postgresql/defaults/main.yml" in states(project, change_id)["bob"].reasons[0]


def test_an_edited_statement_is_void_and_the_original_still_stands(repo):
    project, change_id, _ = repo
    result = approve_change(project, change_id, person="bob", decision="rejected")
    result.path.write_text(result.path.read_text().replace("rejected", "approved"))
    commit_paths(
        project.root, [result.path], "fix typo", name="Dave Diaz", email="dave@example.org"
    )
    found, outcome = judged(project, change_id)
    assert found["bob"].decision == "rejected" and outcome.rejected_by == ["bob"]
    assert any("dave@example.org" in n for n in outcome.notes)


def test_an_uncommitted_statement_does_not_count(repo):
    project, change_id, _ = repo
    sign_off(project, change_id, person="carol", commit=False)
    assert "carol" not in states(project, change_id)


def test_a_statement_copied_from_another_change_does_not_count(repo):
    project, change_id, _ = repo
    first = approve_change(project, change_id, person="bob")
    other = change_folder(project.root, "CHG-0002")
    shutil.copytree(change_folder(project.root, change_id), other)
    text = (other / "change.yml").read_text().replace(change_id, "CHG-0002")
    (other / "change.yml").write_text(text)
    commit_paths(project.root, [other], "Copy", name="Bob Brandt", email="bob@example.org")
    found, outcome = judged(project, "CHG-0002")
    assert "bob" not in found
    assert any(first.path.name in n and "names another" in n for n in outcome.notes)


def test_the_newest_statement_is_a_persons_standing(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="carol", now=START - dt.timedelta(hours=2))
    approve_change(
        project, change_id, person="carol", decision="rejected", now=START - dt.timedelta(hours=1)
    )
    assert judged(project, change_id)[1].rejected_by == ["carol"]
    approve_change(project, change_id, person="carol", now=START)
    found, outcome = judged(project, change_id)
    assert outcome.rejected_by == [] and found["carol"].valid


def test_the_requester_is_proven_by_their_request_statement(repo):
    project, change_id, _ = repo
    outcome = judged(project, change_id)[1]
    assert outcome.requester_proven and "committed by alice@example.org" in outcome.requester_why
    file = change_folder(project.root, change_id, "change.yml")
    file.write_text(file.read_text().replace("nightly", "every night"))
    outcome = judged(project, change_id)[1]
    assert not outcome.requester_proven and "change.yml" in outcome.requester_why
    submit_change(project, change_id, person="alice", now=dt.datetime.now(dt.UTC))
    assert judged(project, change_id)[1].requester_proven


def test_only_the_requester_submits_and_ci_signs_nothing(repo):
    project, change_id, _ = repo
    with pytest.raises(OpsledgerError, match="only the requester"):
        submit_change(project, change_id, person="bob")
    with pytest.raises(OpsledgerError, match="may sign statements"):
        approve_change(project, change_id, person="ci")


def test_statement_files_are_plain_yaml_with_the_signature_inside(repo):
    project, change_id, keys = repo
    result = approve_change(project, change_id, person="bob", signing_key=keys["bob"])
    data = yaml.safe_load(result.path.read_text())
    assert data["version"] == 1 and data["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    assert set(data) >= {"change", "person", "decision", "content_sha256", "policy_sha256", "at"}
    assert data["policy_sha256"] == resolve_base(project).policies.hash
