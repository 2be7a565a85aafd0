"""What an approval binds: every file git tracks but bookkeeping (content.py), on real git repos.

The class tests here failed on the static reading approvals used to bind (now reach.py): any
tracked file outside bookkeeping voids an approval once edited, whatever Ansible is *seen* to
load; bookkeeping (statements, run records, other changes, records/) never does.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess

import pytest
from click.testing import CliRunner

from opsledger.changes import validate_change
from opsledger.cli import cli
from opsledger.content import change_content, is_content, require_committed
from opsledger.errors import EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import git, head
from opsledger.layout import change_folder, stored_file

from .conftest import record_run
from .test_bypasses import INSIDE, approve, as_env, failed


def content(project, change_id):
    result = validate_change(project, change_id)
    return change_content(project, result.change, result.runbook, result.hosts)


def commit_all(project, message="Edit", person="alice"):
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", message, env=as_env(person))


def write(project, path, text="---\n# added after the approval\n"):
    file = project.root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return file


def append(project, path, text="\n# edited after the approval\n"):
    with open(project.root / path, "a") as handle:
        handle.write(text)


def _symlinked_dir(project):
    write(project, "data/v2/settings.yml", "---\npostgresql_max_connections: 5000\n")
    (project.root / "data/current").symlink_to("v2", target_is_directory=True)
    return "data/current"


def _computed_path(project):
    # a task whose path only exists at run time: `include_vars: "data/{{ site }}.yml"`
    tasks = project.root / "roles/postgresql/tasks/main.yml"
    tasks.write_text(
        tasks.read_text()
        + '\n- name: Load per site\n  ansible.builtin.include_vars: "{{ playbook_dir }}'
        '/../../data/{{ site }}.yml"\n'
    )
    write(project, "data/berlin.yml", "---\npostgresql_max_connections: 100\n")
    commit_all(project, "Per-site settings", "carol")
    return "data/berlin.yml"


# What it is -> (the tracked file, whether it is new or an edit of an existing one)
EDITS = {
    "a role no runbook names": ("roles/unused/tasks/main.yml", "new"),
    "a vars plugin folder": ("tools/vars_plugins/evil.py", "new"),
    "a module under a collections path": (
        "vendor/ansible_collections/acme/tools/plugins/modules/evil.py",
        "new",
    ),
    "another environment's group_vars (a run-time group)": (
        "inventories/production/group_vars/postgresql_primary.yml",
        "new",
    ),
    "a non-YAML file anywhere": ("docs/notes.txt", "new"),
    "a new top-level file": ("Makefile", "new"),
    "a policy": ("policies/sla.yml", "edit"),
    "a verification suite": ("tests/infra/test_network.py", "edit"),
    "the README": ("README.md", "edit"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_a_committed_edit_of_any_tracked_file_voids_the_approval(repo, kind):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    assert "approvals" not in failed(decide_now(project, change_id))
    path, how = EDITS[kind]
    write(project, path) if how == "new" else append(project, path)
    commit_all(project)
    why = failed(decide_now(project, change_id))["approvals"]
    assert "content changed" in why and path in why


def test_a_file_only_a_computed_path_reaches_is_bound(repo):
    project, change_id, _ = repo
    path = _computed_path(project)
    approve(project, change_id, "bob")  # approved after the per-site settings were committed
    append(project, path, "postgresql_max_connections: 5000\n")
    commit_all(project)
    why = failed(decide_now(project, change_id))["approvals"]
    assert "content changed" in why and path in why


def test_a_symlinked_directory_and_what_it_reaches_are_bound(repo):
    project, change_id, _ = repo
    link = _symlinked_dir(project)
    commit_all(project, "Versioned data", "carol")
    approve(project, change_id, "bob")
    before = content(project, change_id)
    assert before.files[link].startswith("120000 ")  # the link as git stores it
    (project.root / link).unlink()
    write(project, "data/v3/settings.yml", "---\npostgresql_max_connections: 9000\n")
    (project.root / link).symlink_to("v3", target_is_directory=True)
    commit_all(project)
    assert content(project, change_id).changed_since(before.files) == [
        link,
        "data/v3/settings.yml",
    ]
    assert "content changed" in failed(decide_now(project, change_id))["approvals"]


def test_an_executable_bit_and_a_deletion_change_the_content(repo):
    project, change_id, _ = repo
    before = content(project, change_id)
    script = project.root / "roles/hardware/library/hardware_record.py"
    script.chmod(script.stat().st_mode ^ stat.S_IXUSR)
    os.remove(project.root / "README.md")
    commit_all(project)
    assert content(project, change_id).changed_since(before.files) == [
        "README.md",
        "roles/hardware/library/hardware_record.py",
    ]


# --- Bookkeeping is not content -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "changes/CHG-0099/change.yml",  # another change's folder
        "changes/POL-0001/policy.yml",  # a policy change's folder
        "changes/CHG-00xx/CHG-0001/approvals/carol/20261201T200000Z.yml",
        "changes/CHG-00xx/CHG-0001/runs/20261201T200000Z.json",
        "changes/CHG-00xx/CHG-0001/review.yml",
        "changes/CHG-00xx/CHG-0001/withdrawn.yml",
        "changes/CHG-00xx/CHG-0099/change.yml",  # another change's folder, in its block
        "records/inspections/20261201T200000Z-lab.json",
        "incidents/INC-0001/incident.yml",
        "problems/PRB-0001/problem.yml",
        ".opsledger/facts/lab-db1",  # untracked machine-local state
    ],
)
def test_bookkeeping_written_or_committed_leaves_the_content_alone(repo, path):
    project, change_id, _ = repo
    before = content(project, change_id)
    write(project, path, "{}\n")
    assert content(project, change_id) == before
    if not path.startswith(".opsledger/"):
        commit_all(project, "Bookkeeping", "carol")
        assert content(project, change_id) == before
    assert not is_content(path, change_id)


def test_approvals_and_run_records_do_not_void_the_approval(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    approve(project, change_id, "carol")
    record_run(project, change_id, INSIDE - dt.timedelta(minutes=20), result="canceled")
    assert "approvals" not in failed(decide_now(project, change_id))


def test_the_changes_own_request_file_is_content(repo):
    _, change_id, _ = repo
    assert is_content(f"changes/{change_id}/change.yml", change_id)
    assert not is_content(f"changes/{change_id}/change.yml", "CHG-0002")


# --- A dirty tree: the hash is what `git commit -a` would record ------------------------


def test_the_content_is_what_git_commit_a_would_record(repo):
    """Tracked files count as they are on disk (staged or not), untracked ones do not: the
    hash of a dirty tree equals the hash after `git commit -a`, and git's blob ids are the
    manifest."""
    project, change_id, _ = repo
    committed = content(project, change_id)
    readme = git(project.root, "rev-parse", "HEAD:README.md").stdout.strip()
    assert committed.files["README.md"] == f"100644 {readme}"
    write(project, "notes/untracked.txt", "not content until committed\n")
    assert content(project, change_id) == committed
    append(project, "site.yml")
    dirty = content(project, change_id)
    assert dirty.changed_since(committed.files) == ["site.yml"]
    git(project.root, "add", "site.yml")
    assert content(project, change_id) == dirty  # staged or not: the same
    git(project.root, "commit", "-q", "-a", "-m", "Edit", env=as_env("alice"))
    assert content(project, change_id) == dirty


def test_an_uncommitted_edit_voids_the_approval_in_decide(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    append(project, "roles/network/defaults/main.yml")
    why = failed(decide_now(project, change_id))["approvals"]
    assert "roles/network/defaults/main.yml" in why


@pytest.mark.parametrize(
    ("dirty", "named"),
    [
        (lambda p: append(p, "roles/network/defaults/main.yml"), "roles/network/defaults/main.yml"),
        (lambda p: write(p, "group_vars/all.yml"), "group_vars/all.yml"),
        (lambda p: git(p.root, "rm", "-q", "--cached", "README.md"), "README.md"),
    ],
)
def test_apply_on_a_dirty_tree_exits_2_and_runs_nothing(local_repo, dirty, named):
    """On the local-connection project: should apply run anyway, it touches only this machine."""
    project, request = local_repo
    change_id = request(params={"steps": 1})
    approve(project, change_id, "bob")
    dirty(project)
    before = head(project.root)
    result = CliRunner().invoke(
        cli,
        ["apply", change_id, "--skip-verify"],
        env={"OPSLEDGER_PROJECT": str(project.root)},
        catch_exceptions=False,
    )
    assert result.exit_code == EXIT_INVALID, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "git commit" in lines[0], result.output
    assert head(project.root) == before
    assert not change_folder(project.root, change_id, "runs").exists()
    assert not list((project.root / "steps").glob("lab-*"))  # the playbook never ran


def test_dirty_bookkeeping_does_not_stop_apply(repo):
    project, change_id, _ = repo
    write(project, "records/inspections/x.json", "{}\n")
    write(project, "changes/CHG-0099/notes.txt", "draft\n")
    write(project, stored_file(project.root, change_id, "review.yml"), "draft\n")
    require_committed(project, change_id)  # no exception


# --- Still refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc", "outside the repository"),
        ("../../records", "bookkeeping"),
        ("../../changes/CHG-0099", "bookkeeping"),
        ("../../changes", "bookkeeping"),
        ("../../changes/CHG-00xx/CHG-0001", "bookkeeping"),  # holds its approvals
        ("../../changes/CHG-00xx", "bookkeeping"),  # the block holds them too
        ("../../changes/CHG-0099/change.yml", "bookkeeping"),
        ("missing", "does not exist"),
    ],
)
def test_a_committed_symlink_out_of_the_content_is_refused(repo, target, why):
    project, change_id, _ = repo
    write(project, "records/inspections/x.json", "{}\n")
    write(project, "changes/CHG-0099/change.yml", "{}\n")
    link = project.root / "roles/postgresql/extra"
    link.symlink_to(target)
    commit_all(project, "Link", "carol")
    with pytest.raises(OpsledgerError) as err:
        content(project, change_id)
    assert err.value.exit_code == EXIT_INVALID
    assert "roles/postgresql/extra" in str(err.value) and why in str(err.value)


def test_a_symlink_to_a_file_git_ignores_is_refused(repo):
    project, change_id, _ = repo
    write(project, ".gitignore", ".opsledger/\nsecret.yml\n")
    write(project, "secret.yml", "password: x\n")
    (project.root / "roles/postgresql/vars/extra.yml").symlink_to("../../../secret.yml")
    commit_all(project, "Link", "carol")
    with pytest.raises(OpsledgerError, match="git ignores"):
        content(project, change_id)


def test_a_symlinked_folder_holding_ignored_files_is_refused(repo):
    project, change_id, _ = repo
    write(project, ".gitignore", ".opsledger/\nvault/secret.yml\n")
    write(project, "vault/README.md", "secrets live here, untracked\n")
    write(project, "vault/secret.yml", "password: x\n")
    (project.root / "roles/postgresql/vault").symlink_to("../../vault")
    commit_all(project, "Link", "carol")
    with pytest.raises(OpsledgerError, match=r"vault/secret\.yml"):
        content(project, change_id)


def test_tracked_machine_local_state_is_refused(repo):
    project, change_id, _ = repo
    write(project, ".opsledger/facts/lab-db1", "{}\n")
    git(project.root, "add", "-f", ".opsledger/facts/lab-db1")
    git(project.root, "commit", "-q", "-m", "Facts", env=as_env("alice"))
    with pytest.raises(OpsledgerError) as err:
        content(project, change_id)
    assert err.value.exit_code == EXIT_INVALID and ".opsledger/facts/lab-db1" in str(err.value)


def decide_now(project, change_id):
    from opsledger.decide import decide

    return decide(project, change_id, now=INSIDE)


def _cli(project, *args):
    return CliRunner().invoke(
        cli, list(args), env={"OPSLEDGER_PROJECT": str(project.root)}, catch_exceptions=True
    )


def test_a_file_name_that_is_not_utf8_is_ignored_in_bookkeeping_and_refused_in_content(repo):
    """Anyone may commit bookkeeping: a bad name there must not stop every change."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    records = os.fsencode(project.root / "records")
    os.makedirs(records, exist_ok=True)
    with open(os.path.join(records, b"\xff\xfe.yml"), "w") as handle:
        handle.write("x: 1\n")
    commit_all(project, "A record with a Latin-1 name")
    assert not failed(decide_now(project, change_id)).get("approvals")
    shown = _cli(project, "change", "show", change_id)
    assert shown.exit_code == 0 and shown.exception is None, shown.output
    with open(os.path.join(os.fsencode(project.root / "roles"), b"caf\xe9.yml"), "w") as handle:
        handle.write("x: 1\n")
    commit_all(project, "A role file with a Latin-1 name")
    with pytest.raises(OpsledgerError) as err:
        content(project, change_id)
    assert err.value.exit_code == EXIT_INVALID and "not UTF-8" in str(err.value)
    assert "roles/caf\\xe9.yml" in str(err.value)
    denied = _cli(project, "decide", change_id)
    assert denied.exit_code == EXIT_INVALID and "Traceback" not in denied.output


