"""decide's caches (.opsledger/cache/) make it faster and never change what it answers.

The slots of other requests (environment and window: which may conflict) and parsed run
records are cached by git blob id in files authenticated with a key in the git directory. An
edited entry, or a cache file from another clone, is ignored and rebuilt from git. Real git
repositories, no lab.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets

import opsledger.content as content
import opsledger.records as records
import opsledger.slots as slots
from opsledger.changes import withdraw_change
from opsledger.content import repository_content
from opsledger.decide import decide
from opsledger.gitrepo import git
from opsledger.localcache import (
    KEY_FILE,
    PATH_WALKS,
    _mac,
    cache_file,
    ensure_commit_graph,
    load_cache,
)
from opsledger.records import RUNS_CACHE, change_runs
from opsledger.signoff import approve_change
from opsledger.slots import CACHE as SLOTS
from opsledger.slots import INDEX_CACHE as INDEX_ROWS

from .conftest import START, record_run

WINDOW = (START, START + dt.timedelta(hours=1))
INSIDE = START + dt.timedelta(minutes=5)


def _conflicts(decision) -> tuple[bool, str]:
    check = next(c for c in decision.checks if c.rule == "conflicts")
    return check.passed, check.why


def _edit(project, name, change) -> None:
    """Edit the cache file's entries in place, its authentication left as it was."""
    path = cache_file(project, name)
    mac, _, body = path.read_bytes().partition(b"\n")
    entries = json.loads(body)
    change(entries)
    path.write_bytes(mac + b"\n" + json.dumps(entries).encode())


def test_an_edited_slot_cannot_release_a_conflicting_change(local_repo, monkeypatch):
    project, request = local_repo
    first = request(targets="db", params={"steps": 1}, window=WINDOW)
    second = request(targets="lab-db1", params={"steps": 1}, window=WINDOW)
    for change_id in (first, second):
        approve_change(project, change_id, person="bob")
    before = _conflicts(decide(project, second, now=INSIDE))
    assert before[0] is False and first in before[1]
    assert load_cache(project, SLOTS)  # written and authenticated: the next decide uses it

    def elsewhere(entries):  # the first change moved to staging, as far as the cache says
        for entry in entries.values():
            if entry:
                entry[0] = "staging"

    def rows_elsewhere(kept):  # the same, in the slots kept by the index's identity
        elsewhere({i: row[1] for i, row in kept["rows"].items()})

    _edit(project, SLOTS, elsewhere)
    _edit(project, INDEX_ROWS, rows_elsewhere)
    assert load_cache(project, SLOTS) == load_cache(project, INDEX_ROWS) == {}  # ignored
    monkeypatch.setattr(slots, "_SEEN", {})  # a new command: only the files could say it
    monkeypatch.setattr(slots, "_ROWS", {})
    assert _conflicts(decide(project, second, now=INSIDE)) == before
    assert load_cache(project, SLOTS) and load_cache(project, INDEX_ROWS)  # rebuilt from git


def test_a_cache_from_another_clone_is_not_believed(local_repo, monkeypatch):
    project, request = local_repo
    first = request(targets="db", params={"steps": 1}, window=WINDOW)
    second = request(targets="lab-db1", params={"steps": 1}, window=WINDOW)
    for change_id in (first, second):
        approve_change(project, change_id, person="bob")
    before = _conflicts(decide(project, second, now=INSIDE))
    path = cache_file(project, SLOTS)
    entries = json.loads(path.read_bytes().partition(b"\n")[2])
    for entry in entries.values():
        if entry:
            entry[0] = "staging"
    other_key = secrets.token_bytes(32)  # authenticated, but under another clone's key
    body = json.dumps(entries).encode()
    path.write_bytes(_mac(other_key, SLOTS, body).encode() + b"\n" + body)
    assert (project.root / ".git" / KEY_FILE).read_bytes() != other_key
    monkeypatch.setattr(slots, "_SEEN", {})  # a new command
    assert _conflicts(decide(project, second, now=INSIDE)) == before


def test_an_edited_run_record_entry_cannot_change_a_result(local_repo, monkeypatch):
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    monkeypatch.setattr(records, "_PARSED", {})  # the same bytes parsed by an earlier test
    record_run(project, change_id, START + dt.timedelta(minutes=1), result="failed")
    assert [r.result for r in change_runs(project)] == ["failed"]
    assert load_cache(project, RUNS_CACHE)

    def succeeded(entries):
        for entry in entries.values():
            entry["json"]["result"] = "success"

    _edit(project, RUNS_CACHE, succeeded)
    monkeypatch.setattr(records, "_PARSED", {})  # a new command: only the file could say it
    assert [r.result for r in change_runs(project)] == ["failed"]


def test_the_commit_graph_with_changed_path_filters_is_written_once(local_repo):
    project, _ = local_repo
    graph = project.root / ".git" / "objects" / "info" / "commit-graph"
    assert not graph.exists()
    ensure_commit_graph(project.root)
    assert graph.exists() and b"BIDX" in graph.read_bytes()[:200]


def test_a_kept_walk_never_hides_a_later_approval_or_withdrawal(local_repo):
    """History walks are kept by commit id: a new commit is a new walk, never the old answer."""
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    git(project.root, "checkout", "-q", "-b", "work")  # the base (main) stays where it is
    assert not decide(project, change_id, now=INSIDE).allowed  # not approved: walk kept
    assert load_cache(project, PATH_WALKS)
    approve_change(project, change_id, person="bob")
    assert decide(project, change_id, now=INSIDE).allowed
    withdraw_change(project, change_id, person="alice", reason="Not needed")
    decision = decide(project, change_id, now=INSIDE)
    assert [c.rule for c in decision.checks if not c.passed] == ["withdrawn"]


def test_an_edited_walk_is_ignored(local_repo):
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    approve_change(project, change_id, person="bob")
    withdraw_change(project, change_id, person="alice", reason="Not needed")
    assert not decide(project, change_id, now=INSIDE).allowed

    def forgotten(entries):  # every walk found nothing: no withdrawal, as far as the file says
        for key in entries:
            entries[key] = ""

    _edit(project, PATH_WALKS, forgotten)
    decision = decide(project, change_id, now=INSIDE)
    assert [c.rule for c in decision.checks if not c.passed] == ["withdrawn"]


def test_a_staged_edit_is_a_miss_of_the_kept_index_listing(local_repo):
    """Content's listing of git's index is kept by the index's identity: `git add` moves it."""
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    before = repository_content(project, change_id)
    assert load_cache(project, content.INDEX_CACHE)["lists"]
    site = project.root / "site.yml"
    site.write_text(site.read_text() + "\n# edited\n")
    git(project.root, "add", "site.yml")  # the working tree holds the index's bytes again
    content._LISTINGS.clear()  # a new command: only the file could say it
    after = repository_content(project, change_id)
    assert after.changed_since(before.files) == ["site.yml"]
    staged = git(project.root, "ls-files", "-s", "site.yml").stdout.split()[1]
    assert after.files["site.yml"] == f"100644 {staged}"
