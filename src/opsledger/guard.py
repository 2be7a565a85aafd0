"""The guard of one run: ends the run's playbook when its apply dies, then frees the hosts.

ansible-runner starts ansible-playbook in its own session with SIGHUP ignored, so when the
apply process is killed (kill -9, OOM, a CI runner torn down) the playbook used to run on,
changing hosts nobody watched, while the lock said the run was dead. Each apply therefore
starts this guard in a session of its own:

- it inherits the apply's flock'd lock files, so the machine lock is held while either lives;
- it reads a pipe from the apply; "done" means the apply ended normally and it just exits;
- end of file without "done" means the apply died: it ends every process carrying the run's
  marker (`OPSLEDGER_RUN_MARKER=<run>#<token>`: ansible-playbook, its workers, their ssh
  clients; never another checkout's run of the same change in the same second) with
  SIGTERM, then SIGKILL after a grace period, waits until none is left, frees the run's origin
  locks, and exits — only then does the kernel drop the flock and can another run take the
  hosts. The interrupted run's record is written by the next command (reconcile.py).

Run as `python -m opsledger.guard MARKER` with the origin lease (JSON or `null`) on the first
line of stdin.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from opsledger import procs
from opsledger.gitrepo import git_env

GRACE = 3.0  # seconds between SIGTERM and SIGKILL: ansible-playbook stops its workers on TERM
PATIENCE = 600.0  # how long to wait for processes stuck in uninterruptible sleep


def _log(handle: IO[str] | None, message: str) -> None:
    if handle:
        handle.write(f"{dt.datetime.now(dt.UTC).isoformat()} {message}\n")
        handle.flush()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        check=False,
        env=git_env(),
    )


def _free(root: Path, remote: str, ref: str, ours: str, run: str) -> str:
    """Delete one origin lock ref of the dead run, by CAS; what happened, for the log.

    The heartbeat renewed the lock since the guard was told its commit, so the ref's commit now
    is checked for the run it names: ours (this run) is freed, anyone else's is left alone.
    """
    current = _git(root, "ls-remote", remote, ref).stdout.split("\t", 1)[0].strip()
    if not current:
        return f"{ref}: already gone"
    if current != ours:
        _git(root, "fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, ref)
        body = _git(root, "log", "-1", "--format=%B", current).stdout
        try:
            named = json.loads(body).get("run")
        except (ValueError, AttributeError):
            named = None
        if named != run:
            return f"{ref}: held by another run now, left alone"
    proc = _git(root, "push", "-q", "--no-verify", remote, f"--force-with-lease={ref}:{current}",
                f":{ref}")  # fmt: skip
    return f"freed {ref}" if proc.returncode == 0 else f"{ref}: {proc.stderr.strip()}"


def main(argv: list[str]) -> int:
    run = argv[1]
    log = open(argv[2], "a") if len(argv) > 2 else None  # noqa: SIM115 - open for the whole life
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    origin = json.loads(sys.stdin.readline() or "null")
    lines = [line.strip() for line in sys.stdin]
    if "done" in lines:
        return 0
    _log(log, f"apply of {run} died: ending its processes {procs.run_processes(run)}")
    left = procs.end_run_processes(run, grace=GRACE, patience=PATIENCE)
    if left:
        _log(log, f"still running after {PATIENCE} s, keeping the hosts locked: {left}")
        while procs.run_processes(run):
            time.sleep(5)
    _log(log, "no process of the run is left")
    if origin:
        for ref, ours in origin["refs"].items():
            _log(log, _free(Path(origin["root"]), origin["remote"], ref, ours, run))
    return 0


class Guard:
    """The apply's side: start the guard, tell it when the run ended normally."""

    def __init__(self, run: str, fds: list[int], origin: dict | None, log: Path | None) -> None:
        args = [sys.executable, "-m", "opsledger.guard", run] + ([str(log)] if log else [])
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=fds,
            start_new_session=True,  # a terminal's Ctrl-C or a killed process group spares it
            text=True,
            env={
                k: v for k, v in os.environ.items() if k not in (procs.RUN_MARKER, procs.RUN_NAME)
            },
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(origin) + "\n")
        self.process.stdin.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def done(self) -> None:
        """The run ended here (recorded or not): the guard must not touch anything."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.write("done\n")
            self.process.stdin.close()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
