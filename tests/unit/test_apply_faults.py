"""apply under faults, on real processes and real git repositories (no lab): the runbook acts
on this machine through ansible_connection=local, so there are real ansible-playbook processes
to kill, signal and race, and real commits to break."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from opsledger import procs
from opsledger.apply import apply_change
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git
from opsledger.layout import change_folder
from opsledger.lock import acquire, release
from opsledger.project import Project
from opsledger.records import read_runs
from opsledger.signoff import approve_change

from .conftest import START

OPSLEDGER = [sys.executable, "-m", "opsledger.cli"]
FORK = multiprocessing.get_context("fork")


def _cli(project, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root), "OPSLEDGER_PERSON": "ci"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(project, *args):
    return subprocess.Popen(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root), "OPSLEDGER_PERSON": "ci"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, timeout=300.0, what="condition"):
    """Poll until `predicate` holds. `timeout` only stops a wait that would never end: an apply
    on a loaded 2-core runner took more than 60 s to take its first step (it is no measure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _steps(project) -> list[str]:
    folder = project.root / "steps"
    return sorted(p.name for p in folder.glob("lab-*")) if folder.exists() else []


def _committed_subjects(project) -> list[str]:
    return git(project.root, "log", "--format=%s").stdout.splitlines()


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_a_run_is_recorded_ahead_then_finally_and_leaves_nothing_behind(local_repo, machine_locks):
    project, request = local_repo
    change_id = request(params={"steps": 1})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id, "--skip-verify")
    assert done.returncode == 0, done.stdout + done.stderr
    subjects = _committed_subjects(project)
    assert subjects[:2] == [
        f"Run {change_id}: success (local-steps on lab:lab-db1)",
        f"Run {change_id}: started",
    ]
    ledger = read_runs(project)
    assert [r.result for r in ledger.committed] == ["success"]
    assert ledger.started == [] and ledger.uncommitted == []
    (record,) = ledger.committed
    assert record.lock["backends"] == ["machine"] and record.stats["lab-db1"]["changed"] >= 1
    assert not (machine_locks / "lab" / "lab-db1.json").exists()
    assert not (project.state_dir / "runs").exists() or not any(
        (project.state_dir / "runs").iterdir()
    )


