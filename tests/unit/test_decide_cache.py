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

import opsledger.records as records
import opsledger.slots as slots
from opsledger.decide import decide
from opsledger.localcache import (
    KEY_FILE,
    _mac,
    cache_file,
    ensure_commit_graph,
    load_cache,
)
from opsledger.records import RUNS_CACHE, change_runs
from opsledger.signoff import approve_change
from opsledger.slots import CACHE as SLOTS

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

    _edit(project, SLOTS, elsewhere)
    assert load_cache(project, SLOTS) == {}  # does not verify: ignored
    monkeypatch.setattr(slots, "_SEEN", {})  # a new command: only the file could say it
    assert _conflicts(decide(project, second, now=INSIDE)) == before
    assert load_cache(project, SLOTS)  # rebuilt from the requests


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
