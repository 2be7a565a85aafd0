"""A second adversarial review of change control (#12b): more ways a requester could run a
change the policy denies, each on a real git repository, each refused.

Every test plays alice, who can push any commit to her branch but not to main.
"""

from __future__ import annotations

import datetime as dt

from opsledger.decide import decide
from opsledger.gitrepo import git

from .conftest import START
from .test_bypasses import INSIDE, approve, as_env, commit_as, failed, request


def _commit_all(project, message, person="alice"):
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", message, env=as_env(person))


# --- A withdrawal cannot be undone by deleting it -------------------------------------------


def test_deleting_a_withdrawal_does_not_revive_the_change(repo):
    from opsledger.changes import withdraw_change

    project, change_id, _ = repo
    approve(project, change_id, "bob")
    assert decide(project, change_id, now=INSIDE).allowed
    withdraw_change(project, change_id, person="carol", reason="Superseded")
    assert "withdrawn" in failed(decide(project, change_id, now=INSIDE))
    git(project.root, "checkout", "-q", "-b", "revive")
    git(project.root, "rm", "-q", f"changes/{change_id}/withdrawn.yml")
    git(project.root, "commit", "-q", "-m", "Tidy up", env=as_env("alice"))
    assert "withdrawn" in failed(decide(project, change_id, now=INSIDE))


def test_a_withdrawal_a_branch_brings_for_anothers_change_releases_no_host(repo):
    project, change_id, _ = repo
    earlier = START - dt.timedelta(minutes=30)
    first = request(
        project,
        person="dave",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=earlier,
        window_end=earlier + dt.timedelta(hours=2),
    )
    approve(project, first, "carol")
    approve(project, change_id, "bob")
    assert "conflicts" in failed(decide(project, change_id, now=INSIDE))
    git(project.root, "checkout", "-q", "-b", "feature")
    fake = project.root / "changes" / first / "withdrawn.yml"
    fake.write_text(f"---\nchange: {first}\nwithdrawn_by: dave\nwithdrawn_at: x\nreason: x\n")
    commit_as(project, [fake], f"Withdraw {first}", "alice")
    assert "conflicts" in failed(decide(project, change_id, now=INSIDE, base="main"))