def test_kill_9_of_apply_ends_its_playbook_and_the_next_command_records_it(local_repo):
    """kill -9 left no record, no commit, lock files, and a playbook changing hosts on."""
    project, request = local_repo
    killed = request(params={"steps": 60, "delay": 0.25})
    approve_change(project, killed, person="bob")
    apply = _start(project, "apply", killed, "--skip-verify", "--json")
    _wait_for(lambda: "lab-db1-step-2" in _steps(project), what="the playbook's steps")
    # Written ahead: the started record is committed before the first task ran.
    (ahead,) = read_runs(project).started
    marker = ahead.record.runner["run"]
    assert ahead.record.result == "started" and marker.startswith(f"{killed}/")
    assert procs.run_processes(marker), "the playbook should be running"
    # Another checkout's run of the same change started in the same second (two CI jobs, the
    # unit suite beside the lab): the same run id, so the same OPSLEDGER_RUN. This guard once
    # ended it too, killing the lab's playbook mid-converge.
    same_id = procs.run_env(procs.new_marker(procs.run_name(marker)))
    assert same_id["OPSLEDGER_RUN"] == procs.run_name(marker)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], env={**os.environ, **same_id}
    )
    try:
        os.kill(apply.pid, signal.SIGKILL)
        apply.wait(10)
        # The playbook dies with its apply (its guard ends it), and stays dead.
        _wait_for(lambda: not procs.run_processes(marker), what="the playbook to end")
        taken = len(_steps(project))
        time.sleep(1.5)
        assert len(_steps(project)) == taken, "steps were taken after the apply died"
        assert taken < 60 + 1
        guard = ahead.record.runner["guard_pid"]
        _wait_for(lambda: not procs.alive(guard, ahead.record.runner["guard_start"]), what="guard")
        assert bystander.poll() is None, "the guard ended another run with the same run id"
    finally:
        bystander.kill()
        bystander.wait(10)

    # The next command (an emergency fix-forward on the same host) records the dead run as
    # interrupted and writes its takeover of the host's lock into its own record.
    fix = request(change_type="emergency", params={"steps": 1}, title="Fix forward")
    approve_change(project, fix, person="carol")
    after = _cli(project, "apply", fix, "--skip-verify")
    assert after.returncode == 0, after.stdout + after.stderr
    runs = {r.change: r for r in read_runs(project).committed}
    interrupted, fixed = runs[killed], runs[fix]
    assert interrupted.result == "interrupted"
    assert f"process {apply.pid} on " in interrupted.interruption["why"]
    assert interrupted.interruption["journal"] == "replayed"
    assert interrupted.interruption["last_task"] == "Take the steps"
    assert any(
        "no process of the run is left" in line for line in interrupted.interruption["guard"]
    )
    assert interrupted.stats["lab-db1"]["ok"] >= 2  # what the journal showed had run
    # ... and its job log, from the same journal, committed with the record.
    assert interrupted.log["hosts"] == ["lab-db1"] and interrupted.log["tasks"] >= 2
    shown = _cli(project, "change", "show", killed, "--log")
    assert "Mark the start" in shown.stdout and "sha256 matches" in shown.stdout
    assert interrupted.decision["allowed"] and interrupted.started_at == ahead.record.started_at
    assert any(
        f"lock of {killed} (ci, pid {apply.pid}" in note and "its process is gone" in note
        for note in fixed.lock["taken_over"]
    ), fixed.lock
    assert any("as interrupted" in note for note in fixed.lock["reconciled"]), fixed.lock
    shown = json.loads(_cli(project, "change", "show", killed, "--json").stdout)
    assert [r["result"] for r in shown["runs"]] == ["interrupted"]


def test_sigterm_cancels_records_and_releases(local_repo, machine_locks):
    project, request = local_repo
    change_id = request(params={"steps": 60, "delay": 0.25})
    approve_change(project, change_id, person="bob")
    apply = _start(project, "apply", change_id, "--skip-verify")
    _wait_for(lambda: "lab-db1-step-1" in _steps(project), what="the playbook's steps")
    apply.send_signal(signal.SIGTERM)
    out, err = apply.communicate(timeout=600)
    assert apply.returncode == 130, out + err
    (record,) = read_runs(project).committed
    assert record.result == "canceled" and record.rollback is None
    assert not (machine_locks / "lab" / "lab-db1.json").exists()
    assert record.runner["run"].startswith(f"{change_id}/")
    assert not procs.run_processes(record.runner["run"])


def test_a_record_git_refuses_is_reported_not_counted_and_committed_by_the_next_command(
    local_repo,
):
    """The commit failed: apply said only `git add failed`, no --json result, and the loose
    file then counted as applied (apply refused, --pending skipped it, show listed success)."""
    project, request = local_repo
    change_id = request(params={"steps": 1, "lock_git": True})
    approve_change(project, change_id, person="bob")
    first = _cli(project, "apply", change_id, "--skip-verify", "--json")
    assert first.returncode == 1, first.stdout + first.stderr
    result = _json_lines(first.stdout)[-1]
    assert result["event"] == "result" and result["result"] == "success"
    assert result["committed"] is False and result["commit"] is None
    record = Path(result["record"])
    assert record.exists() and record.parent.name == "runs"
    assert "index.lock" in result["commit_problem"]
    assert "opsledger apply --pending" in result["commit_problem"]
    assert read_runs(project).committed == []

    # While git still refuses: shown as not committed, and nothing runs.
    shown = json.loads(_cli(project, "change", "show", change_id, "--json").stdout)
    assert shown["runs"] == []
    assert shown["uncommitted_runs"] == [
        {"path": str(record.relative_to(project.root)), "result": "success"}
    ]
    steps = _steps(project)
    blocked = _cli(project, "apply", change_id, "--skip-verify")
    assert blocked.returncode == 2, blocked.stdout + blocked.stderr
    assert str(record.relative_to(project.root)) in blocked.stderr
    assert "ended success is not committed" in blocked.stderr and "Traceback" not in blocked.stderr
    assert _steps(project) == steps

    # Git fixed: the next command commits the record, and then it counts.
    (project.root / ".git" / "index.lock").unlink()
    pending = _cli(project, "apply", "--pending")
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert "nothing pending" in pending.stdout
    assert [r.result for r in read_runs(project).committed] == ["success"]
    assert _committed_subjects(project)[0] == (
        f"Run {change_id}: success (local-steps on lab:lab-db1) (committed later)"
    )
    again = _cli(project, "apply", change_id)
    assert again.returncode == 2 and "already applied successfully" in again.stderr


