"""What a change is seen to reach (reach.py): shown to reviewers, never what an approval binds.

These were the tests of the old binding, when approvals signed this static reading; they now
pin the reading `ci pr` uses to tell which edited files a change request covers.
"""

from __future__ import annotations

import datetime as dt

import pytest

from opsledger.changes import new_change, validate_change
from opsledger.layout import flat_form
from opsledger.reach import reached_files

from .conftest import copy_project

START = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "p")


def content_of(project, targets="db", runbook="converge", params=None):
    change = new_change(
        project,
        title="Tune the database hosts",
        runbook=runbook,
        requested_by="alice",
        reason="Sorts spill to disk nightly",
        targets=targets,
        params={"tags": ["postgresql"]} if params is None else params,
        window_start=START,
        window_end=START + dt.timedelta(hours=1),
    )
    result = validate_change(project, change.id)
    return lambda: reached_files(project, result.change, result.runbook)


def append(project, path):
    with open(project.root / path, "a") as handle:
        handle.write("\n# edited\n")


@pytest.mark.parametrize(
    "path",
    [
        "changes/CHG-00xx/CHG-0001/change.yml",  # the fixture's change, in its block
        "runbooks/converge/runbook.yml",
        "site.yml",  # imported by the converge playbook
        "roles/postgresql/defaults/main.yml",
        "roles/os_baseline/templates/sshd_config.j2",
        "inventories/lab/hosts.yml",
        "inventories/lab/group_vars/all/network.yml",
        "inventories/lab/group_vars/db/postgresql.yml",
        "inventories/lab/host_vars/lab-db2.yml",
        # another group's and host's vars: templates can read them through hostvars
        "inventories/lab/group_vars/app/main.yml",
        "inventories/lab/host_vars/lab-db1.yml",
        "ansible.cfg",
        "plugins/modules/opsledger_packages.py",  # a module runbooks run on the targets
        "vault-passwords/lab",  # ansible.cfg's vault_identity_list
    ],
)
def test_edits_that_decide_what_runs_change_the_content(project, path):
    content = content_of(project)
    before = content()
    append(project, path)
    after = content()
    assert after.sha256 != before.sha256
    assert after.changed_since(before.files) == [flat_form(path)]  # keyed by its flat form


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "policies/sla.yml",
        "runbooks/os-patch/runbook.yml",
        "inventories/production/hosts.yml",
        "tests/infra/test_network.py",
    ],
)
def test_unrelated_edits_leave_the_content_alone(project, path):
    content = content_of(project)
    before = content()
    append(project, path)
    assert content().sha256 == before.sha256


def test_only_the_roles_the_run_can_reach_count(project):
    content = content_of(project, targets="lab-db1", runbook="pg-backup", params={})
    files = content().files
    assert "roles/postgresql/tasks/main.yml" in files
    assert not any(f.startswith("roles/network/") for f in files)
    assert "inventories/lab/host_vars/lab-db2.yml" in files  # the whole inventory
    assert "site.yml" not in files


def test_a_role_name_known_only_at_run_time_brings_in_every_role(project):
    tasks = project.root / "roles/postgresql/tasks/main.yml"
    tasks.write_text(
        tasks.read_text()
        + "\n- name: Include a role chosen at run time\n  ansible.builtin.include_role:\n"
        '    name: "{{ postgresql_extra_role }}"\n'
    )
    files = content_of(project, targets="lab-db1", runbook="pg-backup", params={})().files
    assert "roles/network/tasks/main.yml" in files


def test_files_git_ignores_are_machine_local_not_content(project):
    from opsledger.gitrepo import git

    git(project.root, "init", "-q")
    (project.root / ".gitignore").write_text("__pycache__/\n.opsledger/\n")
    cache = project.root / "roles/hardware/library/__pycache__/hw.cpython-311.pyc"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"bytecode")
    files = content_of(project)().files
    assert "roles/hardware/library/hardware_record.py" in files
    assert not any("__pycache__" in f for f in files)


