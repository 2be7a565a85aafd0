"""The GitOps loop with local git, as a team runs it on a forge: a bare origin whose pre-receive
hook protects main (scripts/forge/protect-main: fast-forward only, reviewed merges, CI may add
records only), an engineer's clone, a forge merge, and CI clones on fresh runners (no git
identity of their own) running `ci apply --push origin` the way the push-triggered and the
scheduled pipelines do. The runbook acts on this machine (ansible_connection=local)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsledger.errors import EXIT_LOCKED, OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import block_file
from opsledger.origin_records import OriginRecords
from opsledger.project import Project
from opsledger.signoff import approve_change, request_change

from ..conftest import REPO_ROOT
from .conftest import make_steps_folder

HOOK = REPO_ROOT / "scripts" / "forge" / "protect-main"
ALICE = {
    "GIT_AUTHOR_NAME": "Alice Arnold",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Arnold",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}
FORGE = {
    "GIT_AUTHOR_NAME": "Forge",
    "GIT_AUTHOR_EMAIL": "forge@example.org",
    "GIT_COMMITTER_NAME": "Forge",
    "GIT_COMMITTER_EMAIL": "forge@example.org",
}
# How long a run may wait for the host lock another run holds: a bound a loaded runner cannot
# outrun (the winner's whole run, Ansible included, took minutes there), never a measure. A
# loser that gave up waiting would exit 4 and fail the pipeline, which is not what is tested.
WAIT = "900"
CI = {
    "OPSLEDGER_PERSON": "ci",
    "OPSLEDGER_COMMITTER_NAME": "opsledger CI",
    "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org",
}


def fresh_runner(home: Path) -> dict[str, str]:
    """The environment of a fresh CI runner: no global or system git config, and git may not
    guess an identity (`user.useConfigOnly`), as on a runner whose host name has no domain."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_", "EMAIL")) and k not in ("OPSLEDGER_SIGNING_KEY",)
    }
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="user.useConfigOnly",
        GIT_CONFIG_VALUE_0="true",
    )
    return env


def protected_origin(project: Project, folder: Path) -> Path:
    """A bare clone of the project whose pre-receive hook protects main."""
    origin = folder / "origin.git"
    git(folder, "clone", "-q", "--bare", str(project.root), str(origin))
    shutil.copy(HOOK, origin / "hooks" / "pre-receive")
    git(origin, "config", "opsledger.ciEmail", "ci@example.org")
    git(origin, "config", "opsledger.mergeEmail", "forge@example.org")
    return origin


def forge_merge(origin: Path, branch: str, folder: Path) -> None:
    """The forge's merge button: a merge commit by the forge identity, pushed to main."""
    work = folder / f"forge-{branch}"
    git(folder, "clone", "-q", str(origin), str(work))
    git(work, "merge", "-q", "--no-ff", "-m", f"Merge {branch}", f"origin/{branch}", env=FORGE)
    pushed = git(work, "push", "-q", "origin", "HEAD:main", check=False)
    assert pushed.returncode == 0, pushed.stderr


def ci_clone(origin: Path, folder: Path, name: str) -> tuple[Path, dict[str, str]]:
    runner = folder / name
    env = fresh_runner(folder / f"{name}-home")
    subprocess.run(["git", "clone", "-q", str(origin), str(runner)], env=env, check=True)
    make_steps_folder(runner)  # the runner's own, git-ignored
    return runner, {**env, **CI, "OPSLEDGER_PROJECT": str(runner)}


def opsledger(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 2 * int(WAIT)) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def origin_runs(origin: Path, change_id: str) -> list[str]:
    listing = git(
        origin, "ls-tree", "-r", "--name-only", "main", block_file(change_id, "runs") + "/"
    )
    return sorted(p.rsplit("/", 1)[-1] for p in listing.stdout.split())


