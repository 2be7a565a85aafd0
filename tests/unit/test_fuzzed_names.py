"""File names that are not UTF-8 in a change folder of either layout (a fuzzed checkout).

git hands such a name over as raw bytes (opsledger reads git with core.quotepath=off): every
reader of git's output must keep them (surrogateescape) and judge the file, never crash on
decoding it. Checked committed and uncommitted, with the commands that read the history, the
run records and the working tree.
"""

from __future__ import annotations

import os

import pytest

from opsledger.gitrepo import git
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
    folder = change_folder(root, change_id)
    request = next((folder / "approvals" / "alice").iterdir())
    for name in (b"approvals/alice/\xff\xfe.yml", b"runs/\xff.json", b"notes-\xe9.txt"):
        path = os.path.join(os.fsencode(folder), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(request.read_bytes())
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
