"""decide reads only what bears on the change: its cost follows the overlap, not the history.

Other requests' slots come from git's index where the working tree holds the index's bytes,
and from the files themselves everywhere else; run records are read only for the requests
whose slot overlaps. These tests pin the cases where the cheap path must fall back to what
the working tree and HEAD really say. Real git repositories, no lab.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

import opsledger.slots as slots
from opsledger.changes import change_ids
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file
from opsledger.records import read_runs, runs_of
from opsledger.slots import candidates

from .conftest import START, record_run

WINDOW = (START, START + dt.timedelta(hours=1))
LATER = (START + dt.timedelta(days=3), START + dt.timedelta(days=3, hours=1))


@pytest.fixture(autouse=True)
def _new_process(monkeypatch):
    monkeypatch.setattr(slots, "_SEEN", {})  # each call as a new command would make it


def _overlapping(project, change_id):
    return candidates(project, change_id, "lab", *WINDOW)


def _move_window(project, change_id, start, end):
    file = change_folder(project.root, change_id) / "change.yml"
    text = file.read_text()
    old_start, old_end = LATER
    text = text.replace(old_start.isoformat().replace("+00:00", "Z"), start.isoformat())
    text = text.replace(old_start.isoformat(), start.isoformat())
    text = text.replace(old_end.isoformat().replace("+00:00", "Z"), end.isoformat())
    text = text.replace(old_end.isoformat(), end.isoformat())
    assert text != file.read_text(), "the window was not found in the request"
    file.write_text(text)


def test_a_committed_request_elsewhere_in_time_is_left_out(local_repo):
    project, request = local_repo
    later = request(window=LATER)
    now = request(window=WINDOW)
    assert later not in _overlapping(project, now)


def test_an_uncommitted_edit_that_moves_a_window_is_seen(local_repo):
    project, request = local_repo
    later = request(window=LATER)
    now = request(window=WINDOW)
    assert later not in _overlapping(project, now)  # the index's bytes, cached
    _move_window(project, later, *WINDOW)  # the working tree now says otherwise
    assert later in _overlapping(project, now)
    git(project.root, "add", "-A")  # staged, not committed: still the working tree's bytes
    assert later in _overlapping(project, now)


def test_an_untracked_request_is_read_from_disk(local_repo):
    project, request = local_repo
    now = request(window=WINDOW)
    later = request(window=WINDOW)
    git(project.root, "rm", "-q", "--cached", "-r", stored_file(project.root, later))
    assert later in change_ids(project)
    assert later in _overlapping(project, now)


def test_a_request_folder_replaced_by_a_symlink_stays_a_candidate(local_repo, tmp_path):
    project, request = local_repo
    later = request(window=LATER)
    now = request(window=WINDOW)
    folder = change_folder(project.root, later)
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    os.symlink(moved, folder)
    # The index still holds the old bytes; the folder is a symlink now: validation refuses it.
    assert later in _overlapping(project, now)


def test_runs_are_read_for_the_asked_changes_only_and_as_read_runs_says(local_repo):
    project, request = local_repo
    first = request(window=WINDOW)
    second = request(window=WINDOW)
    record_run(project, first, START + dt.timedelta(minutes=1), result="failed")
    record_run(project, first, START + dt.timedelta(minutes=20), result="success")
    # A record in the first change's folder that claims to be the second's: not the second's.
    record_run(project, first, START + dt.timedelta(minutes=40), change=second)
    found = runs_of(project, [first, second])
    committed = [r for r in read_runs(project).committed if r.change == first]
    assert (
        [r.result for r in found[first]]
        == [r.result for r in committed]
        == [
            "failed",
            "success",
        ]
    )
    assert found[second] == []
    assert runs_of(project, []) == {}
