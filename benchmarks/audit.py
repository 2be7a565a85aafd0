#!/usr/bin/env python3
"""How long audit takes on a big history, next to git itself reading that history.

Builds a synthetic repository (this project's policies, runbooks, roles and inventories, then
`--commits` commits of which `--changes` changes are requested, approved and run, the rest
ordinary edits of notes), then times, side by side in this run:

- `git log --name-status` over the whole history (the floor: git reading it once);
- `opsledger audit log` and `opsledger audit check` (one `git log` stream each, plus the
  files of every change);

and prints each audit's time as a ratio to git's, and each lane's peak resident memory (run
it at two sizes: an audit that streams the history grows with the changes, not the commits).
Nothing here needs the lab.

A lane that measures an error path is refused by construction: before anything is timed,
`audit log` must list every synthetic change once, run once with result `success` (its
request, approval and run record were judged valid), and `audit check` must find nothing on
this clean history; otherwise the benchmark stops (exit 1) and says what it saw.

`--real-use` adds a second repository shaped like real use: every commit belongs to a change
(request, approval, run), `--real-use` changes of them (10,000 by default when given).

`--repo DIR` keeps the synthetic repository in DIR (built there when DIR does not exist yet,
reused as it is when it does: to profile a lane, or to time it again without building).

Usage: .venv/bin/python benchmarks/audit.py [--commits 100000] [--changes 5000] [--rounds 3]
                                            [--real-use 10000] [--repo DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARTS = (
    "policies",
    "runbooks",
    "roles",
    "tests/infra",  # runbooks name their verification suites: without them no change loads
    "inventories",
    "vault-passwords",
    "ansible.cfg",
    "site.yml",
)
START = 1_700_000_000  # 2023-11-14, seconds since the epoch
CONTENT = "ab" * 32
POLICY = "cd" * 32


def _blob(path: str, text: str) -> bytes:
    data = text.encode()
    return f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n"


def _commit(mark: int, when: int, who: tuple[str, str], message: str, files: list[bytes]) -> bytes:
    name, email = who
    msg = message.encode()
    head = (
        f"commit refs/heads/main\nmark :{mark}\nauthor {name} <{email}> {when} +0000\n"
        f"committer {name} <{email}> {when} +0000\ndata {len(msg)}\n"
    ).encode()
    parent = f"from :{mark - 1}\n".encode() if mark > 1 else b""
    return head + msg + b"\n" + parent + b"".join(files) + b"\n"


def _stamp(when: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def _statement(cid: str, person: str, decision: str, when: int) -> str:
    """An unsigned statement as `opsledger approve` writes it in the lab."""
    return (
        f"version: 1\nchange: {cid}\nperson: {person}\ndecision: {decision}\n"
        f"content_sha256: {CONTENT}\npolicy_sha256: {POLICY}\nat: '{_iso(when)}'\n"
        "comment: ''\nsignature: ''\ncontent_files: {}\n"
    )


def _iso(when: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat()


def build(repo: Path, commits: int, changes: int) -> None:
    """A repository of `commits` commits with `changes` complete changes, via git fast-import."""
    for part in PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / part)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    files = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    alice, bob, ci = (
        ("Alice Arnold", "alice@example.org"),
        ("Bob Brandt", "bob@example.org"),
        (
            "opsledger CI",
            "ci@example.org",
        ),
    )
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    write = proc.stdin.write
    write(
        _commit(
            1,
            START,
            alice,
            "Initial state",
            [_blob(str(p.relative_to(repo)), p.read_text(errors="replace")) for p in files],
        )
    )
    mark, when = 1, START
    every = max(1, (commits - 1) // max(1, changes))
    made = 0
    while mark < commits:
        mark += 1
        when += 600
        if made < changes and mark % every == 0 and mark + 2 <= commits:
            made += 1
            cid = f"CHG-{made:05d}"
            window = (_iso(when), _iso(when + 7200))
            change = (
                f"id: {cid}\ntitle: Synthetic change number {made}\ntype: normal\n"
                f"runbook: converge\nenvironment: lab\ntargets: db\n"
                f"params: {{tags: [postgresql]}}\nimpact: low\nurgency: low\n"
                f"window: {{start: '{window[0]}', end: '{window[1]}'}}\n"
                "requested_by: alice\nreason: Synthetic history for the audit benchmark\n"
            )
            request = _statement(cid, "alice", "requested", when)
            write(
                _commit(
                    mark,
                    when,
                    alice,
                    f"Request {cid}",
                    [
                        _blob(f"changes/{cid}/change.yml", change),
                        _blob(f"changes/{cid}/approvals/alice/{_stamp(when)}.yml", request),
                    ],
                )
            )
            mark += 1
            when += 60
            write(
                _commit(
                    mark,
                    when,
                    bob,
                    f"Approve {cid}",
                    [
                        _blob(
                            f"changes/{cid}/approvals/bob/{_stamp(when)}.yml",
                            _statement(cid, "bob", "approved", when),
                        )
                    ],
                )
            )
            mark += 1
            when += 60
            record = {
                "kind": "run",
                "environment": "lab",
                "result": "success",
                "started_at": _iso(when - 30),
                "finished_at": _iso(when),
                "change": cid,
                "runbook": "converge",
                "params": {"tags": ["postgresql"]},
                "hosts": ["lab-db1", "lab-db2"],
                "content_sha256": CONTENT,
                "runner": {"person": "ci"},
                "decision": {"allowed": True, "approvers": ["bob"], "risk": "medium"},
                "verification": {"status": "passed"},
                "version": 1,
            }
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when - 30))
            write(
                _commit(
                    mark,
                    when,
                    ci,
                    f"Run {cid}: success",
                    [
                        _blob(
                            f"changes/{cid}/runs/{stamp}.json",
                            json.dumps(record, indent=2, sort_keys=True),
                        )
                    ],
                )
            )
        else:
            write(
                _commit(
                    mark,
                    when,
                    alice,
                    f"Notes {mark}",
                    [_blob(f"notes/n{mark % 500}.md", f"note {mark}\n")],
                )
            )
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("benchmark: git fast-import failed")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-f", "main"], check=True)


def _env(**extra: str) -> dict[str, str]:
    """The environment of a lane: the code of the checkout holding this file, first.

    Run in the synthetic repository, a lane would otherwise import whichever opsledger the
    interpreter has installed (a relative PYTHONPATH names nothing there).
    """
    path = os.pathsep.join(filter(None, (str(ROOT / "src"), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **extra}


def prove_valid(repo: Path, changes: int) -> None:
    """Stop (exit 1) unless audit judges every synthetic change valid and finds nothing.

    A benchmark of an error path (no change loads, nothing judged) measures nothing.
    """
    log = subprocess.run(
        [str(BIN / "opsledger"), "audit", "log", "--format", "json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_env(),
    )
    rows = json.loads(log.stdout or "[]") if log.returncode == 0 else []
    ids = [row["change"] for row in rows]
    good = [row for row in rows if row["result"] == "success" and row["approvers"]]
    if log.returncode != 0 or len(ids) != changes or len(set(ids)) != changes:
        sys.exit(
            f"benchmark: audit log listed {len(ids)} rows ({len(set(ids))} changes) for "
            f"{changes} changes (exit {log.returncode}): {log.stderr[-1000:]}"
        )
    if len(good) != changes:
        bad = next(row for row in rows if row not in good)
        sys.exit(f"benchmark: {bad['change']} did not run validly: {json.dumps(bad)[:800]}")
    check = subprocess.run(
        [str(BIN / "opsledger"), "audit", "check", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_env(),
    )
    findings = json.loads(check.stdout or "[]") if check.returncode in (0, 1) else None
    if findings is None or findings:
        shown = findings[:3] if findings else check.stderr[-1000:]
        sys.exit(f"benchmark: audit check on a clean history (exit {check.returncode}): {shown}")


# The opsledger console script's code, run so that the process writes its own peak memory
# (VmHWM: this process's, from its exec on) when it ends; the tree's peak includes git log's.
OPSLEDGER = (
    "import atexit, os\n"
    "def peak():\n"
    "    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
    "    with open(os.environ['BENCH_PEAK'], 'w') as out:\n"
    "        out.write(status['VmHWM'].split()[0])\n"
    "atexit.register(peak)\n"
    "from opsledger.cli import main\n"
    "main()\n"
)
# Each lane runs under a shell that forks it: Linux carries a process's peak memory across
# exec, so a lane forked straight from this process (which holds the proof's parsed audit log)
# would count this process's memory as its own.
SHELL = ["sh", "-c", '"$@"; status=$?; exit $status', "lane"]


def _own_session() -> None:
    """In the lane (before exec, in its new session): its autogroup gets the benchmark's nice.

    With `kernel.sched_autogroup_enabled` (Debian's default) the scheduler shares the CPUs
    between sessions first and applies nice only inside each: `nice -n -20` alone leaves a
    lane one session among those of every other job on a busy machine, and its wall time
    then follows the machine's load (near twice the CPU at load 10 on 2 cores, overlap or not).
    Every lane, git's too, gets the same treatment, so the ratios stay like for like; without
    the right to lower a nice (not root) the lane runs as before.
    """
    with contextlib.suppress(OSError):  # no autogroups, or no right: nice alone, as before
        Path("/proc/self/autogroup").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))


def timed(argv: list[str], cwd: Path) -> tuple[float, float, float, float]:
    """Seconds, own and largest process's peak memory (MB), the tree's CPU seconds.

    Output goes to /dev/null (a pipe would hold it here). The tree's peak is wait4's rusage of
    the shell running the lane (git log's own memory, for an audit); the process's own is what
    it wrote at exit (see OPSLEDGER), else the tree's. CPU seconds (user + system, git's
    included) are printed beside the times: on a machine shared with other work they move less
    than wall time, and an audit that overlaps its work with git's takes less time than CPU.
    """
    with tempfile.TemporaryDirectory(prefix="opsledger-bench-") as scratch:
        errors_file = Path(scratch) / "stderr"
        own_file = Path(scratch) / "peak"
        env = _env(BENCH_PEAK=str(own_file))
        with open(errors_file, "wb") as errors:
            started = time.monotonic()
            proc = subprocess.Popen(
                [*SHELL, *argv],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=env,
                start_new_session=True,  # an autogroup of its own, niced as the benchmark
                preexec_fn=_own_session,  # the benchmark runs no threads
            )
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):  # audit check exits 1 when it finds something
            tail = errors_file.read_text(errors="replace")[-2000:]
            sys.exit(f"benchmark: {' '.join(argv[:3])} failed:\n{tail}")
        tree = usage.ru_maxrss / 1024  # Linux: kilobytes
        own = int(own_file.read_text()) / 1024 if own_file.exists() else tree
    return elapsed, own, tree, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--real-use", type=int, default=0, metavar="CHANGES")
    parser.add_argument("--repo", type=Path, help="keep (or reuse) the repository here")
    args = parser.parse_args()
    measure(args.commits, args.changes, args.rounds, args.repo)
    if args.real_use:
        print(f"real use: every commit part of a change ({args.real_use} changes)")
        measure(3 * args.real_use + 2, args.real_use, args.rounds)


def measure(commits: int, changes: int, rounds: int, kept: Path | None = None) -> None:
    """Build one synthetic history, prove it valid, time the lanes, print the ratios."""
    with tempfile.TemporaryDirectory(prefix="opsledger-audit-bench-") as tmp:
        repo = kept.resolve() if kept else Path(tmp) / "repo"
        started = time.monotonic()
        reused = (repo / ".git").is_dir()
        if reused:
            print(f"reusing {repo} (give --commits/--changes as it was built)")
        else:
            build(repo, commits, changes)
        count = subprocess.run(
            ["git", "-C", str(repo), "rev-list", "--count", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        took = "" if reused else f" in {time.monotonic() - started:.1f} s"
        print(f"built {count} commits, {changes} changes{took}")
        prove_valid(repo, changes)
        lanes = {
            "git log --name-status": ["git", "log", "--name-status"],
            "opsledger audit log": [
                sys.executable,
                "-c",
                OPSLEDGER,
                "audit",
                "log",
                "--format",
                "json",
            ],
            "opsledger audit check": [sys.executable, "-c", OPSLEDGER, "audit", "check", "--json"],
        }
        times: dict[str, list[float]] = {name: [] for name in lanes}
        cpus: dict[str, list[float]] = {name: [] for name in lanes}
        peaks: dict[str, list[tuple[float, float]]] = {name: [] for name in lanes}
        for _ in range(rounds):
            for name, argv in lanes.items():
                seconds, own, tree, cpu = timed(argv, repo)
                times[name].append(seconds)
                cpus[name].append(cpu)
                peaks[name].append((own, tree))
        check = subprocess.run(
            lanes["opsledger audit check"], cwd=repo, capture_output=True, text=True, env=_env()
        )
        findings = json.loads(check.stdout or "[]")
    base = statistics.median(times["git log --name-status"])
    base_cpu = statistics.median(cpus["git log --name-status"])
    print(f"median of {rounds} rounds:")
    for name, values in times.items():
        med = statistics.median(values)
        cpu = statistics.median(cpus[name])
        own = max(p[0] for p in peaks[name])
        tree = max(p[1] for p in peaks[name])
        print(
            f"  {name:24} {med:8.2f} s   ratio to git log: {med / base:5.2f}x   "
            f"cpu {cpu:6.2f} s ({cpu / base_cpu:4.2f}x)   "
            f"peak RSS {own:6.1f} MB (largest process {tree:6.1f} MB)"
        )
    print(f"  audit check findings on the synthetic history: {len(findings)}")


if __name__ == "__main__":
    main()
