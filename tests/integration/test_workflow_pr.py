"""The whole GitOps flow with local git: a bare origin whose people.yml gets the team's keys
through an approved policy change, an engineer's branch with her signed request, two approvers
signing statements with their own SSH keys, a merge (or a squash merge, which signed
statements survive), the CI apply step on the lab, then a clean audit. Variants with a
missing, stale or self-made approval are refused and apply nothing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from opsledger.gitrepo import commit_paths, git
from opsledger.lab.service import run_on_host
from opsledger.layout import change_folder
from opsledger.project import Project
from opsledger.signoff import approve_change, propose_policy_change, sign_off

from .conftest import ALICE
from .helpers import opsledger, request_change

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PEOPLE = {
    "alice": ("Alice Arnold", "alice@example.org"),
    "bob": ("Bob Brandt", "bob@example.org"),
    "carol": ("Carol Chen", "carol@example.org"),
}


def _keypair(folder, name):
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


def _clone(origin, folder, lab_state, branch="main") -> Project:
    git(origin.parent, "clone", "-q", "-b", branch, str(origin), str(folder))
    (folder / ".opsledger").mkdir()
    (folder / ".opsledger" / "lab").symlink_to(lab_state)
    return Project(folder)


CI = {
    "OPSLEDGER_PERSON": "ci",
    "OPSLEDGER_COMMITTER_NAME": "opsledger CI",
    "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org",
}


def _opsledger(project, *args):
    return opsledger(project, *args, timeout=1800, env=CI)


@pytest.fixture
def origin(workflow_repo, tmp_path):
    """A bare origin seeded with the project; alice's, bob's and carol's keys are registered in
    people.yml by a policy change alice requests and carol (the CAB) approves."""
    (tmp_path / "keys").mkdir()
    keys = {name: _keypair(tmp_path / "keys", name) for name in ("alice", "bob", "carol")}
    people = workflow_repo.root / "policies" / "people.yml"
    data = yaml.safe_load(people.read_text())
    for person in data["people"]:
        if person["id"] in keys:
            person["signing_key"] = keys[person["id"]].with_suffix(".pub").read_text().strip()
    people.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))
    proposal, _ = propose_policy_change(
        workflow_repo,
        title="Register the team's signing keys",
        requested_by="alice",
        reason="Statements are signed from now on",
    )
    commit_paths(
        workflow_repo.root,
        [people, proposal.file.parent],
        f"Propose {proposal.id}",
        name="Alice Arnold",
        email="alice@example.org",
    )
    approve_change(workflow_repo, proposal.id, person="carol")
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(workflow_repo.root, "push", "-q", str(bare), "main")
    return bare, keys, workflow_repo.lab_state_dir


def _propose(origin, tmp_path, lab_state, work_mem: str, key=None) -> tuple[Project, str]:
    """alice's branch: the desired-state edit and her change request (signed with `key`)."""
    engineer = _clone(origin, tmp_path / "alice", lab_state)
    git(engineer.root, "checkout", "-q", "-b", "raise-work-mem")
    params = engineer.root / "inventories/lab/group_vars/db/postgresql.yml"
    params.write_text(params.read_text().replace("work_mem: 8MB", f"work_mem: {work_mem}"))
    change_id = request_change(
        engineer,
        [params],
        title="Raise work_mem on the database hosts",
        runbook="converge",
        targets="db",
        params={"tags": ["postgresql"]},
        reason="Sorts of the nightly report spill to disk",
        signing_key=key,
    )
    git(engineer.root, "push", "-q", "origin", "raise-work-mem")
    return engineer, change_id


def _approve(origin, tmp_path, lab_state, person, change_id, key=None) -> None:
    clone = _clone(origin, tmp_path / person, lab_state, branch="raise-work-mem")
    approve_change(clone, change_id, person=person, signing_key=key)
    git(clone.root, "push", "-q", "origin", "raise-work-mem")


def _merge(origin, tmp_path, lab_state, how="merge") -> None:
    """carol merges the branch into main: a merge commit, or a squash (one new commit by her,
    so only signed statements keep proving who made them)."""
    maintainer = _clone(origin, tmp_path / "maintainer", lab_state)
    git(maintainer.root, "fetch", "-q", "origin", "raise-work-mem")
    carol = ["-c", "user.name=Carol Chen", "-c", "user.email=carol@example.org"]
    if how == "squash":
        git(maintainer.root, *carol, "merge", "-q", "--squash", "FETCH_HEAD")
        git(maintainer.root, *carol, "commit", "-q", "-m", "Raise work_mem (#1)")
    else:
        git(
            maintainer.root,
            *carol,
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge raise-work-mem",
            "FETCH_HEAD",
        )
    git(maintainer.root, "push", "-q", "origin", "main")


