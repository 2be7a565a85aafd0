"""`apply --pending` decides each change once and hands the decision down to apply.

Each pending change used to be decided by pending, then twice more inside apply_change (before
and after taking the locks), each time from scratch: a queue of N changes cost 3N full
decisions, each reading every other change. A handed-down decision is reused only while
nothing it read has moved (HEAD, base, content); what the clock changes is judged again.
Real git repositories and real ansible-playbook processes (local connection), no lab.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import opsledger.apply as apply_module
import opsledger.decide as decide_module
import opsledger.pending as pending_module
from opsledger.decide import decide, decide_again
from opsledger.pending import apply_pending
from opsledger.signoff import approve_change

from .conftest import START

WINDOW = (START, START + dt.timedelta(hours=1))
INSIDE = START + dt.timedelta(minutes=5)


def _counting(monkeypatch) -> Counter:
    """Count full decisions per change: the real decide, wrapped where it is called."""
    calls: Counter = Counter()
    real = decide_module.decide

    def counted(project, change_id, **kwargs):
        calls[change_id] += 1
        return real(project, change_id, **kwargs)

    monkeypatch.setattr(decide_module, "decide", counted)
    monkeypatch.setattr(pending_module, "decide", counted)
    monkeypatch.setattr(apply_module, "decide", counted, raising=False)  # where it was called
    return calls


def test_apply_pending_decides_each_change_once(local_repo, monkeypatch):
    project, request = local_repo
    first = request(targets="lab-db1", params={"steps": 1}, window=WINDOW)
    second = request(targets="lab-db2", params={"steps": 1}, window=WINDOW)
    for change_id in (first, second):
        approve_change(project, change_id, person="bob")
    calls = _counting(monkeypatch)
    outcome = apply_pending(project, now=INSIDE, skip_verify=True)
    assert [(i.change_id, i.action) for i in outcome.items] == [
        (first, "applied"),
        (second, "applied"),
    ]
    assert outcome.ok
    assert calls == {first: 1, second: 1}


def test_a_decision_is_judged_afresh_once_head_moved(local_repo):
    """A rejection committed after the decision denies it: the old decision is not reused."""
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    approve_change(project, change_id, person="bob")
    earlier = decide(project, change_id, now=INSIDE)
    assert earlier.allowed
    approve_change(project, change_id, person="carol", decision="rejected")
    again = decide_again(project, change_id, earlier, now=INSIDE)
    assert not again.allowed
    assert "rejected by carol" in {c.rule: c.why for c in again.checks}["approvals"]


def test_a_reused_decision_is_judged_at_the_new_moment(local_repo):
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    approve_change(project, change_id, person="bob")
    earlier = decide(project, change_id, now=INSIDE)
    assert earlier.allowed
    after = WINDOW[1] + dt.timedelta(seconds=1)
    again = decide_again(project, change_id, earlier, now=after)
    assert not again.allowed and again.at == after
    assert [c.rule for c in again.checks if not c.passed] == ["change window"]
    assert again.checks == decide(project, change_id, now=after).checks


def test_a_decision_of_other_content_is_not_reused(local_repo):
    """An edit in the working tree since the decision voids the approval it counted."""
    project, request = local_repo
    change_id = request(params={"steps": 1}, window=WINDOW)
    approve_change(project, change_id, person="bob")
    earlier = decide(project, change_id, now=INSIDE)
    assert earlier.allowed
    playbook = project.root / "runbooks/local-steps/playbook.yml"
    playbook.write_text(playbook.read_text() + "# edited after the approval\n")
    again = decide_again(project, change_id, earlier, now=INSIDE)
    assert not again.allowed
    assert again.content_sha256 != earlier.content_sha256
    assert again.checks == decide(project, change_id, now=INSIDE).checks
