"""apply's refusals and git plumbing, on real git repos; runs against the lab live in
tests/integration/test_workflow_apply.py."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsledger.apply import apply_change
from opsledger.cli import cli
from opsledger.errors import EXIT_DENIED, EXIT_INVALID, OpsledgerError
from opsledger.export import commit_content, exported
from opsledger.gitrepo import commit_paths, git, head
from opsledger.layout import change_folder
from opsledger.rollback import rollback_base
from opsledger.signoff import approve_change, request_change, sign_off, subject

from .conftest import START, record_run

INSIDE = START + dt.timedelta(minutes=30)


def _commits(project) -> int:
    return int(git(project.root, "rev-list", "--count", "HEAD").stdout)


def _nothing_ran(project, change_id, commits_before):
    assert not (change_folder(project.root, change_id) / "runs").exists()
    assert _commits(project) == commits_before
    locks = Path(os.environ["OPSLEDGER_LOCK_DIR"])  # the machine-wide lock folder
    assert not any(locks.rglob("*.json"))


def _apply(project, *args):
    return CliRunner().invoke(
        cli, ["apply", *args], env={"OPSLEDGER_PROJECT": str(project.root)}, catch_exceptions=False
    )


def test_unapproved_change_is_denied_with_exit_3_and_nothing_runs(repo):
    project, change_id, _ = repo
    before = _commits(project)
    result = _apply(project, change_id, "--at", INSIDE.isoformat())
    assert result.exit_code == EXIT_DENIED, result.output
    assert "denied by rule approvals" in result.output
    _nothing_ran(project, change_id, before)


def test_self_approved_change_is_denied(repo):
    project, change_id, _ = repo
    # approve refuses it; a statement made by hand must not count either
    sign_off(project, change_id, person="alice", now=START)
    before = _commits(project)
    with pytest.raises(OpsledgerError) as err:
        apply_change(project, change_id, now=INSIDE)
    assert err.value.exit_code == EXIT_DENIED
    assert "requested the change and cannot approve it" in str(err.value)
    _nothing_ran(project, change_id, before)


def test_approved_change_outside_its_window_is_denied_at_apply_time(repo):
    project, change_id, _ = repo
    approve_change(project, change_id, person="bob", now=START)
    before = _commits(project)
    later = START + dt.timedelta(hours=3)
    result = _apply(project, change_id, "--at", later.isoformat())
    assert result.exit_code == EXIT_DENIED
    assert "denied by rule change window" in result.output
    _nothing_ran(project, change_id, before)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("title: [unclosed\n", "invalid YAML"),
        (None, "surprise"),
        (None, "no runbook named"),
        (None, "targets"),
    ],
    ids=["bad-yaml", "unknown-field", "unknown-runbook", "empty-targets"],
)
def test_malformed_change_exits_2_and_nothing_runs(repo, edit, message):
    project, change_id, _ = repo
    file = change_folder(project.root, change_id) / "change.yml"
    text = file.read_text()
    if edit is not None:
        text = edit
    elif message == "surprise":
        text += "surprise: 1\n"
    elif message == "no runbook named":
        text = text.replace("runbook: converge", "runbook: reboot-everything")
    else:
        text = text.replace("targets: db", "targets: ''")
    file.write_text(text)
    commit_paths(project.root, [file], "Break it", name="Alice Arnold", email="alice@example.org")
    before = _commits(project)
    result = _apply(project, change_id, "--at", INSIDE.isoformat())
    assert result.exit_code == EXIT_INVALID, result.output
    assert message in result.output
    assert "changes/" in result.output  # names the file
    _nothing_ran(project, change_id, before)


def test_apply_needs_an_id_or_pending(repo):
    project, change_id, _ = repo
    assert _apply(project).exit_code == EXIT_INVALID
    assert _apply(project, change_id, "--pending").exit_code == EXIT_INVALID


def test_rollback_base_is_the_commit_before_the_change(repo):
    project, change_id, _ = repo
    first = git(project.root, "rev-list", "--max-parents=0", "HEAD").stdout.strip()
    approve_change(project, change_id, person="bob", now=START)
    assert rollback_base(project, change_id) == first


def test_rollback_base_after_a_merge_is_the_branch_before_the_merge(repo):
    project, change_id, _ = repo
    root = project.root
    text = (change_folder(root, change_id) / "change.yml").read_text()
    git(root, "checkout", "-q", "-b", "feature")
    params = root / "inventories/lab/group_vars/db/postgresql.yml"
    params.write_text(params.read_text().replace("work_mem: 8MB", "work_mem: 16MB"))
    (root / "changes/CHG-0002").mkdir()
    (root / "changes/CHG-0002/change.yml").write_text(text.replace(change_id, "CHG-0002"))
    commit_paths(
        root,
        [params, root / "changes/CHG-0002/change.yml"],
        "Request CHG-0002",
        name="Alice Arnold",
        email="alice@example.org",
    )
    git(root, "checkout", "-q", "main")
    main_before = head(root)
    git(root, "merge", "-q", "--no-ff", "-m", "Merge feature", "feature")
    assert rollback_base(project, "CHG-0002") == main_before


def test_rollback_returns_to_the_last_verified_state_not_the_requesters_own_commit(repo):
    """Hostile review F1: after a fast-forward merge the commit before the change's is the
    requester's own — here one that plants an edit and a later commit that reverts it while
    adding the change, so reviewers saw a clean tree. The rollback base is the state the
    environment last ran and verified (an evidence record), never that planted commit."""
    project, change_id, _ = repo
    root = project.root
    approve_change(project, change_id, person="bob", now=START)
    verified = head(root)
    record_run(  # CI ran CHG-0001 from `verified` and verified it
        project,
        change_id,
        START,
        params={"tags": ["postgresql"]},
        targets="db",
        git_commit=verified,
        content_sha256=subject(project, change_id)[1].sha256,
    )
    params = root / "inventories/lab/group_vars/db/postgresql.yml"
    clean = params.read_text()
    alice = {"name": "Alice Arnold", "email": "alice@example.org"}
    params.write_text(clean.replace("work_mem: 8MB", "work_mem: 999MB"))
    commit_paths(root, [params], "Tune work_mem", **alice)
    planted = head(root)
    params.write_text(clean)
    change, _ = request_change(
        project,
        title="Restart nothing much",
        runbook="converge",
        requested_by="alice",
        reason="Reviewers see a clean tree",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(root, [params, change.file.parent], f"Request {change.id}", **alice)
    assert rollback_base(project, change.id) == planted  # the old answer: unapproved state
    assert rollback_base(project, change.id, "lab") == verified
    # a record that is no evidence (not the content CHG-0001 requested) names no state
    record_run(project, change_id, START + dt.timedelta(hours=1), git_commit=planted)
    assert rollback_base(project, change.id, "lab") == verified
    assert rollback_base(project, change.id, "staging") == planted  # no run there yet


def test_uncommitted_change_has_no_rollback_base(repo):
    project, _, _ = repo
    with pytest.raises(OpsledgerError, match="not committed"):
        rollback_base(project, "CHG-0099")


def test_the_export_of_an_earlier_commit_is_removed_afterwards(repo):
    project, change_id, _ = repo
    base = rollback_base(project, change_id)
    (project.state_dir / "lab").mkdir(parents=True)
    (project.state_dir / "lab" / "id_ed25519").write_text("key")
    (project.root / ".gitignore").write_text(".opsledger/\n")
    with exported(project, commit_content(project, base, change_id)) as before:
        assert (before.root / "site.yml").read_bytes() == git(
            project.root, "show", f"{base}:site.yml"
        ).stdout.encode()
        assert not (change_folder(before.root, change_id)).exists()
        assert (before.root / ".opsledger/lab/id_ed25519").read_text() == "key"
        tree = before.root
    assert not tree.exists()


PROBE_RUNBOOK = """\
---
description: Read a settings file and print it (a test runbook for apply's read watch).
playbook: playbook.yml
parameters: {type: object, additionalProperties: false, properties: {}}
change_types: [standard]
standard: true
risk: low
check_mode: false
roles: []
verification: {suites: [os_baseline]}
rollback: null
serial: 1
max_fail_percentage: 0
timeout: 300
promotion: false
"""

PROBE_PLAYBOOK = """\
---
- name: Read settings chosen at run time
  hosts: all
  gather_facts: false
  serial: 1
  max_fail_percentage: 0
  tasks:
    - name: Load the settings file
      ansible.builtin.include_vars:
        file: "{{ playbook_dir }}/{{ probe_settings }}"
    - name: Show the setting
      ansible.builtin.debug:
        msg: "{{ probe_value }}"
"""


def _probe(repo, settings: str, tasks: str = ""):
    """A standard change running a playbook on a local-connection host that loads a settings
    file whose path is only known at run time (`probe_settings`, set in the inventory)."""
    import sys

    from opsledger.signoff import request_change

    project, _, _ = repo
    root = project.root
    (root / ".gitignore").write_text(".opsledger/\n__pycache__/\n")
    folder = root / "runbooks" / "probe"
    folder.mkdir()
    (folder / "runbook.yml").write_text(PROBE_RUNBOOK)
    (folder / "playbook.yml").write_text(PROBE_PLAYBOOK + tasks)
    (folder / "settings.yml").write_text("---\nprobe_value: approved\n")
    (root / "records").mkdir()  # bookkeeping: tracked, yet no approval binds it
    (root / "records" / "settings.yml").write_text("---\nprobe_value: not approved\n")
    hosts = root / "inventories/lab/hosts.yml"
    hosts.write_text(
        hosts.read_text()
        + "    local:\n      hosts:\n        lab-local:\n"
        + "          ansible_connection: local\n"
        + f"          ansible_python_interpreter: {sys.executable}\n"
        + f"          probe_settings: {settings}\n"
    )
    git(root, "add", "-A")
    git(
        root,
        "-c",
        "user.name=Carol Chen",
        "-c",
        "user.email=carol@example.org",
        "commit",
        "-qm",
        "Probe",
    )
    change, _ = request_change(
        project,
        title="Probe the settings",
        runbook="probe",
        change_type="standard",
        requested_by="alice",
        reason="Show which settings a run reads",
        targets="lab-local",
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(
        root, [change.file.parent], "Request", name="Alice Arnold", email="alice@example.org"
    )
    return project, change.id


def test_a_run_reading_only_the_approved_content_succeeds(repo):
    project, change_id = _probe(repo, "settings.yml")
    result = apply_change(project, change_id, now=INSIDE, skip_verify=True)
    assert result.result == "success", result.record.verification


def test_a_run_that_reads_outside_the_approved_content_is_not_a_success(repo):
    """The path is computed at run time and leads into bookkeeping (records/), which git tracks
    but no approval binds. The run starts from an export of the approved content (export.py), in
    which bookkeeping does not exist: Ansible cannot load it, and the run fails."""
    project, change_id = _probe(repo, "../../records/settings.yml")
    result = apply_change(project, change_id, now=INSIDE, skip_verify=True)
    assert result.result == "failed"
    (failure,) = result.run.hosts["lab-local"].failures
    assert failure.startswith("Load the settings file: "), failure
    assert git(project.root, "status", "--porcelain").stdout == ""  # the record is committed


# Reads no Python `open` in Ansible sees (the read watch's blind spots before the export):
# a pipe lookup, a command on the controller, a shell started from a lookup with cwd tricks.
BLIND_READS = {
    "pipe-lookup": """\
    - name: Read bookkeeping through a pipe lookup
      ansible.builtin.debug:
        msg: "{{ lookup('ansible.builtin.pipe', 'cat ' ~ playbook_dir ~ '/' ~ probe_bookkeeping) }}"
      vars: {probe_bookkeeping: ../../records/settings.yml}
""",
    "controller-command": """\
    - name: Read bookkeeping with a command on the controller
      ansible.builtin.command:
        cmd: cat ../../records/settings.yml
        chdir: "{{ playbook_dir }}"
      vars: {ansible_become: false}  # the lab's group_vars become root; no sudo here
      changed_when: false
""",
    "other-change": """\
    - name: Read another change's folder with a shell on the controller
      ansible.builtin.shell:
        cmd: cat ../../changes/CHG-0001/change.yml ../../changes/CHG-0001/approvals/*/*
        chdir: "{{ playbook_dir }}"
      vars: {ansible_become: false}  # the lab's group_vars become root; no sudo here
      changed_when: false
""",
}


@pytest.mark.parametrize("how", sorted(BLIND_READS))
def test_bookkeeping_is_not_there_for_a_run_to_read_however_it_reads(repo, how):
    """Before runs started from an export, each of these read bookkeeping unseen and the run
    was recorded a success."""
    project, change_id = _probe(repo, "settings.yml", BLIND_READS[how])
    result = apply_change(project, change_id, now=INSIDE, skip_verify=True)
    assert result.result == "failed"
    assert result.run is not None and result.run.status == "failed"
    (failure,) = result.run.hosts["lab-local"].failures
    assert failure.startswith("Read "), failure  # the read itself failed: nothing to read
    assert "sudo" not in failure
    assert failure.endswith(("returned 1", "non-zero return code")), failure


def test_a_run_that_rewrites_the_content_it_runs_from_is_not_a_success(repo):
    """A task on the controller could plant vars or rewrite a suite in its own export before
    verification reads it: the export is compared with the approved manifest after the run."""
    planted = """\
    - name: Rewrite the approved settings in the export
      ansible.builtin.copy:
        dest: "{{ playbook_dir }}/settings.yml"
        content: "---\\nprobe_value: planted\\n"
        mode: "0644"
      vars: {ansible_become: false}  # the lab's group_vars become root; no sudo here
"""
    project, change_id = _probe(repo, "settings.yml", planted)
    result = apply_change(project, change_id, now=INSIDE, skip_verify=True)
    assert result.run is not None and result.run.status == "successful"
    assert result.result == "failed"
    (finding,) = result.record.findings
    assert finding["message"] == (
        "the run changed the approved content it ran from: runbooks/probe/settings.yml"
    )
    # the repository's own file is untouched
    assert "approved" in (project.root / "runbooks/probe/settings.yml").read_text()


def test_apply_pending_at_a_chosen_time_is_refused_when_a_change_is_outside_the_lab(repo):
    from opsledger.signoff import request_change

    project, _, keys = repo
    at = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    change, _ = request_change(
        project,
        signing_key=keys["alice"],
        title="Tune staging",
        runbook="converge",
        requested_by="alice",
        reason="Needed for the quarterly baseline",
        environment="staging",
        targets="all",
        params={"tags": ["os_baseline"]},
        window_start=at,
        window_end=at + dt.timedelta(hours=1),
    )
    commit_paths(
        project.root,
        [change.file.parent],
        "Request",
        name="Alice Arnold",
        email="alice@example.org",
    )
    approve_change(project, change.id, person="bob", signing_key=keys["bob"])
    before = _commits(project)
    for args in (["apply", "--pending"], ["ci", "apply"]):
        result = CliRunner().invoke(
            cli, [*args, "--at", at.isoformat()], env={"OPSLEDGER_PROJECT": str(project.root)}
        )
        assert result.exit_code == EXIT_INVALID, result.output
        assert "--at" in result.output and "not in staging" in result.output
    _nothing_ran(project, change.id, before)
