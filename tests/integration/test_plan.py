"""plan on the lab: the decision, then check mode with diffs, per host."""

from __future__ import annotations

import datetime as dt

import pytest

from opsledger.gitrepo import commit_paths
from opsledger.plan import plan, render
from opsledger.signoff import approve_change, request_change

from .conftest import ALICE

pytestmark = pytest.mark.lab


def test_plan_shows_the_postgresql_parameter_diff(converged_lab, workflow_repo):
    project = workflow_repo
    params_file = project.root / "inventories/lab/group_vars/db/postgresql.yml"
    params_file.write_text(params_file.read_text().replace("work_mem: 8MB", "work_mem: 16MB"))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    change, _ = request_change(
        project,
        title="Raise work_mem on the database hosts",
        runbook="converge",
        requested_by="alice",
        targets="db",
        reason="Sorts spill to disk during the nightly report",
        params={"tags": ["postgresql"]},
        window_start=now,
        window_end=now + dt.timedelta(hours=2),
    )
    commit_paths(
        project.root,
        [params_file, change.file.parent],
        f"Request {change.id}",
        name=ALICE["GIT_AUTHOR_NAME"],
        email=ALICE["GIT_AUTHOR_EMAIL"],
    )
    approve_change(project, change.id, person="bob")

    result = plan(project, change.id, now=now + dt.timedelta(minutes=1))
    assert result.decision.allowed, result.decision.checks
    by_host = {h.host: h for h in result.hosts}
    assert set(by_host) == {"lab-db1", "lab-db2"}
    for host in by_host.values():
        assert host.status == "would change", host
        diffs = "\n".join(c.diff for c in host.changes)
        assert "-work_mem = 8MB" in diffs and "+work_mem = 16MB" in diffs
    markdown = render(result, "md")
    assert "| lab-db1 | would change |" in markdown and "```diff" in markdown


def test_unchanged_desired_state_plans_no_change(converged_lab, workflow_repo):
    project = workflow_repo
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    change, _ = request_change(
        project,
        title="Re-apply the network state",
        runbook="converge",
        requested_by="alice",
        targets="app",
        params={"tags": ["network"]},
        reason="Prove the app hosts match git",
        window_start=now,
        window_end=now + dt.timedelta(hours=1),
    )
    result = plan(project, change.id, now=now)
    assert not result.decision.allowed  # no approval yet: the plan still predicts
    assert {h.host: h.status for h in result.hosts} == {
        "lab-app1": "unchanged",
        "lab-app2": "unchanged",
    }
