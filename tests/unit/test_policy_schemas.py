"""Policies fail closed (#14.5): every policy file has a JSON Schema (`opsledger policy schema
NAME`), and decide, plan, apply and ci refuse to decide (exit 2, naming the problem) while
`policy check` fails — where lenient reading used to say ALLOWED."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from opsledger.gitrepo import git
from opsledger.policy.files import POLICY_FILES, data_problems
from opsledger.signoff import approve_change, propose_policy_change

from .badinput import assert_refused, run, tree_state
from .conftest import ALICE_ENV, REPO_ROOT, START

INSIDE = (START + dt.timedelta(minutes=30)).isoformat()


def edit(project, name, change):
    path = project.root / "policies" / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("name", list(POLICY_FILES))
def test_every_policy_file_has_a_published_schema_the_shipped_file_passes(name):
    result = run(REPO_ROOT, ["policy", "schema", name])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False  # unknown top-level keys are refused
    data = yaml.safe_load((REPO_ROOT / "policies" / POLICY_FILES[name]).read_text())
    assert data_problems(data, name, POLICY_FILES[name]) == []


def test_an_unknown_schema_name_is_a_one_line_error():
    assert_refused(run(REPO_ROOT, ["policy", "schema", "nope"]), expect="'nope' is not one of")


def test_a_window_crossing_midnight_is_valid_in_the_schema():
    """Its meaning (22:00 to 02:00 the next day) is #12's to give; the schema allows it."""
    data = yaml.safe_load((REPO_ROOT / "policies" / "windows.yml").read_text())
    data["environments"]["production"]["windows"][0].update(start="22:00", end="02:00")
    assert data_problems(data, "windows", "windows.yml") == []


def _misspelt_freeze_key(d):
    d["freezes"][0]["environment"] = d["freezes"][0].pop("environments")


def _team_without_members(d):
    d["teams"]["security"] = "Nobody yet"


FAIL_OPEN = [
    # (file, edit, what the error names) — each used to check clean and decide ALLOWED
    ("windows.yml", _misspelt_freeze_key, "freezes[0]: unknown field(s) environment"),
    ("windows.yml", lambda d: d["freezes"][0].update(environments=[]), "freezes[0].environments"),
    (
        "changes.yml",
        lambda d: d["rules"][4].update(approvals=False),
        "rules[4].approvals: must be integer, got a boolean",
    ),
    ("changes.yml", lambda d: d.update(four_eyes="false"), "four_eyes: must be boolean, got text"),
    ("changes.yml", lambda d: d.update(four_eye=False), "unknown field(s) four_eye"),
    (
        "changes.yml",
        lambda d: d["rules"][4].update(approvals=6),
        "rules[4].approvals: needs 6 approvals but only 5 people may approve",
    ),
    (
        "people.yml",
        lambda d: d["people"][1].update(id="bob\n"),
        "people[1].id: 'bob\\n' does not match",
    ),
    ("sla.yml", lambda d: d.update(extra={}), "unknown field(s) extra"),
    # a wrong shape under sla.yml once ended `policy check` in a TypeError (hypothesis found it)
    ("sla.yml", lambda d: d.update(priorities=1), "priorities: must be a mapping"),
    ("sla.yml", lambda d: d["priorities"].update(P1=3), "priorities.P1: must be a mapping"),
    (
        "locks.yml",
        lambda d: d["environments"]["lab"].update(backends=["machne"]),
        "environments.lab.backends[0]",
    ),
    (
        "locks.yml",
        lambda d: d["environments"].update(labb={"backends": ["machine"]}),
        "environments.labb: no inventory for environment 'labb'",
    ),
    ("locks.yml", lambda d: d.update(backend=["origin"]), "unknown field(s) backend"),
    ("incidents.yml", lambda d: d["detection"].update(enable=False), "unknown field(s) enable"),
]


