"""The export apply runs from (export.py), on a real git repository: exactly the approved
files, the machine's own ignored files linked, nothing else; and every rewrite of it seen."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from opsledger.content import repository_content
from opsledger.errors import OpsledgerError
from opsledger.export import altered, commit_content, exported
from opsledger.gitrepo import git
from opsledger.project import Project

ENV = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "repo"
    _write(
        root,
        {
            ".gitignore": ".opsledger/\n__pycache__/\nvault-passwords/*\n",
            "site.yml": "---\n- hosts: all\n",
            "roles/r/tasks/main.yml": "---\n[]\n",
            "roles/r/files/run.sh": "#!/bin/sh\necho run\n",
            "changes/CHG-0001/change.yml": "title: mine\n",
            "changes/CHG-0001/approvals/bob/1.yml": "statement\n",
            "changes/CHG-0001/runs/1.json": "{}\n",
            "changes/CHG-0002/change.yml": "title: another\n",
            "records/drift/x.json": "{}\n",
            "incidents/INC-0001/incident.yml": "x: 1\n",
        },
    )
    (root / "roles/r/files/run.sh").chmod(0o755)
    (root / "roles/r/vars").mkdir(parents=True)
    os.symlink("../files/run.sh", root / "roles/r/vars/link.sh")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "Initial", env=ENV)
    # machine-local, ignored: linked into an export
    _write(root, {".opsledger/lab/id_ed25519": "key", "vault-passwords/prod": "secret"})
    _write(root, {"roles/r/__pycache__/x.cpython-311.pyc": "stale"})
    _write(root, {"untracked.yml": "not committed\n"})  # neither content nor ignored
    return Project(root)


def test_an_export_holds_exactly_the_content_and_the_machines_own_files(project):
    content = repository_content(project, "CHG-0001")
    with exported(project, content.files) as tree:
        root = tree.root
        assert (root / "site.yml").read_text() == "---\n- hosts: all\n"
        assert (root / "changes/CHG-0001/change.yml").exists()
        for bookkeeping in (
            "changes/CHG-0001/approvals",
            "changes/CHG-0001/runs",
            "changes/CHG-0002",
            "records",
            "incidents",
        ):
            assert not (root / bookkeeping).exists(), bookkeeping
        assert not (root / "untracked.yml").exists()
        assert not (root / ".git").exists()  # no history to `git show` bookkeeping from
        assert os.stat(root / "roles/r/files/run.sh").st_mode & 0o111
        assert os.readlink(root / "roles/r/vars/link.sh") == "../files/run.sh"
        assert (root / ".opsledger/lab/id_ed25519").read_text() == "key"
        assert (root / "vault-passwords/prod").read_text() == "secret"
        assert not (root / "roles/r/__pycache__").exists()
        assert altered(project, tree, content.files) == []
    assert not root.exists()


def test_every_rewrite_of_an_export_is_named(project):
    content = repository_content(project, "CHG-0001")
    with exported(project, content.files) as tree:
        root = tree.root
        (root / "site.yml").write_text("---\n- hosts: planted\n")  # rewritten
        (root / "roles/r/tasks/main.yml").unlink()  # removed
        _write(root, {"inventories/lab/group_vars/all/planted.yml": "x: 1\n"})  # added
        (root / "roles/r/files/run.sh").chmod(0o644)  # mode
        (root / "roles/r/vars/link.sh").unlink()
        os.symlink("../../../site.yml", root / "roles/r/vars/link.sh")  # retargeted
        assert altered(project, tree, content.files) == [
            "inventories/lab/group_vars/all/planted.yml",
            "roles/r/files/run.sh",
            "roles/r/tasks/main.yml",
            "roles/r/vars/link.sh",
            "site.yml",
        ]


def test_an_earlier_commits_content_is_exported_from_git_not_the_working_tree(project):
    root = project.root
    base = git(root, "rev-parse", "HEAD").stdout.strip()
    (root / "site.yml").write_text("---\n- hosts: later\n")
    git(root, "commit", "-qam", "Later", env=ENV)
    (root / "site.yml").write_text("---\n- hosts: uncommitted\n")
    with exported(project, commit_content(project, base, "CHG-0001")) as before:
        assert (before.root / "site.yml").read_text() == "---\n- hosts: all\n"
        assert not (before.root / "changes/CHG-0002").exists()


def test_a_submodule_is_an_empty_folder_in_an_export(project, tmp_path):
    inner = tmp_path / "inner"
    _write(inner, {"plugins/evil.py": "print('not approved')\n"})
    git(inner, "init", "-q", "-b", "main")
    git(inner, "add", "-A")
    git(inner, "commit", "-qm", "Inner", env=ENV)
    subprocess.run(
        [
            "git",
            "-C",
            str(project.root),
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            str(inner),
            "vendor/inner",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **ENV},
    )
    git(project.root, "commit", "-qm", "Submodule", env=ENV)
    content = repository_content(project, "CHG-0001")
    assert content.files["vendor/inner"].startswith("160000 ")
    with exported(project, content.files) as tree:
        assert list((tree.root / "vendor/inner").iterdir()) == []
        assert altered(project, tree, content.files) == []


def test_content_git_does_not_hold_is_refused_before_anything_is_written(project):
    content = repository_content(project, "CHG-0001")
    files = {**content.files, "site.yml": "100644 " + "0" * 40}
    with (
        pytest.raises(OpsledgerError, match=r"site\.yml is no longer the content that was decided"),
        exported(project, files),
    ):
        pass


def test_a_decided_but_uncommitted_edit_is_exported_as_decided(project):
    """plan reads a dirty tree: an edited file git holds no blob of is taken from disk, but only
    while it still is the bytes that were decided."""
    (project.root / "site.yml").write_text("---\n- hosts: edited\n")
    content = repository_content(project, "CHG-0001")
    with exported(project, content.files) as tree:
        assert (tree.root / "site.yml").read_text() == "---\n- hosts: edited\n"
    (project.root / "site.yml").write_text("---\n- hosts: edited again\n")
    with (
        pytest.raises(OpsledgerError, match="no longer the content"),
        exported(project, content.files),
    ):
        pass


def test_new_files_the_ignore_rules_cover_are_machine_local_in_an_export_too(project):
    content = repository_content(project, "CHG-0001")
    with exported(project, content.files) as tree:
        _write(tree.root, {"roles/r/__pycache__/m.pyc": "x", "vault-passwords/new": "y"})
        _write(tree.root, {"roles/r/defaults/main.yml": "planted: true\n"})
        assert altered(project, tree, content.files) == ["roles/r/defaults/main.yml"]


@pytest.mark.parametrize("committed", [False, True])
def test_an_uncommitted_request_in_its_block_folder_is_exported_from_where_it_lies(
    project, committed
):
    """A new change lives in its block (changes/CHG-00xx/CHG-0003/) while the manifest keys it
    flat (changes/CHG-0003/...): plan on an uncommitted request read the key as a disk path,
    found nothing and refused the change as "no longer the content that was decided"."""
    _write(project.root, {"changes/CHG-00xx/CHG-0003/change.yml": "title: new\n"})
    if committed:
        git(project.root, "add", "-A", "changes")
        git(project.root, "commit", "-qm", "CHG-0003", env=ENV)
    content = repository_content(project, "CHG-0003")
    assert "changes/CHG-0003/change.yml" in content.files
    with exported(project, content.files) as tree:
        assert (tree.root / "changes/CHG-0003/change.yml").read_text() == "title: new\n"
    (project.root / "changes/CHG-00xx/CHG-0003/change.yml").write_text("title: edited\n")
    if not committed:
        with (
            pytest.raises(OpsledgerError, match="no longer the content"),
            exported(project, content.files),
        ):
            pass


def test_a_file_no_longer_decided_is_named_where_it_lies(project):
    """The refusal named the manifest's key (changes/CHG-0003/change.yml), a folder that does
    not exist once the change lives in its block: the person is told the file to look at."""
    _write(project.root, {"changes/CHG-00xx/CHG-0003/change.yml": "title: new\n"})
    content = repository_content(project, "CHG-0003")
    (project.root / "changes/CHG-00xx/CHG-0003/change.yml").write_text("title: edited\n")
    with pytest.raises(OpsledgerError) as refused, exported(project, content.files):
        pass
    (problem,) = refused.value.problems
    assert problem.file == "changes/CHG-00xx/CHG-0003/change.yml"
    assert problem.message.startswith("changes/CHG-00xx/CHG-0003/change.yml is no longer")
