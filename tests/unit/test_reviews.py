"""Post-implementation reviews of emergency changes, and `change show`, on real git repos."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from click.testing import CliRunner

from opsledger.changes import load_change
from opsledger.cli import cli
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder
from opsledger.reviews import complete_review, load_review, open_review

from .conftest import START


def _emergency(project, change_id):
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text().replace("type: normal", "type: emergency"))
    commit_paths(project.root, [file], "Emergency", name="Alice Arnold", email="alice@example.org")
    return load_change(project, change_id)


def test_an_emergency_apply_opens_a_review_due_within_the_policy_hours(repo):
    project, change_id, _ = repo
    change = _emergency(project, change_id)
    path = open_review(project, change, START)
    data = yaml.safe_load(path.read_text())
    assert data["status"] == "due"
    assert dt.datetime.fromisoformat(data["due_by"]) == START + dt.timedelta(hours=72)
    assert open_review(project, change, START + dt.timedelta(hours=1)) is None  # only once
    review = load_review(project, change_id)
    assert review.late(START + dt.timedelta(hours=73))
    assert not review.late(START + dt.timedelta(hours=71))


def test_normal_changes_owe_no_review(repo):
    project, change_id, _ = repo
    assert open_review(project, load_change(project, change_id), START) is None
    with pytest.raises(OpsledgerError, match="no review is owed"):
        complete_review(
            project, change_id, person="carol", summary="x" * 20, cause="cause", actions=[]
        )


def test_completing_a_review_commits_it_as_the_reviewer(repo):
    project, change_id, _ = repo
    change = _emergency(project, change_id)
    path = open_review(project, change, START)
    commit_paths(project.root, [path], "Run", name="ci", email="ci@example.org")
    result = CliRunner().invoke(
        cli,
        [
            "change",
            "review",
            change_id,
            "--as",
            "carol",
            "--summary",
            "The restart cleared the connection leak",
            "--cause",
            "Leak in the reporting job",
            "--action",
            "Fix the job's pool",
        ],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == 0, result.output
    review = load_review(project, change_id)
    assert review.status == "done" and review.reviewed_by == "carol"
    author = git(project.root, "log", "-1", "--format=%ae %s").stdout.strip()
    assert author == f"carol@example.org Review {change_id}"
    data = yaml.safe_load(path.read_text())
    assert data["actions"] == ["Fix the job's pool"]
    with pytest.raises(OpsledgerError, match="already reviewed"):
        complete_review(
            project, change_id, person="bob", summary="x" * 20, cause="cause", actions=[]
        )


def test_the_requester_cannot_review_and_every_problem_is_listed(repo):
    project, change_id, _ = repo
    change = _emergency(project, change_id)
    open_review(project, change, START)
    with pytest.raises(OpsledgerError) as err:
        complete_review(project, change_id, person="alice", summary="short", cause="", actions=[])
    fields = [p.field for p in err.value.problems]
    assert fields == ["reviewed_by", "summary", "cause"]
    assert all(p.file.endswith("review.yml") for p in err.value.problems)


def test_change_show_lists_approvals_and_commits(repo):
    from opsledger.signoff import approve_change

    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    result = CliRunner().invoke(
        cli, ["change", "show", change_id], env={"OPSLEDGER_PROJECT": str(project.root)}
    )
    assert result.exit_code == 0, result.output
    assert f"bob: approved at {START.isoformat()} (valid)" in result.output
    assert "request: alice requested this content (committed by alice@example.org)" in (
        result.output
    )
    assert f"Request {change_id}" in result.output and f"Approve {change_id}" in result.output
    assert "runs:\n  none" in result.output