@pytest.mark.parametrize("bit", ["--assume-unchanged", "--skip-worktree"])
def test_an_edit_git_is_told_not_to_see_is_refused(repo, bit):
    """`git diff` and `git status` honour these index bits: an edit would run unseen."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    git(project.root, "update-index", bit, "site.yml")
    append(project, "site.yml")
    with pytest.raises(OpsledgerError) as err:
        content(project, change_id)
    assert err.value.exit_code == EXIT_INVALID and "site.yml" in str(err.value)
    assert "--no-skip-worktree" in str(err.value)
    with pytest.raises(OpsledgerError):
        require_committed(project, change_id) or content(project, change_id)


def test_replace_objects_do_not_change_what_is_read(repo):
    """`git replace` swaps a blob's bytes in every read; history and content must ignore it."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    good = git(project.root, "rev-parse", "HEAD:site.yml").stdout.strip()
    evil = git(project.root, "hash-object", "-w", "--", "README.md").stdout.strip()
    git(project.root, "replace", good, evil)
    (project.root / "site.yml").unlink()
    # plain git (not opsledger's) honours the replacement and checks out the other bytes
    subprocess.run(["git", "-C", str(project.root), "checkout", "--", "site.yml"], check=True)
    assert (project.root / "site.yml").read_bytes() == (project.root / "README.md").read_bytes()
    assert "site.yml" in failed(decide_now(project, change_id))["approvals"]