@pytest.fixture
def allowed(repo):
    """CHG-0001 approved by bob: decide says ALLOWED inside its window."""
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    assert run(project.root, ["decide", change_id, "--at", INSIDE]).exit_code == 0
    # A freeze over the change's window, so a freeze that silently freezes nothing shows. A
    # policy edit decides only once approved as a policy change on the base (#12): adopt it on
    # a branch and judge CHG-0001 with that branch as the base.
    git(project.root, "checkout", "-q", "-b", "frozen")
    edit(
        project,
        "windows.yml",
        lambda d: d["freezes"][0].update(
            environments=["lab"], start="2026-12-01T00:00:00+00:00", end="2026-12-02T00:00:00+00:00"
        ),
    )
    proposal, _ = propose_policy_change(
        project, title="Freeze the lab", requested_by="alice", reason="Year-end freeze of the lab"
    )
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", f"Propose {proposal.id}", env=ALICE_ENV)
    approve_change(project, proposal.id, person="carol")
    frozen = ["decide", change_id, "--at", INSIDE, "--base", "frozen"]
    assert run(project.root, frozen).exit_code == 3
    git(project.root, "checkout", "-q", "main")
    return project, change_id


@pytest.mark.parametrize(("name", "change", "names"), FAIL_OPEN)
def test_policy_mistakes_are_refused_by_check_and_decide(allowed, name, change, names):
    project, change_id = allowed
    if name == "windows.yml":  # the freeze that must keep CHG-0001 out
        edit(
            project,
            name,
            lambda d: d["freezes"][0].update(
                environments=["lab"],
                start="2026-12-01T00:00:00+00:00",
                end="2026-12-02T00:00:00+00:00",
            ),
        )
    edit(project, name, change)
    lines = assert_refused(run(project.root, ["policy", "check"]), expect=names)
    assert all(f"policies/{name}" in line for line in lines if names in line)
    before = tree_state(project.root)
    decided = assert_refused(run(project.root, ["decide", change_id, "--at", INSIDE]), expect=names)
    assert decided[-1].startswith("error: ") and "policy check fails" in decided[-1]
    assert tree_state(project.root) == before


def test_a_required_team_without_members_is_refused(allowed):
    project, change_id = allowed
    edit(project, "people.yml", _team_without_members)
    edit(project, "changes.yml", lambda d: d["rules"][4].update(required_teams=["security"]))
    expect = "rules[4].required_teams: team 'security' has no members"
    assert_refused(run(project.root, ["policy", "check"]), expect=expect)
    assert_refused(run(project.root, ["decide", change_id, "--at", INSIDE]), expect=expect)


def test_plan_apply_and_ci_refuse_while_the_policy_check_fails(local_env_repo):
    """On a local host, so that nothing could reach the lab had the gate been missing."""
    project = local_env_repo
    args = [
        "change", "new", "--title", "Write a note on the local host", "--runbook", "note",
        "--env", "local", "--targets", "db", "--param", "note=hello", "--requested-by",
        "alice", "--reason", "Prove that broken policies decide nothing", "--start",
        START.isoformat(),
    ]  # fmt: skip
    assert run(project.root, args).exit_code == 0
    git(project.root, "checkout", "-q", "-b", "feature")
    edit(project, "windows.yml", _misspelt_freeze_key)
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "Request CHG-0001", env=ALICE_ENV)
    before = tree_state(project.root)
    expect = "freezes[0]: unknown field(s) environment"
    for args in (
        ["plan", "CHG-0001", "--at", INSIDE],
        ["apply", "CHG-0001", "--at", INSIDE],
        ["apply", "--pending", "--at", INSIDE],
        ["ci", "apply", "--env", "local", "--at", INSIDE],
    ):
        lines = assert_refused(run(project.root, args), expect=expect, progress=True)
        assert "policy check fails" in lines[-1]
    result = run(project.root, ["ci", "pr", "--base", "main", "--no-plan", "--at", INSIDE])
    assert result.exit_code == 2 and "Policies do not pass" in result.stdout
    assert "unknown field(s) environment" in result.stdout
    assert tree_state(project.root) == before
    assert not (project.root / ".opsledger" / "locks").exists()