def request_later(project: Project, opens_in: float, **params) -> tuple[str, dt.datetime]:
    """Alice's change on a branch, its window opening `opens_in` seconds from now; bob approves."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = now + dt.timedelta(seconds=opens_in)
    midnight = dt.datetime.combine(start.date() + dt.timedelta(days=1), dt.time(0), dt.UTC)
    end = min(start + dt.timedelta(minutes=30), midnight)
    if end - start < dt.timedelta(minutes=3):
        pytest.skip("too close to midnight UTC for a window inside the lab's daily window")
    git(project.root, "checkout", "-q", "-b", "chg")
    change, _ = request_change(
        project,
        title="Steps once the window opens",
        runbook="local-steps",
        requested_by="alice",
        reason="Merged before its window",
        targets="lab-db1",
        params={"steps": 3, **params},
        window_start=start,
        window_end=end,
    )
    commit_paths(
        project.root, [change.file.parent], f"Request {change.id}", name="Alice Arnold",
        email="alice@example.org",
    )  # fmt: skip
    approve_change(project, change.id, person="bob")
    git(project.root, "push", "-q", "origin", "chg")
    return change.id, start


@pytest.fixture
def loop(local_repo, tmp_path):
    """(engineer project, origin, request): the engineer's clone pushes to a protected origin."""
    project, _ = local_repo
    # CI verifies every run; the local runbook's hosts are this machine: nothing to verify.
    runbook = project.root / "runbooks" / "local-steps" / "runbook.yml"
    runbook.write_text(runbook.read_text().replace("suites: [os_baseline]", "suites: []"))
    commit_paths(project.root, [runbook], "Local steps: nothing to verify", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    origin = protected_origin(project, tmp_path)
    git(project.root, "remote", "add", "origin", str(origin))
    git(project.root, "fetch", "-q", "origin")
    return project, origin


# What two racing `ci apply` runs may say of one change, sorted: one applies it, and the loser
# - waited for the host lock and found the run ended ("already run"),
# - fetched the origin after the winner's write-ahead record and before its final one, or lost
#   its own claim to it ("running", how a busy runner meets it),
# - or started so late that it fetched the final record: nothing is pending for it.
# Either way it ran nothing; two "applied" (a change run twice) is never among them.
LOSERS = (
    ["already run", "applied"],
    ["applied", "running"],
    ["applied", "nothing pending"],
)


def _action(out: str, change_id: str) -> str:
    """What a `ci apply` said of the change ("applied", "running", ...), or "nothing pending"."""
    for line in out.splitlines():
        if line.startswith(f"{change_id}:"):
            return line.split(":", 1)[1].split("—")[0].strip()
    assert "nothing pending" in out, out
    return "nothing pending"


def _wait_until(moment: dt.datetime) -> None:
    while dt.datetime.now(dt.UTC) < moment:
        time.sleep(0.2)


def test_a_change_merged_before_its_window_is_applied_once_by_the_scheduled_run(loop, tmp_path):
    """The apply pipeline ran only on a push, and --pending skipped a change whose window had
    not opened: a change merged before its window never ran. Now the scheduled run applies it
    once the window is open, racing the push-triggered run from another clone: one run."""
    project, origin = loop
    change_id, opens = request_later(project, opens_in=20, delay=0.5)
    forge_merge(origin, "chg", tmp_path)

    # The push-triggered apply right after the merge: the window has not opened yet. Judged
    # at a moment before it on purpose: a loaded runner took more than the 20 s to get here,
    # found the window open and applied the change (a right answer to another question).
    _, pushed_env = ci_clone(origin, tmp_path, "runner-push")
    before = (opens - dt.timedelta(seconds=10)).isoformat()
    code, out = finish(
        opsledger(
            pushed_env, "ci", "apply", "--env", "lab", "--push", "origin", "--wait", WAIT,
            "--at", before,
        )
    )  # fmt: skip
    assert code == 0, out
    assert f"{change_id}: waiting" in out and "change window" in out, out
    assert origin_runs(origin, change_id) == []

    # The window opens; the scheduled run and another push-triggered run race from two clones
    # of the origin on fresh runners (the host lock is machine-wide, as on one runner host).
    _, scheduled_env = ci_clone(origin, tmp_path, "runner-schedule")
    _wait_until(opens)
    racing = [
        opsledger(env, "ci", "apply", "--env", "lab", "--push", "origin", "--wait", WAIT)
        for env in (scheduled_env, pushed_env)
    ]
    results = [finish(proc) for proc in racing]
    assert [code for code, _ in results] == [0, 0], results
    actions = sorted(_action(out, change_id) for _, out in results)
    assert actions in LOSERS, results
    runs = origin_runs(origin, change_id)
    finals = [r for r in runs if r.endswith("Z.json")]
    assert len(finals) == 1 and len([r for r in runs if r.endswith(".started.json")]) == 1, runs
    record = json.loads(
        git(origin, "show", f"main:{block_file(change_id, 'runs', finals[0])}").stdout
    )
    assert record["result"] == "success"
    assert dt.datetime.fromisoformat(record["started_at"]) >= opens
    # Records on the origin are the CI identity's, though the runners had none of their own.
    committers = git(origin, "log", "--format=%ce", "-2", "main").stdout.split()
    assert set(committers) == {"ci@example.org"}, committers

    # The next scheduled run finds nothing to do: never twice.
    _, again_env = ci_clone(origin, tmp_path, "runner-next")
    code, out = finish(
        opsledger(again_env, "ci", "apply", "--env", "lab", "--push", "origin", "--wait", WAIT)
    )
    assert code == 0 and "nothing pending" in out, out
    assert origin_runs(origin, change_id) == runs


def test_controllers_without_a_shared_lock_still_run_a_change_once(loop, tmp_path):
    """Two controllers that do not share a host lock (two machines, an environment whose only
    lock backend is the machine's): the write-ahead record pushed to the origin is the claim,
    and the push that does not fast-forward loses it before anything runs."""
    project, origin = loop
    change_id, _ = request_later(project, opens_in=0, delay=0.3)
    forge_merge(origin, "chg", tmp_path)
    envs = []
    for name in ("machine-a", "machine-b"):
        _, env = ci_clone(origin, tmp_path, name)
        locks = tmp_path / f"{name}-locks"
        locks.mkdir()
        envs.append({**env, "OPSLEDGER_LOCK_DIR": str(locks)})
    racing = [opsledger(env, "ci", "apply", "--env", "lab", "--push", "origin") for env in envs]
    results = [finish(proc) for proc in racing]
    assert [code for code, _ in results] == [0, 0], results
    actions = sorted(_action(out, change_id) for _, out in results)
    assert actions in LOSERS, results
    runs = origin_runs(origin, change_id)
    assert len([r for r in runs if r.endswith("Z.json")]) == 1, runs
    assert len([r for r in runs if r.endswith(".started.json")]) == 1, runs
    steps = [
        p for p in tmp_path.glob("machine-*/steps/lab-db1-step-*") if p.is_file()
    ]  # fmt: skip
    assert len(steps) == 3, steps  # one run's three steps, on one machine


def test_a_claim_lost_to_a_run_started_in_the_same_second_is_lost_not_a_conflict(loop, tmp_path):
    """Write-ahead records are named by the second a run starts: two controllers starting in
    the same second write the same file name. The loser took the origin's record for its own,
    rebased onto it, hit an add/add conflict and failed its pipeline (exit 1)."""
    _, origin = loop
    started = "changes/CHG-0001/runs/20261201T200000Z.started.json"
    clones = []
    for machine in ("machine-a", "machine-b"):
        work = tmp_path / machine
        git(tmp_path, "clone", "-q", str(origin), str(work))
        path = work / started
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"kind": "run", "result": "started", "machine": machine}))
        commit_paths(work, [path], "Run CHG-0001: started", name="opsledger CI",
                     email="ci@example.org")  # fmt: skip
        clones.append(Project(work))
    first, second = clones
    OriginRecords.of(first, "origin").claim("CHG-0001", first.root / started)
    before = git(second.root, "rev-parse", "HEAD~1").stdout
    with pytest.raises(OpsledgerError) as lost:
        OriginRecords.of(second, "origin").claim("CHG-0001", second.root / started)
    assert lost.value.exit_code == EXIT_LOCKED, lost.value
    assert "another controller claimed this run first" in str(lost.value)
    assert git(second.root, "rev-parse", "HEAD").stdout == before  # its claim dropped
    assert not (second.root / started).exists()
    shown = json.loads(git(origin, "show", f"main:{started}").stdout)
    assert shown["machine"] == "machine-a"


