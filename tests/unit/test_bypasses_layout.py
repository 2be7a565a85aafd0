"""A hostile review of the block layout and decide's kept answers (task rl), on real git repos.

Alice can push any commit to a branch that a reviewed merge brings to main; she cannot write
CI's cache or git directory. Each test is a way she tried to make a reader of changes/ see
what is not there (or miss what is), refused or judged as the one reader of that evidence
judges it.
"""

from __future__ import annotations

import dataclasses
import json

from opsledger.apply import _already_applied
from opsledger.pending import _candidates
from opsledger.records import head_runs, run_record_path, write_record

from .test_bypasses import STAGING_AT, commit_as, request, run_record


# --- apply --pending sees a run as apply sees it: a record of its own folder ----------------


def test_a_record_in_another_changes_folder_does_not_mark_a_change_applied(repo):
    """A success record naming CHG-X but lying in CHG-Y's runs/ is no run of CHG-X: apply
    (records.runs_of) ignores it, so apply --pending must not skip CHG-X for it either."""
    project, change_id, keys = repo
    other = request(project, key=keys["alice"], targets="db", params={"tags": ["postgresql"]})
    forged = run_record(project, change_id, environment="lab")
    data = json.loads(forged.read_text())
    forged.unlink()
    started = STAGING_AT.replace(minute=7)
    path = run_record_path(project, other, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    commit_as(project, [path], f"Run {other}: success", "ci", key=keys["ci"])
    assert _already_applied(project, change_id) is None  # apply's own view: not applied
    pending = [c.id for c, _ in _candidates(project, head_runs(project), None)]
    assert change_id in pending