def test_when_git_refuses_the_write_ahead_record_nothing_runs(local_repo, machine_locks):
    project, request = local_repo
    change_id = request(params={"steps": 1})
    approve_change(project, change_id, person="bob")
    (project.root / ".git" / "index.lock").write_text("")  # a git that never finished
    refused = _cli(project, "apply", change_id, "--skip-verify")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cannot commit the run's write-ahead record" in refused.stderr
    assert "nothing was run" in refused.stderr and "Traceback" not in refused.stderr
    assert _steps(project) == []
    assert not list((change_folder(project.root, change_id)).glob("runs/*"))
    assert not (machine_locks / "lab" / "lab-db1.json").exists()  # released


def _hold(root: str, ready, stop) -> None:
    held = acquire(
        Project(Path(root)), environment="lab", hosts=["lab-db1"], change="CHG-0099", owner="dave"
    )
    ready.set()
    stop.wait(300)
    release(held)


def test_apply_wait_decides_again_once_it_holds_the_locks(local_repo, host_lock_refused):
    """A change ran 6 s after its window closed, and was recorded as a success."""
    project, request = local_repo
    window = (START, START + dt.timedelta(hours=1))
    change_id = request(params={"steps": 1}, window=window)
    approve_change(project, change_id, person="bob")
    ready, stop = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(project.root), ready, stop))
    holder.start()
    assert ready.wait(60)
    # The holder lets go 4 s after apply met the host held, so apply waits more than the 2 s
    # left of the window whatever the machine's speed. (A holder that let go 4 s after it took
    # the host let a loaded apply, slow to get to its lock, find it free and run.)
    refused = host_lock_refused

    def let_go() -> None:
        if refused.wait(300):
            time.sleep(4)  # at least this long: how much longer is the machine's speed
        stop.set()

    threading.Thread(target=let_go, daemon=True).start()
    almost_closed = window[1] - dt.timedelta(seconds=2)
    try:
        with pytest.raises(OpsledgerError) as err:
            apply_change(project, change_id, now=almost_closed, wait=300, skip_verify=True)
    finally:
        refused.set()
        stop.set()
        holder.join(30)
    assert err.value.exit_code == 3
    assert "denied by rule change window after waiting" in str(err.value)
    assert _steps(project) == []  # nothing ran
    ledger = read_runs(project)
    assert ledger.committed == [] and ledger.started == [] and ledger.uncommitted == []


def test_two_approved_overlapping_changes_run_one_after_the_other(local_repo):
    """They denied each other for their whole windows while --pending said both were waiting."""
    from opsledger.pending import apply_pending

    project, request = local_repo
    window = (START, START + dt.timedelta(hours=1))
    first = request(targets="db", params={"steps": 1}, window=window)
    second = request(targets="lab-db1", params={"steps": 1}, window=window)
    for change_id in (first, second):
        approve_change(project, change_id, person="bob")
    outcome = apply_pending(project, now=START + dt.timedelta(minutes=5), skip_verify=True)
    assert [(i.change_id, i.action, i.why) for i in outcome.items] == [
        (first, "applied", "success"),
        (second, "applied", "success"),
    ]
    assert outcome.ok
    assert [r.change for r in read_runs(project).committed] == [first, second]


