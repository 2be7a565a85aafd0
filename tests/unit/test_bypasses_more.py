"""A second adversarial review of change control (#12b): more ways a requester could run a
change the policy denies, each on a real git repository, each refused.

Every test plays alice, who can push any commit to her branch but not to main.
"""

from __future__ import annotations

import datetime as dt

import pytest

from opsledger.decide import decide
from opsledger.errors import EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file

from .conftest import START
from .test_bypasses import INSIDE, approve, as_env, commit_as, failed, request


def _commit_all(project, message, person="alice"):
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", message, env=as_env(person))


# --- A withdrawal cannot be undone by deleting it -------------------------------------------


def test_deleting_a_withdrawal_does_not_revive_the_change(repo):
    from opsledger.changes import withdraw_change

    project, change_id, _ = repo
    approve(project, change_id, "bob")
    assert decide(project, change_id, now=INSIDE).allowed
    withdraw_change(project, change_id, person="carol", reason="Superseded")
    assert "withdrawn" in failed(decide(project, change_id, now=INSIDE))
    git(project.root, "checkout", "-q", "-b", "revive")
    git(project.root, "rm", "-q", stored_file(project.root, change_id, "withdrawn.yml"))
    git(project.root, "commit", "-q", "-m", "Tidy up", env=as_env("alice"))
    assert "withdrawn" in failed(decide(project, change_id, now=INSIDE))


def test_a_withdrawal_a_branch_brings_for_anothers_change_releases_no_host(repo):
    project, change_id, _ = repo
    earlier = START - dt.timedelta(minutes=30)
    first = request(
        project,
        person="dave",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=earlier,
        window_end=earlier + dt.timedelta(hours=2),
    )
    approve(project, first, "carol")
    approve(project, change_id, "bob")
    assert "conflicts" in failed(decide(project, change_id, now=INSIDE))
    git(project.root, "checkout", "-q", "-b", "feature")
    fake = change_folder(project.root, first) / "withdrawn.yml"
    fake.write_text(f"---\nchange: {first}\nwithdrawn_by: dave\nwithdrawn_at: x\nreason: x\n")
    commit_as(project, [fake], f"Withdraw {first}", "alice")
    assert "conflicts" in failed(decide(project, change_id, now=INSIDE, base="main"))


def _no_roles(runbook):
    return runbook.read_text().replace("roles: [postgresql]", "roles: []")


# --- Static references content.py must follow ----------------------------------------------

_EXTRA_PLAY = (
    "---\n- name: Extra\n  hosts: all\n  tasks:\n    - name: Say\n"
    "      ansible.builtin.debug:\n        msg: approved\n"
)


@pytest.mark.parametrize(
    "line",
    [
        "- import_playbook: >-\n    ../../extra.yml\n",
        "- ansible.builtin.import_playbook:\n    ../../extra.yml\n",
        '- {import_playbook: "../../extra.yml"}\n',
    ],
)
def test_an_imported_playbook_written_any_way_is_content(repo, line):
    project, _, _ = repo
    root = project.root
    folder = root / "runbooks" / "extra"
    folder.mkdir()
    (folder / "runbook.yml").write_text(
        (root / "runbooks/pg-backup/runbook.yml")
        .read_text()
        .replace("roles: [postgresql]", "roles: []")
    )
    (folder / "playbook.yml").write_text("---\n" + line)
    (root / "extra.yml").write_text(_EXTRA_PLAY)
    _commit_all(project, "Add the extra runbook", "carol")
    later = START + dt.timedelta(hours=3)
    change_id = request(
        project,
        runbook="extra",
        targets="db",
        params={},
        window_start=later,
        window_end=later + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob")
    assert decide(project, change_id, now=later).allowed
    (root / "extra.yml").write_text(_EXTRA_PLAY.replace("approved", "not approved"))
    commit_as(project, [root / "extra.yml"], "Edit", "alice")
    assert "approvals" in failed(decide(project, change_id, now=later))


_COMMON = "---\n- name: Say hello\n  ansible.builtin.debug:\n    msg: hello\n"


@pytest.mark.parametrize(
    ("where", "task"),
    [
        ("roles/common", "  ansible.builtin.include_role: name=common\n"),
        ("roles/common", "  ansible.builtin.import_role: name=common tasks_from=main\n"),
        # Ansible also finds a role in the playbook's own folder (converge: next to site.yml)
        ("common", "  ansible.builtin.include_role:\n    name: common\n"),
    ],
)
def test_a_role_named_any_way_ansible_resolves_is_content(repo, where, task):
    project, _, _ = repo
    root = project.root
    common = root / where / "tasks" / "main.yml"
    common.parent.mkdir(parents=True)
    common.write_text(_COMMON)
    tasks = root / "roles/postgresql/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Include the common role\n" + task)
    commit_as(project, [common, tasks], "Add a common role", "carol")
    later = START + dt.timedelta(hours=3)
    runbook = "converge" if where == "common" else "pg-backup"
    change_id = request(
        project,
        runbook=runbook,
        targets="db",
        params={"tags": ["postgresql"]} if runbook == "converge" else {},
        window_start=later,
        window_end=later + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob")
    assert decide(project, change_id, now=later).allowed
    common.write_text(_COMMON.replace("hello", "something unapproved"))
    commit_as(project, [common], "Edit", "alice")
    assert "approvals" in failed(decide(project, change_id, now=later))


def test_a_playbook_imported_by_a_name_known_only_at_run_time_is_bound_like_any_file(repo):
    """Once refused (exit 2) because static reading could not bind what it imports; now the
    approval binds every file of the repository, so whichever playbook it imports is covered
    and editing one voids the approval."""
    project, _, _ = repo
    root = project.root
    folder = root / "runbooks" / "extra"
    folder.mkdir()
    (folder / "runbook.yml").write_text(
        (root / "runbooks/pg-backup/runbook.yml")
        .read_text()
        .replace("roles: [postgresql]", "roles: []")
    )
    (folder / "playbook.yml").write_text('---\n- import_playbook: "../../{{ which }}.yml"\n')
    _commit_all(project, "Add the extra runbook", "carol")
    change_id = request(project, runbook="extra", targets="db", params={})
    approve(project, change_id, "bob")
    assert "approvals" not in failed(decide(project, change_id, now=INSIDE))
    (root / "site.yml").write_text((root / "site.yml").read_text() + "\n# unapproved\n")
    commit_as(project, [root / "site.yml"], "Edit", "alice")
    assert "content changed" in failed(decide(project, change_id, now=INSIDE))["approvals"]


# --- Machine-local state is never content, and never carried by git -----------------------


@pytest.mark.parametrize(
    ("path", "text"),
    [
        # ansible.cfg: fact_caching_connection = .opsledger/facts (cached set_facts are vars)
        (".opsledger/facts/lab-db1", '{"postgresql_max_connections": 5000}'),
        # ansible-runner reads env/ of its private folder (apply: .opsledger/runs/<run>/)
        (".opsledger/runs/CHG-0001-20261201T203000Z/env/extravars", "---\nx: 1\n"),
    ],
)
def test_committed_machine_local_state_is_invalid(repo, path, text):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    file = project.root / path
    file.parent.mkdir(parents=True)
    file.write_text(text)
    git(project.root, "add", "-f", path)
    git(project.root, "commit", "-q", "-m", "Warm the cache", env=as_env("alice"))
    with pytest.raises(OpsledgerError) as err:
        decide(project, change_id, now=INSIDE)
    assert err.value.exit_code == EXIT_INVALID and path in str(err.value)
