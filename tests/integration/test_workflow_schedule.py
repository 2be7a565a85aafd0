"""The scheduled apply on the lab (needs root and podman): a converge change merged before its
window is skipped by the push-triggered `ci apply`, applied by the scheduled one once the window
opens — racing a second run from another clone, one run — behind a protected origin
(scripts/forge/protect-main), and its job log shows every task on both db hosts."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time

import pytest

from opsledger.gitrepo import commit_paths, git
from opsledger.lab.service import run_on_host
from opsledger.layout import block_file
from opsledger.project import Project
from opsledger.signoff import approve_change, request_change

from ..conftest import REPO_ROOT

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CI = {
    "OPSLEDGER_PERSON": "ci",
    "OPSLEDGER_COMMITTER_NAME": "opsledger CI",
    "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org",
}
FORGE = {
    "GIT_AUTHOR_NAME": "Forge",
    "GIT_AUTHOR_EMAIL": "forge@example.org",
    "GIT_COMMITTER_NAME": "Forge",
    "GIT_COMMITTER_EMAIL": "forge@example.org",
}


def _clone(origin, folder, lab_state) -> Project:
    git(origin.parent, "clone", "-q", str(origin), str(folder))
    (folder / ".opsledger").mkdir()
    (folder / ".opsledger" / "lab").symlink_to(lab_state)
    return Project(folder)


def _said(out: str, change_id: str) -> str:
    """What a `ci apply` said of the change ("applied — success", ...), or "nothing pending"."""
    for line in out.splitlines():
        if line.startswith(f"{change_id}: "):
            return line.split(": ", 1)[1]
    assert "nothing pending" in out, out
    return "nothing pending"


def _ci_apply(project: Project) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "opsledger", "ci", "apply", "--env", "lab", "--push", "origin",
         "--wait", "1800"],
        cwd=project.root,
        env={**project.ansible_env(), "OPSLEDGER_PROJECT": str(project.root), **CI},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_the_scheduled_apply_runs_a_change_once_its_window_opens(
    converged_lab, workflow_repo, tmp_path, restore_db
):
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(workflow_repo.root), str(origin))
    shutil.copy(REPO_ROOT / "scripts" / "forge" / "protect-main", origin / "hooks" / "pre-receive")
    git(origin, "config", "opsledger.ciEmail", "ci@example.org")
    git(origin, "config", "opsledger.mergeEmail", "forge@example.org")
    lab_state = workflow_repo.lab_state_dir

    engineer = _clone(origin, tmp_path / "alice", lab_state)
    git(engineer.root, "checkout", "-q", "-b", "work-mem")
    params = engineer.root / "inventories/lab/group_vars/db/postgresql.yml"
    params.write_text(params.read_text().replace("work_mem: 8MB", "work_mem: 24MB"))
    opens = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=90)
    change, _ = request_change(
        engineer,
        title="Raise work_mem when the window opens",
        runbook="converge",
        requested_by="alice",
        reason="Merged before its window",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=opens,
        window_end=opens + dt.timedelta(hours=1),
    )
    commit_paths(engineer.root, [params, change.file.parent], f"Request {change.id}",
                 name="Alice Arnold", email="alice@example.org")  # fmt: skip
    approve_change(engineer, change.id, person="bob")
    git(engineer.root, "push", "-q", "origin", "work-mem")
    forge = _clone(origin, tmp_path / "forge", lab_state)
    git(forge.root, "merge", "-q", "--no-ff", "-m", "Merge work-mem", "origin/work-mem", env=FORGE)
    git(forge.root, "push", "-q", "origin", "HEAD:main")

    pushed = _clone(origin, tmp_path / "ci-push", lab_state)
    first = _ci_apply(pushed)
    out, err = first.communicate(timeout=1800)
    assert first.returncode == 0, out + err
    assert f"{change.id}: waiting" in out

    scheduled = _clone(origin, tmp_path / "ci-schedule", lab_state)
    while dt.datetime.now(dt.UTC) < opens:
        time.sleep(1)
    racing = [_ci_apply(p) for p in (scheduled, pushed)]
    results = [p.communicate(timeout=3600) for p in racing]
    assert [p.returncode for p in racing] == [0, 0], results
    said = sorted(_said(out, change.id) for out, _ in results)
    # The loser met the run ended ("already run"), still going between the winner's
    # write-ahead and final records ("running"), or fetched the final record and found nothing
    # pending: either way it ran nothing. Two "applied" (run twice) is never among them.
    assert "applied — success" in said, said
    loser = [s for s in said if s != "applied — success"]
    assert len(loser) == 1 and loser[0].startswith(("already run", "running", "nothing pending")), (
        said
    )
    runs = git(origin, "ls-tree", "--name-only", "main", block_file(change.id, "runs") + "/").stdout
    assert len([r for r in runs.split() if r.endswith("Z.json")]) == 1, runs

    auditor = _clone(origin, tmp_path / "auditor", lab_state)
    shown = subprocess.run(
        [sys.executable, "-m", "opsledger", "change", "show", change.id, "--log", "--json"],
        cwd=auditor.root, env={**auditor.ansible_env(), "OPSLEDGER_PROJECT": str(auditor.root)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (log,) = json.loads(shown.stdout)
    assert log["verified"]
    hosts = {e["host"] for e in log["entries"] if "host" in e}
    assert hosts == {"lab-db1", "lab-db2"}
    assert any(e.get("changed") and "postgresql" in e.get("role", "") for e in log["entries"])
    for host in ("lab-db1", "lab-db2"):
        shown = run_on_host(auditor, host, "sudo -u postgres psql -Atc 'SHOW work_mem'")
        assert shown.stdout.strip() == "24MB"
