"""File names that are not UTF-8 in a change folder of either layout (a fuzzed checkout).

git hands such a name over as raw bytes (opsledger reads git with core.quotepath=off): every
reader of git's output must keep them (surrogateescape) and judge the file, never crash on
decoding it. Checked committed and uncommitted, with the commands that read the history, the
run records and the working tree.
"""

from __future__ import annotations

import os

import pytest

from opsledger.gitrepo import blob_contents, git
from opsledger.layout import change_folder

from .badinput import run

ALICE = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


def _no_crash(result) -> None:
    assert result.exit_code in (0, 1, 2, 3), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flat", [False, True], ids=["block", "flat"])
@pytest.mark.parametrize("committed", [False, True], ids=["uncommitted", "committed"])
def test_a_file_name_that_is_not_utf8_is_read_without_a_traceback(repo, flat, committed):
    project, change_id, _ = repo
    root = project.root
    if flat:  # the legacy layout: the same change in changes/<ID>/
        git(root, "mv", f"changes/CHG-00xx/{change_id}", f"changes/{change_id}")
        git(root, "commit", "-q", "-m", "Back to the flat layout", env=ALICE)
    git(root, "update-ref", "refs/remotes/origin/main", "HEAD")  # the branch is ahead of it
    folder = change_folder(root, change_id)
    request = next((folder / "approvals" / "alice").iterdir())
    for name in (b"approvals/alice/\xff\xfe.yml", b"runs/\xff.json", b"notes-\xe9.txt"):
        path = os.path.join(os.fsencode(folder), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(request.read_bytes())
    for name in (b"changes/\xff\xfe/change.yml", b"changes/CHG-00xx/\xff/change.yml"):
        path = os.path.join(os.fsencode(root), name)  # a change folder so named, either layout
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write((folder / "change.yml").read_bytes())
    if committed:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "A name that is not UTF-8", env=ALICE)

    for args in (
        ["change", "show", change_id],
        ["change", "validate", "--all"],
        ["audit", "check"],
        ["audit", "log"],
        ["decide", change_id],
    ):
        _no_crash(run(root, args))


def test_a_blob_asked_by_a_path_that_is_not_utf8_is_read(repo):
    """An audit asks `git cat-file` for `<commit>:<path>` of every request ahead of the base;
    a change folder whose name is not UTF-8 must be asked for by its raw bytes, not crash."""
    project, _, _ = repo
    root = project.root
    path = os.path.join(os.fsencode(root), b"changes/\xff\xfe/change.yml")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as out:
        out.write(b"id: x\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "A folder name that is not UTF-8", env=ALICE)
    name = "HEAD:" + os.fsdecode(b"changes/\xff\xfe/change.yml")  # as git's output is read
    assert blob_contents(root, [name, "HEAD:changes/none.yml"]) == {name: b"id: x\n"}