def _work_mem(project) -> set[str]:
    return {
        run_on_host(project, host, "sudo -u postgres psql -Atc 'SHOW work_mem'").stdout.strip()
        for host in ("lab-db1", "lab-db2")
    }


# A squash merge on the lab: one new commit by the maintainer, so only the signed statements
# prove who approved. Merge commits (tests/unit/test_gitops_loop.py) and squash and rebase
# merges (tests/unit/test_bypasses.py) run through the same loop on real git without hosts.
def test_pull_request_to_applied_change_with_a_clean_audit(
    converged_lab, origin, tmp_path, restore_db
):
    bare, keys, lab_state = origin
    engineer, change_id = _propose(bare, tmp_path, lab_state, "32MB", key=keys["alice"])
    waiting = _opsledger(engineer, "ci", "pr", "--base", "origin/main", "--no-plan")
    assert waiting.returncode == 3, waiting.stdout + waiting.stderr
    assert "needs approvals" in waiting.stdout

    _approve(bare, tmp_path, lab_state, "bob", change_id, keys["bob"])
    _approve(bare, tmp_path, lab_state, "carol", change_id, keys["carol"])
    git(engineer.root, "pull", "-q", "origin", "raise-work-mem")
    ready = _opsledger(engineer, "ci", "pr", "--base", "origin/main")  # with the check-mode plan
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "ready to merge" in ready.stdout and "+work_mem = 32MB" in ready.stdout

    _merge(bare, tmp_path, lab_state, "squash")
    runner = _clone(bare, tmp_path / "ci", lab_state)
    applied = _opsledger(runner, "ci", "apply", "--env", "lab", "--push", "origin")
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert f"{change_id}: applied — success" in applied.stdout
    assert "run records pushed to origin/main" in applied.stdout
    assert _work_mem(runner) == {"32MB"}

    auditor = _clone(bare, tmp_path / "auditor", lab_state)
    assert list((change_folder(auditor.root, change_id) / "runs").glob("*.json"))
    check = _opsledger(auditor, "audit", "check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout) == [], check.stdout
    log = _opsledger(auditor, "audit", "log", "--format", "json")
    (row,) = json.loads(log.stdout)
    signatures = {a["person"]: a["signature"] for a in row["approvers"]}
    assert signatures == {"bob": "good", "carol": "good"}
    assert row["result"] == "success" and row["requester"] == "alice"


@pytest.mark.parametrize("variant", ["missing", "stale", "self-made"])
def test_refused_pull_requests_apply_nothing(converged_lab, origin, tmp_path, variant):
    bare, keys, lab_state = origin
    engineer, change_id = _propose(bare, tmp_path, lab_state, "48MB")
    if variant == "self-made":
        # `approve` refuses the requester, so a hostile one writes the statement past it
        sign_off(engineer, change_id, person="alice")
        git(engineer.root, "push", "-q", "origin", "raise-work-mem")
    elif variant == "stale":
        _approve(bare, tmp_path, lab_state, "bob", change_id, keys["bob"])
        git(engineer.root, "pull", "-q", "origin", "raise-work-mem")
        params = engineer.root / "inventories/lab/group_vars/db/postgresql.yml"
        params.write_text(params.read_text().replace("work_mem: 48MB", "work_mem: 64MB"))
        commit_paths(
            engineer.root,
            [params],
            "Make it 64MB",
            name=ALICE["GIT_AUTHOR_NAME"],
            email=ALICE["GIT_AUTHOR_EMAIL"],
        )
        git(engineer.root, "push", "-q", "origin", "raise-work-mem")
    refused = _opsledger(engineer, "ci", "pr", "--base", "origin/main", "--no-plan")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    before = _work_mem(engineer)

    _merge(bare, tmp_path, lab_state)  # merged anyway (no branch protection here)
    runner = _clone(bare, tmp_path / "ci", lab_state)
    applied = _opsledger(runner, "ci", "apply", "--env", "lab", "--push", "origin")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"{change_id}: not approved" in applied.stdout
    assert not (change_folder(runner.root, change_id) / "runs").exists()
    assert _work_mem(runner) == before
    check = _opsledger(runner, "audit", "check", "--json")
    rules = {f["rule"] for f in json.loads(check.stdout)}
    assert "change-not-applied" in rules
    if variant == "self-made":
        assert "approval-by-requester" in rules
    assert os.path.exists(runner.root)
