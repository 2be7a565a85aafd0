"""decide reads only what bears on the change: its cost follows the overlap, not the history.

Other requests' slots come from git's index where the working tree holds the index's bytes,
and from the files themselves everywhere else; run records are read only for the requests
whose slot overlaps. These tests pin the cases where the cheap path must fall back to what
the working tree and HEAD really say. Real git repositories, no lab.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

import opsledger.slots as slots
from opsledger.changes import change_ids
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file
from opsledger.localcache import cache_file, load_cache
from opsledger.records import RUN_INDEX_CACHE, head_runs, read_runs, runs_of
from opsledger.slots import candidates

from .conftest import START, record_run

WINDOW = (START, START + dt.timedelta(hours=1))
LATER = (START + dt.timedelta(days=3), START + dt.timedelta(days=3, hours=1))


@pytest.fixture(autouse=True)
def _new_process(monkeypatch):
    monkeypatch.setattr(slots, "_SEEN", {})  # this test's own, cleared by _overlapping
    monkeypatch.setattr(slots, "_ROWS", {})


def _commit_all(project, message):
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", message)


def _overlapping(project, change_id):
    """Each call as a new command makes it: only the cache files carry over."""
    slots._SEEN.clear()
    slots._ROWS.clear()
    slots._PLANS.clear()
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


def test_a_committed_edit_is_a_miss_of_the_kept_index(local_repo):
    project, request = local_repo
    later = request(window=LATER)
    now = request(window=WINDOW)
    assert later not in _overlapping(project, now)  # rows kept under this index's identity
    assert load_cache(project, slots.INDEX_CACHE)["rows"][later][1] is not None
    _move_window(project, later, *WINDOW)
    _commit_all(project, "Move the window")  # the file holds the index's bytes again
    assert later in _overlapping(project, now)


def test_kept_rows_of_another_index_are_not_believed(local_repo):
    project, request = local_repo
    later = request(window=LATER)
    now = request(window=WINDOW)
    assert later not in _overlapping(project, now)
    stale = cache_file(project, slots.INDEX_CACHE).read_bytes()  # authenticated, this clone's
    _move_window(project, later, *WINDOW)
    _commit_all(project, "Move the window")
    cache_file(project, slots.INDEX_CACHE).write_bytes(stale)  # restored from before the commit
    assert later in _overlapping(project, now)


def test_edited_kept_rows_are_ignored(local_repo):
    project, request = local_repo
    near = request(window=WINDOW)
    now = request(window=WINDOW)
    assert near in _overlapping(project, now)
    kept = load_cache(project, slots.INDEX_CACHE)
    kept["rows"][near][1] = ["production", *kept["rows"][near][1][1:]]  # says: elsewhere
    file = cache_file(project, slots.INDEX_CACHE)
    mac, _, _ = file.read_bytes().partition(b"\n")
    file.write_bytes(mac + b"\n" + json.dumps(kept, separators=(",", ":")).encode())
    assert near in _overlapping(project, now)


def _as_read_runs_says(project):
    """(change, result) of every committed final record, as read_runs parses them all."""
    return sorted((r.change, r.result) for r in read_runs(project).committed)


def _as_head_runs_says(project):
    files = head_runs(project)
    return sorted((e[1], e[2]) for p, e in files.items() if not p.endswith(".started.json"))


def test_the_kept_run_index_follows_each_commit_from_the_last_tree(local_repo):
    """apply --pending's applied set: kept by tree id and brought up to date by diff-tree."""
    project, request = local_repo
    first = request(window=WINDOW)
    second = request(window=WINDOW)
    record_run(project, first, START + dt.timedelta(minutes=1), result="failed")
    assert _as_head_runs_says(project) == _as_read_runs_says(project) == [(first, "failed")]
    older = cache_file(project, RUN_INDEX_CACHE).read_bytes()  # this clone's, authenticated
    record_run(project, first, START + dt.timedelta(minutes=20), result="success")
    record_run(project, second, START + dt.timedelta(minutes=40), result="failed")
    cache_file(project, RUN_INDEX_CACHE).write_bytes(older)  # two commits behind: diff-tree
    assert _as_head_runs_says(project) == _as_read_runs_says(project)
    assert (first, "success") in _as_head_runs_says(project)
    assert (
        load_cache(project, RUN_INDEX_CACHE)["tree"] != json.loads(older.split(b"\n", 1)[1])["tree"]
    )
    git(project.root, "rm", "-q", "-r", stored_file(project.root, first, "runs"))
    git(project.root, "commit", "-q", "-m", "Runs removed")
    assert _as_head_runs_says(project) == _as_read_runs_says(project) == [(second, "failed")]


def test_an_edited_run_index_cannot_mark_a_change_applied(local_repo):
    project, request = local_repo
    first = request(window=WINDOW)
    record_run(project, first, START + dt.timedelta(minutes=1), result="failed")
    assert _as_head_runs_says(project) == [(first, "failed")]
    file = cache_file(project, RUN_INDEX_CACHE)
    mac, _, body = file.read_bytes().partition(b"\n")
    kept = json.loads(body)
    for entry in kept["files"].values():
        entry[2] = "success"
    file.write_bytes(mac + b"\n" + json.dumps(kept).encode())
    assert _as_head_runs_says(project) == [(first, "failed")]
