"""Targets are inventory names and the documented operators, nothing Ansible would evaluate
(#14.2): `@file` reads a controller file, `~(` and `db[5]` crash, so all are refused, exit 2."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.errors import OpsledgerError
from opsledger.hostpattern import pattern_problems
from opsledger.playbook_runs import run_playbook

from .badinput import assert_refused, run, tree_state
from .conftest import copy_project

CHANGE = textwrap.dedent(
    """\
    id: CHG-0007
    title: Restart chrony on the app hosts
    type: standard
    runbook: service-restart
    environment: lab
    targets: {targets}
    params: {{service: chrony}}
    impact: low
    urgency: low
    window: {{start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}}
    requested_by: alice
    reason: chrony lost its sources after the network change
    """
)
NAMES = ["all", "db", "app", "lab-db1", "lab-db2", "lab-app1", "lab-app2", "ungrouped"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("patterns") / "p")


def validate(project, targets: str):
    """`change validate` of a change with these targets; asserts it writes nothing."""
    folder = project.root / "changes" / "CHG-0007"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "change.yml").write_text(CHANGE.format(targets=targets))
    before = tree_state(project.root)
    result = run(project.root, ["change", "validate", "CHG-0007"])
    assert tree_state(project.root) == before
    return result


@pytest.mark.parametrize(
    "targets, message",
    [
        ("'db:@{secret}'", "'@{secret}' is not a host or group name"),
        ("'@{secret}'", "'@{secret}' is not a host or group name"),
        ("'~('", "'~(' is not a host or group name"),
        ("'db[5]'", "'db[5]' is not a host or group name"),
        ("'db[0:9]'", "is not a host or group name"),
        ("'lab-db1 , app'", "is not a host or group name"),
        ("'db,app:lab-db1'", "mixes ',' and ':'"),
        ("web", "unknown host or group 'web'"),
        ("'web*'", "'web*' matches no host or group"),
    ],
)
def test_patterns_ansible_would_evaluate_are_refused(project, tmp_path, targets, message):
    secret = tmp_path / "secret"
    secret.write_text("the-controller-secret\n")
    result = validate(project, targets.format(secret=secret))
    lines = assert_refused(result, expect=message.format(secret=secret))
    assert all("changes/CHG-0007/change.yml: targets: " in line for line in lines)
    assert "the-controller-secret" not in result.output


@pytest.mark.parametrize("targets", ["db", "'db,app'", "'all:!app'", "'lab-db*'", "'app,&all'"])
def test_names_and_documented_operators_pass(project, targets):
    assert validate(project, targets).exit_code == 0


def test_the_runner_refuses_a_limit_before_ansible_starts(tmp_path):
    """drift, drill and any future caller pass a limit straight to ansible-playbook."""
    project = copy_project(tmp_path / "p")
    inventory = tmp_path / "local.yml"
    inventory.write_text("all:\n  hosts:\n    here: {ansible_connection: local}\n")
    secret = tmp_path / "secret"
    secret.write_text("here\n")
    with pytest.raises(OpsledgerError, match="is not a host or group name") as err:
        run_playbook(
            project,
            playbook=project.root / "site.yml",
            inventory=inventory,
            limit=f"here:@{secret}",
            params={},
            check=True,
        )
    assert err.value.exit_code == 2


def test_drift_refuses_a_file_limit(repo):
    """drift reads and records against git history, so it runs in a repository (cli/history.py
    refuses it elsewhere before looking at its arguments)."""
    project, _, _ = repo
    result = run(project.root, ["drift", "--targets", "@/etc/hostname", "--no-record"])
    assert_refused(result, expect="'@/etc/hostname' is not a host or group name")


@given(st.text(max_size=40))
def test_any_text_is_a_clean_verdict(text):
    """Property: any pattern is judged without an exception; what passes has only names and
    the documented operators in it."""
    problems = pattern_problems(text, NAMES)
    assert all(isinstance(m, str) and isinstance(f, str) for m, f in problems)
    if not problems:
        assert set(text) <= set(
            "abcdefghijklmnopqrstuvwxyz0123456789-_.*?!&:,ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        )
        assert not any(c in text for c in "@~[] ")