def test_records_reach_the_protected_main_from_a_fresh_runner_and_nothing_else_does(loop, tmp_path):
    """`git pull --rebase` on a fresh runner stopped with "unable to auto-detect email address";
    a protected main refuses everything but the CI identity's records and reviewed merges."""
    project, origin = loop
    runner, env = ci_clone(origin, tmp_path, "runner")
    # A drift record committed on the runner (as the evidence identity) ...
    record = runner / "records" / "drift" / "20261201T051700Z-lab.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"kind": "drift", "environment": "lab", "result": "success"}))
    subprocess.run(["git", "-C", str(runner), "add", "records"], env=env, check=True)
    subprocess.run(
        ["git", "-C", str(runner), "commit", "-q", "-m", "Drift lab: in sync"],
        env={
            **env,
            "GIT_AUTHOR_NAME": "opsledger CI",
            "GIT_AUTHOR_EMAIL": "ci@example.org",
            "GIT_COMMITTER_NAME": "opsledger CI",
            "GIT_COMMITTER_EMAIL": "ci@example.org",
        },
        check=True,
    )
    # ... while a reviewed pull request is merged: the runner's push must rebase.
    (project.root / "docs.md").write_text("notes\n")
    git(project.root, "checkout", "-q", "-b", "docs")
    commit_paths(project.root, [project.root / "docs.md"], "Notes", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    git(project.root, "push", "-q", "origin", "docs")
    forge_merge(origin, "docs", tmp_path)

    # A plain `git pull --rebase` cannot commit on this runner: that is the bug.
    plain = subprocess.run(
        ["git", "-C", str(runner), "pull", "-q", "--rebase", "origin", "main"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plain.returncode != 0 and "identity" in plain.stderr.lower() + plain.stdout.lower()
    subprocess.run(["git", "-C", str(runner), "rebase", "--abort"], env=env, check=False)

    code, out = finish(opsledger(env, "ci", "push", "--remote", "origin"))
    assert code == 0, out
    assert "pushed: 1 commit(s) to origin/main" in out
    tip = git(origin, "log", "-1", "--format=%ce %s", "main").stdout.strip()
    assert tip == "ci@example.org Drift lab: in sync"
    assert git(origin, "cat-file", "-e", "main:docs.md", check=False).returncode == 0

    # CI touching desired state is refused by the origin, and so is an engineer's direct push.
    role = runner / "roles" / "os_baseline" / "defaults" / "main.yml"
    role.write_text(role.read_text() + "# edited by CI\n")
    subprocess.run(
        ["git", "-C", str(runner), "commit", "-q", "-am", "CI edits a role"],
        env={**env, "GIT_AUTHOR_NAME": "CI", "GIT_AUTHOR_EMAIL": "ci@example.org",
             "GIT_COMMITTER_NAME": "CI", "GIT_COMMITTER_EMAIL": "ci@example.org"},
        check=True,
    )  # fmt: skip
    before = git(origin, "rev-parse", "main").stdout
    code, out = finish(opsledger(env, "ci", "push", "--remote", "origin"))
    assert code == 1, out
    assert "modifies roles/os_baseline/defaults/main.yml, which is not evidence" in out, out
    assert "Traceback" not in out
    git(project.root, "checkout", "-q", "main")
    git(project.root, "pull", "-q", "origin", "main")
    (project.root / "site.yml").write_text((project.root / "site.yml").read_text() + "\n")
    commit_paths(project.root, [project.root / "site.yml"], "Direct edit", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    direct = git(project.root, "push", "-q", "origin", "HEAD:main", check=False)
    assert direct.returncode != 0 and "open a pull request" in direct.stderr
    assert git(origin, "rev-parse", "main").stdout == before


def test_with_the_pusher_known_the_ci_adds_records_only_and_nobody_else_adds_them(loop, tmp_path):
    """A committer e-mail is whatever the committer typed: the deploy key could push a commit
    committed as the forge's merge identity and so change desired state, and an engineer could
    push a run record committed as the CI identity. With the forge's pusher variable set
    (GitLab's GL_ID and the like, simulated here), the push says who it is."""
    _, origin = loop
    git(origin, "config", "opsledger.pusherVariable", "GL_ID")
    git(origin, "config", "opsledger.ciPusher", "key-7")

    def commit_and_push(work: Path, path: str, who: dict[str, str], pusher: str | None):
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(target.read_text() + "# x\n" if target.exists() else "{}\n")
        git(work, "add", path)
        git(work, "commit", "-q", "-m", f"Add {path}", env=who)
        env = {"GL_ID": pusher} if pusher is not None else {}
        # git passes its environment to the hook of a local origin, as a forge passes GL_ID
        pushed = git(work, "push", "-q", "origin", "HEAD:main", env=env, check=False)
        if pushed.returncode:
            git(work, "reset", "-q", "--hard", "HEAD~1")
        return pushed

    as_ci = {f"GIT_{p}_{k}": v for p in ("AUTHOR", "COMMITTER")
             for k, v in (("NAME", "opsledger CI"), ("EMAIL", "ci@example.org"))}  # fmt: skip
    work = tmp_path / "pushes"
    git(tmp_path, "clone", "-q", str(origin), str(work))
    record = "records/drift/20261201T051700Z-lab.json"
    before = git(origin, "rev-parse", "main").stdout

    # The deploy key's commit dressed as the forge's merge: refused.
    role = "roles/os_baseline/defaults/main.yml"
    forged = commit_and_push(work, role, FORGE, "key-7")
    assert forged.returncode != 0
    assert "pushed by the CI (key-7): modifies roles/os_baseline" in forged.stderr
    # An engineer's forged run record: refused.
    fake = commit_and_push(work, "changes/CHG-0001/runs/20261201T200000Z.json", as_ci, "user-3")
    assert fake.returncode != 0
    assert "carries the CI identity ci@example.org but user-3 pushed it" in fake.stderr
    # A push whose pusher the forge does not tell: refused.
    unknown = commit_and_push(work, record, as_ci, None)
    assert unknown.returncode != 0 and "did not say who pushes ($GL_ID is unset)" in unknown.stderr
    assert git(origin, "rev-parse", "main").stdout == before

    # The CI adding a record, and a reviewed merge pushed by whoever pressed the button: taken.
    assert commit_and_push(work, record, as_ci, "key-7").returncode == 0
    assert commit_and_push(work, "docs.md", FORGE, "user-3").returncode == 0
    assert git(origin, "log", "-2", "--format=%ce", "main").stdout.split() == [
        "forge@example.org",
        "ci@example.org",
    ]