def test_a_pending_change_that_can_never_run_fails_the_pipeline(local_repo):
    project, request = local_repo
    window = (START, START + dt.timedelta(hours=1))
    missed = request(params={"steps": 1}, window=window)
    approve_change(project, missed, person="bob")
    later = (window[1] + dt.timedelta(minutes=1)).isoformat()
    result = _cli(project, "apply", "--pending", "--at", later)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{missed}: cannot run — its window closed at" in result.stdout
    assert f"opsledger change withdraw {missed}" in result.stdout
    assert "can never run as they stand" in result.stderr
    withdrawn = _cli(project, "change", "withdraw", missed, "--as", "alice", "--reason", "Missed")
    assert withdrawn.returncode == 0, withdrawn.stderr
    result = _cli(project, "apply", "--pending", "--at", later)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{missed}: withdrawn — by alice at" in result.stdout


def test_a_write_ahead_record_whose_commit_fails_after_git_add_leaves_nothing_staged(
    local_repo, machine_locks
):
    """`git add` took the started record, then `git commit` failed (here: signing demanded by
    the repository's config with a key that is not there): the file was removed but stayed
    staged, so the next plain `git commit` recorded a run that never started."""
    project, request = local_repo
    change_id = request(params={"steps": 1})
    approve_change(project, change_id, person="bob")
    for key, value in (
        ("commit.gpgsign", "true"),
        ("gpg.format", "ssh"),
        ("user.signingkey", str(project.root / "no-such-key")),
    ):
        git(project.root, "config", key, value)
    refused = _cli(project, "apply", change_id, "--skip-verify")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cannot commit the run's write-ahead record" in refused.stderr
    assert _steps(project) == []
    assert git(project.root, "diff", "--cached", "--name-only").stdout == ""
    assert git(project.root, "status", "--porcelain").stdout == ""


def _hold_as_run(root: str, run: str, ready) -> None:
    held = acquire(
        Project(Path(root)), environment="lab", hosts=["lab-db1"], change="CHG-0001", owner="ci"
    )
    held.note(run=run)
    ready.set()
    time.sleep(120)


def test_a_run_that_died_while_we_waited_for_its_hosts_is_recorded_before_ours(local_repo):
    """apply --wait settled earlier runs before waiting only: the run whose hosts it waited for
    (alive then, dead by the time the lock was free) stayed `started` while ours ran, and our
    record did not say it had been reconciled."""
    from opsledger.gitrepo import commit_paths
    from opsledger.records import Record, started_record_path, write_record

    project, request = local_repo
    dead = request(params={"steps": 1})
    approve_change(project, dead, person="bob")
    fix = request(change_type="emergency", params={"steps": 1}, title="Fix forward")
    approve_change(project, fix, person="carol")
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = f"{dead}/{started.strftime('%Y%m%dT%H%M%SZ')}"
    playbook = subprocess.Popen(  # the dead apply's playbook, still running for a while
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, **procs.run_env(run_id)},
    )
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_as_run, args=(str(project.root), run_id, ready))
    holder.start()
    try:
        assert ready.wait(60)
        runner = {
            "person": "ci",
            "machine": procs.machine(),
            "machine_key": procs.machine_key(),
            "pid": holder.pid,
            "pid_start": procs.start_time(holder.pid),
            "run": run_id,
        }
        ahead = write_record(
            started_record_path(project, dead, started),
            Record(
                kind="run",
                environment="lab",
                result="started",
                started_at=started.isoformat(),
                finished_at="",
                change=dead,
                runbook="local-steps",
                targets="lab-db1",
                hosts=["lab-db1"],
                runner=runner,
            ),
        )
        commit_paths(project.root, [ahead], f"Run {dead}: started", name="CI", email="ci@x.org")
        waiting = _start(project, "apply", fix, "--skip-verify", "--wait", "90")
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(waiting.stderr), daemon=True)
        reader.start()
        _wait_for(lambda: any("locking lab-db1" in line for line in said), what="the wait")
        time.sleep(1)  # settled (the run still lived) and now waiting for lab-db1
        assert waiting.poll() is None and _steps(project) == []
    finally:
        playbook.kill()
        playbook.wait()
        holder.kill()
        holder.join(10)
    waiting.wait(600)
    reader.join(10)
    assert waiting.returncode == 0, "".join(said)
    runs = {r.change: r for r in read_runs(project).committed}
    assert runs[dead].result == "interrupted"
    assert any("as interrupted" in note for note in runs[fix].lock["reconciled"]), runs[fix].lock
    subjects = _committed_subjects(project)
    interrupted_at = next(i for i, s in enumerate(subjects) if s.startswith(f"Run {dead}: inter"))
    assert interrupted_at > subjects.index(f"Run {fix}: started"), subjects  # newest first


