"""Policies as data: the shipped ones are consistent; each kind of mistake is reported."""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.policy.bundle import load_policies, policy_hash
from opsledger.policycheck import policy_check
from opsledger.project import Project

from ..conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    for folder in ("policies", "inventories", "runbooks", "roles", "tests/infra"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    (root / "ansible.cfg").write_text("[defaults]\n")
    return Project(root)


def edit(project, name, change):
    path = project.root / "policies" / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def fields(project):
    return {(p.file.rsplit("/", 1)[-1], p.field) for p in policy_check(project).problems}


def test_shipped_policies_are_consistent(repo_project):
    result = policy_check(repo_project)
    assert result.problems == []
    policies, _ = load_policies(repo_project)
    assert {"dba", "netops", "sysadmin", "cab", "oncall", "auditor"} <= set(policies.teams)
    assert policies.priority("high", "high") == "P1"
    assert policies.priority("low", "low") == "P4"
    assert policies.rule_for("standard", "low", "lab").approvals == 0
    assert policies.rule_for("normal", "high", "lab").required_teams == ("cab",)
    assert policies.rule_for("normal", "low", "production").approvals == 2
    assert policies.rule_for("emergency", "medium", "production").any_of_teams == ("oncall", "cab")


def test_unknown_teams_and_bad_keys(project):
    def break_people(data):
        data["people"][0]["teams"].append("wizards")
        data["people"].append({"id": "alice", "name": "Again", "email": "a@x"})

    edit(project, "people.yml", break_people)
    # people[6]: the appended duplicate (after the ci person)
    assert {("people.yml", "people[0].teams"), ("people.yml", "people[6].id")} <= fields(project)
    # The file's schema is checked first; its semantic checks run once it passes.
    edit(project, "people.yml", lambda d: d["people"][1].update(signing_key="not a key"))
    assert ("people.yml", "people[1].signing_key") in fields(project)


def test_two_people_never_share_an_email_or_a_signing_key(project):
    """One commit or signature must name one person: else alice could request and, as her
    second id, approve."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk3pZ0p7VQ9d0o7gYxXb1b0k8bF0l3Jm9cP2q6hJx1T"

    def twins(data):
        alice = data["people"][0]
        data["people"].append(
            {"id": "alice2", "name": "Alice B", "email": alice["email"].upper(), "teams": ["dba"]}
        )
        data["people"][1]["signing_key"] = key
        data["people"][2]["signing_key"] = key + " carol@laptop"

    edit(project, "people.yml", twins)
    found = {p.field: p.message for p in policy_check(project).problems}
    assert "is also alice's" in found["people[6].email"]
    assert "signing key is also" in found["people[2].signing_key"]


def test_shadowed_and_missing_rules(project):
    def break_rules(data):
        data["rules"].insert(0, {"name": "catch all normal", "types": ["normal"], "approvals": 1})
        data["rules"] = [
            r for r in data["rules"] if r["name"] != "standard changes run pre-approved runbooks"
        ]

    edit(project, "changes.yml", break_rules)
    problems = policy_check(project).problems
    messages = [p.message for p in problems]
    assert any("'high risk goes to the CAB' never applies" in m for m in messages)
    assert any(m.startswith("no rule for a standard change") for m in messages)


def test_bad_timezones_times_and_freezes(project):
    def break_windows(data):
        data["environments"]["production"]["windows"][0]["timezone"] = "Mars/Olympus"
        data["freezes"][0]["end"] = "2026-01-01T00:00:00"
        del data["environments"]["lab"]

    edit(project, "windows.yml", break_windows)
    assert {
        ("windows.yml", "environments.production.windows[0].timezone"),
        ("windows.yml", "freezes[0].end"),
        ("windows.yml", "environments"),
    } <= fields(project)
    edit(
        project,
        "windows.yml",
        lambda d: d["environments"]["staging"]["windows"][0].update(end="25:00"),
    )
    assert ("windows.yml", "environments.staging.windows[0].end") in fields(project)


def test_incomplete_sla_and_unknown_environment_in_rules(project):
    edit(project, "sla.yml", lambda d: d["matrix"]["low"].pop("high"))
    edit(project, "changes.yml", lambda d: d["signatures"]["environments"].append("moon"))
    assert {("sla.yml", "matrix.low"), ("changes.yml", "signatures.environments")} <= fields(
        project
    )


def test_waiver_people_must_exist(project):
    edit(project, "waivers.yml", lambda d: d["waivers"][0].update(approved_by="zed"))
    assert ("waivers.yml", "W-0001.approved_by") in fields(project)


def test_hash_changes_with_any_policy_file(project):
    before = policy_hash(project)
    edit(project, "sla.yml", lambda d: d["priorities"]["P4"].update(resolution_hours=999))
    assert policy_hash(project) != before


def test_cli_exits_2_with_one_line_per_problem(project, monkeypatch):
    edit(project, "people.yml", lambda d: d["people"][0]["teams"].append("wizards"))
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["policy", "check"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {project.root}/policies/people.yml: people[0].teams: unknown team 'wizards'"
        " — use one of: sysadmin, dba, netops, cab, oncall, auditor"
    ]


def test_a_passing_check_is_reused_only_while_nothing_it_reads_moved(project, monkeypatch):
    """apply --pending decides many changes in one process: the check runs once while the
    files and the environment stay as they were, and again after any edit."""
    import opsledger.policycheck as policycheck
    from opsledger.errors import OpsledgerError

    calls = []
    real = policycheck.policy_check
    monkeypatch.setattr(policycheck, "policy_check", lambda p: calls.append(1) or real(p))
    monkeypatch.setattr(policycheck, "_PASSED", {})
    first = policycheck.require_policies(project)
    assert policycheck.require_policies(project) is first and len(calls) == 1
    monkeypatch.setenv("OPSLEDGER_TEST_SOMETHING", "1")  # notification URLs come from here
    policycheck.require_policies(project)
    assert len(calls) == 2
    hosts = project.root / "inventories" / "lab" / "hosts.yml"
    hosts.write_text(hosts.read_text() + "\n")  # an inventory edit: checked again
    policycheck.require_policies(project)
    assert len(calls) == 3
    edit(project, "windows.yml", lambda d: d["environments"].pop("lab"))
    with pytest.raises(OpsledgerError, match="policy check fails"):
        policycheck.require_policies(project)