def test_a_symlink_to_a_file_git_ignores_is_refused(project):
    from opsledger.errors import OpsledgerError
    from opsledger.gitrepo import git

    git(project.root, "init", "-q")
    (project.root / ".gitignore").write_text(".opsledger/\n")
    secret = project.root / ".opsledger/facts/lab-db1"
    secret.parent.mkdir(parents=True)
    secret.write_text("{}")
    (project.root / "roles/postgresql/vars/extra.yml").symlink_to(secret)
    with pytest.raises(OpsledgerError, match="git ignores"):
        content_of(project)()


TASK_INCLUDE_VARS = (
    "\n- name: Load extra settings\n  ansible.builtin.include_vars: ../../../notes/extra.yml\n"
)
TASK_LOOKUP = (
    "\n- name: Show a note\n  ansible.builtin.debug:\n"
    "    msg: \"{{ lookup('ansible.builtin.file', 'notes/extra.txt') }}\"\n"
)
TASK_TEMPLATE = (
    "\n- name: Write a note\n  ansible.builtin.template:\n"
    "    src: ../../../notes/extra.j2\n    dest: /tmp/extra\n    mode: '0644'\n"
)
TASK_COPY_FREE_FORM = (
    "\n- name: Copy a note\n  ansible.builtin.copy: src=../../notes/extra.txt dest=/tmp/x\n"
)


@pytest.mark.parametrize(
    ("edit", "referenced"),
    [
        (("site.yml", "", "  vars_files: [notes/extra.yml]\n"), "notes/extra.yml"),
        (("roles/postgresql/tasks/main.yml", TASK_INCLUDE_VARS, ""), "notes/extra.yml"),
        (("roles/postgresql/tasks/main.yml", TASK_LOOKUP, ""), "notes/extra.txt"),
        (("roles/postgresql/tasks/main.yml", TASK_TEMPLATE, ""), "notes/extra.j2"),
        (("roles/postgresql/tasks/main.yml", TASK_COPY_FREE_FORM, ""), "notes/extra.txt"),
    ],
)
def test_a_file_the_content_names_literally_is_content_wherever_it_lies(project, edit, referenced):
    """vars_files, include_vars, lookups and src: outside the usual folders still bind (#12)."""
    path, appended, after_first_play = edit
    notes = project.root / "notes"
    notes.mkdir()
    for name in ("extra.yml", "extra.txt", "extra.j2"):
        (notes / name).write_text("note: 1\n")
    target = project.root / path
    text = target.read_text() + appended
    if after_first_play:
        text = text.replace("  hosts: all\n", "  hosts: all\n" + after_first_play, 1)
    target.write_text(text)
    content = content_of(project)
    before = content()
    assert referenced in before.files
    append(project, referenced)
    assert content().changed_since(before.files) == [referenced]


@pytest.mark.parametrize(
    "task",
    [
        "  ansible.builtin.include_vars: /etc/hostname\n",
        "  ansible.builtin.include_vars:\n    file: ../../../../../../../../../etc/hostname\n",
        "  ansible.builtin.debug:\n    msg: \"{{ lookup('file', '/etc/hostname') }}\"\n",
    ],
)
def test_a_file_named_outside_the_repository_is_refused(project, task):
    from opsledger.errors import OpsledgerError

    tasks = project.root / "roles/postgresql/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Load from outside\n" + task)
    with pytest.raises(OpsledgerError, match="outside the repository"):
        content_of(project)()


def test_a_path_only_known_at_run_time_is_left_to_the_read_watch(project):
    tasks = project.root / "roles/postgresql/tasks/main.yml"
    tasks.write_text(
        tasks.read_text()
        + '\n- name: Load per site\n  ansible.builtin.include_vars: "{{ site_vars_file }}"\n'
    )
    assert "roles/postgresql/tasks/main.yml" in content_of(project)().files