def test_a_change_whose_success_is_not_yet_committed_cannot_be_withdrawn(local_repo):
    """Withdraw judged committed records only: a run whose record git had refused was withdrawn,
    and the next command then committed its success: a change both withdrawn and applied."""
    project, request = local_repo
    change_id = request(params={"steps": 1, "lock_git": True})
    approve_change(project, change_id, person="bob")
    first = _cli(project, "apply", change_id, "--skip-verify")
    assert first.returncode == 1, first.stdout + first.stderr
    (project.root / ".git" / "index.lock").unlink()  # git works again
    withdrawn = _cli(project, "change", "withdraw", change_id, "--as", "alice", "--reason", "Oops")
    assert withdrawn.returncode == 2, withdrawn.stdout + withdrawn.stderr
    assert "cannot be withdrawn" in withdrawn.stderr and "Traceback" not in withdrawn.stderr
    assert not (change_folder(project.root, change_id) / "withdrawn.yml").exists()
    assert [r.result for r in read_runs(project).committed] == ["success"]  # committed now


def test_a_run_killed_in_the_flat_layout_is_recorded_in_the_block_a_staged_move_took_it_to(
    local_repo,
):
    """The interrupted run's final record goes where the change lies now: HEAD's started
    record is flat, but a move to the block is staged; writing at HEAD's path recreated the
    flat folder and left the change in both layouts."""
    project, request = local_repo
    killed = request(params={"steps": 60, "delay": 0.25})
    block, flat = change_folder(project.root, killed), project.root / "changes" / killed
    git(project.root, "mv", str(block), str(flat))
    git(project.root, "commit", "-qm", f"{killed} in the legacy flat layout")
    approve_change(project, killed, person="bob")
    apply = _start(project, "apply", killed, "--skip-verify", "--json")
    _wait_for(lambda: "lab-db1-step-2" in _steps(project), what="the playbook's steps")
    (ahead,) = read_runs(project).started
    assert ahead.path.startswith(f"changes/{killed}/runs/"), ahead.path
    os.kill(apply.pid, signal.SIGKILL)
    apply.wait(10)
    _wait_for(lambda: not procs.run_processes(ahead.record.runner["run"]), what="the playbook")
    guard = ahead.record.runner["guard_pid"]
    _wait_for(lambda: not procs.alive(guard, ahead.record.runner["guard_start"]), what="guard")
    git(project.root, "mv", str(flat), str(block))  # staged, not committed
    shown = _cli(project, "change", "show", killed, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert not flat.exists(), sorted(p.name for p in flat.rglob("*"))
    assert [r["result"] for r in json.loads(shown.stdout)["runs"]] == ["interrupted"]
