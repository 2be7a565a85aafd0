#!/usr/bin/env python3
"""How decide and apply --pending grow with the history, this checkout against another.

Builds a history shaped like real use with benchmarks/audit.py's builder (`--changes` changes,
each requested, approved and run: three commits each), then `--pending` changes requested and
approved with statements that bind their real content, their windows one after another in the
future. Then times, in this run:

- `opsledger decide <the last pending change>` inside its window — it must print ALLOWED
  (request, approval and every rule judged valid: no error path is timed);
- `opsledger apply --pending --at <before every window>` — every pending change decided and
  listed `waiting`, none run (nothing needs the lab): it must list each one so;

with this checkout's code and, given `--baseline SRC` (another checkout's src/, e.g. of main:
`git worktree add /tmp/main main`, then `--baseline /tmp/main/src`), that code too, on the same
repository. Baseline lanes run first, before this code writes its commit-graph and cache; this
code's first run (cold: it writes them) is shown on its own, then the median of `--rounds`.
CPU time (user + system of the child) is the figure to compare on a shared machine. Runs
keep Python's bytecode cache (PYTHONDONTWRITEBYTECODE dropped), as an installed opsledger does.

Both lanes also run on a short history (`--small`, 100 changes, the same pending ones): the
ratio of the two says how much of a decision still grows with the history (1.00: none).

Usage: .venv/bin/python benchmarks/decide.py [--changes 10000] [--pending 1000] [--rounds 3]
                                             [--small 100] [--hosts N] [--baseline SRC]
                                             [--history COPY]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opsledger.content import is_content, manifest  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_audit", ROOT / "benchmarks/audit.py")
assert _spec and _spec.loader
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)

PENDING_FROM = dt.datetime(2030, 1, 7, 0, 0, tzinfo=dt.UTC)  # after the synthetic history
ALICE, BOB = ("Alice Arnold", "alice@example.org"), ("Bob Brandt", "bob@example.org")


def _listing(repo: Path) -> dict[str, str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "-z", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = {}
    for entry in filter(None, out.split("\0")):
        meta, _, path = entry.partition("\t")
        mode, _, blob = meta.split()
        files[path] = f"{mode} {blob}"
    return files


def _blob_id(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def add_pending(repo: Path, first: int, count: int) -> list[str]:
    """`count` changes requested by alice and approved by bob, binding their real content."""
    tree = _listing(repo)
    base = {p: d for p, d in tree.items() if not p.startswith("changes/")}
    mark = int(
        subprocess.run(
            ["git", "-C", str(repo), "rev-list", "--count", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    when = int(PENDING_FROM.timestamp()) - 86_400 * 30  # requested a month before
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    ids = []
    for made, number in enumerate(range(first, first + count)):
        cid = f"CHG-{number:05d}"
        start = PENDING_FROM + dt.timedelta(hours=3 * made)
        change = (
            f"id: {cid}\ntitle: Pending change number {number}\ntype: normal\n"
            f"runbook: converge\nenvironment: lab\ntargets: db\n"
            f"params: {{tags: [postgresql]}}\nimpact: low\nurgency: low\n"
            f"window: {{start: '{start.isoformat()}', end: "
            f"'{(start + dt.timedelta(hours=2)).isoformat()}'}}\n"
            "requested_by: alice\nreason: Pending work for the decide benchmark\n"
        )
        path = f"changes/{cid}/change.yml"
        files = {p: d for p, d in base.items() if is_content(p, cid)}
        files[path] = f"100644 {_blob_id(change.encode())}"
        content = manifest(files).sha256
        for who, decision in ((ALICE, "requested"), (BOB, "approved")):
            mark += 1
            when += 60
            person = who[1].split("@")[0]
            statement = (
                f"version: 1\nchange: {cid}\nperson: {person}\ndecision: {decision}\n"
                f"content_sha256: {content}\npolicy_sha256: {audit.POLICY}\n"
                f"at: '{dt.datetime.fromtimestamp(when, dt.UTC).isoformat()}'\n"
                "comment: ''\nsignature: ''\ncontent_files: {}\n"
            )
            blobs = [
                audit._blob(f"changes/{cid}/approvals/{person}/{audit._stamp(when)}.yml", statement)
            ]
            if decision == "requested":
                blobs.insert(0, audit._blob(path, change))
            head = (
                f"commit refs/heads/main\nauthor {who[0]} <{who[1]}> {when} +0000\n"
                f"committer {who[0]} <{who[1]}> {when} +0000\n"
            ).encode()
            message = f"{decision.capitalize()} {cid}".encode()
            parent = b"from refs/heads/main^0\n" if made == 0 and decision == "requested" else b""
            proc.stdin.write(
                head
                + b"data %d\n" % len(message)
                + message
                + b"\n"
                + parent
                + b"".join(blobs)
                + b"\n"
            )
        ids.append(cid)
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("benchmark: git fast-import of the pending changes failed")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-f", "main"], check=True)
    return ids


def add_hosts(repo: Path, count: int) -> None:
    """`count` more hosts in the lab inventory's `app` group, committed.

    Before the pending changes are requested: their approvals bind the inventory as it is then.
    """
    hosts = repo / "inventories/lab/hosts.yml"
    text = hosts.read_text()
    extra = "".join(
        f"        app-{i:05d}:\n          ansible_port: {20000 + i}\n" for i in range(count)
    )
    marker = "    app:\n      hosts:\n"
    if marker not in text:
        sys.exit("benchmark: the lab inventory has no `app: hosts:` to add hosts to")
    hosts.write_text(text.replace(marker, marker + extra, 1))
    subprocess.run(["git", "-C", str(repo), "add", str(hosts)], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Bench", "-c", "user.email=bench@example.org",
         "commit", "-q", "-m", f"{count} more app hosts"],
        check=True,
    )  # fmt: skip


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str], repo: Path, src: Path, expect: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run, which must exit 0 printing every `expect`."""
    env = {**os.environ, "PYTHONPATH": str(src), "OPSLEDGER_PROJECT": str(repo)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: modules are not compiled per run
    cpu = _cpu()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu
    missing = [e for e in expect if e not in proc.stdout]
    if proc.returncode != 0 or missing:
        sys.exit(
            f"benchmark: {' '.join(argv[2:5])} ({src}) exited {proc.returncode} without "
            f"{missing[:2]}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    return elapsed, cpu


def main() -> None:
    # This run's session (every lane runs in it) gets the nice it was started with: with
    # autogroups a nice alone does not lift it above other sessions (audit.py's lanes too).
    audit._own_session()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--pending", type=int, default=1_000)
    parser.add_argument(
        "--hosts", type=int, default=0, help="add this many hosts to the lab's app group first"
    )
    parser.add_argument(
        "--small", type=int, default=100, help="the short history decide is compared with"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to compare")
    parser.add_argument(
        "--history",
        type=Path,
        help="a copy of a history this builder made with --changes (built once: minutes)",
    )
    args = parser.parse_args()
    python = [sys.executable, "-m", "opsledger"]
    with tempfile.TemporaryDirectory(prefix="opsledger-decide-bench-") as tmp:
        histories = {}
        for label, changes in (
            (f"{args.small} changes", args.small),
            (f"{args.changes} changes", args.changes),
        ):
            repo = Path(tmp) / f"repo-{changes}"
            started = time.monotonic()
            if args.history and changes == args.changes:
                subprocess.run(
                    ["git", "clone", "-q", "--no-local", str(args.history), str(repo)], check=True
                )
            else:
                audit.build(repo, 3 * changes + 2, changes)
            if args.hosts:
                add_hosts(repo, args.hosts)
            pending = add_pending(repo, changes + 1, args.pending)
            print(
                f"built {changes} applied and {len(pending)} pending changes in "
                f"{time.monotonic() - started:.0f} s"
            )
            histories[label] = (repo, pending)
        codes = [("baseline", args.baseline)] if args.baseline else []
        codes.append(("this checkout", ROOT / "src"))
        results: dict[tuple[str, str], tuple[float, float]] = {}
        for history, (repo, pending) in histories.items():
            last = pending[-1]
            inside = PENDING_FROM + dt.timedelta(hours=3 * (len(pending) - 1), minutes=5)
            before = PENDING_FROM - dt.timedelta(hours=1)
            lanes = {
                f"decide ({history})": (
                    [*python, "decide", last, "--at", inside.isoformat()],
                    ["ALLOWED"],
                ),
                f"apply --pending ({history}, {len(pending)} waiting)": (
                    [*python, "apply", "--pending", "--at", before.isoformat()],
                    [f"{cid}: waiting" for cid in pending],
                ),
            }
            for code, src in codes:
                for lane, (argv, expect) in lanes.items():
                    if code == "this checkout":
                        wall, cpu = timed(argv, repo, src, expect)
                        print(f"  {code:14} {lane:44} cold {wall:7.2f} s wall {cpu:7.2f} s CPU")
                    runs = [timed(argv, repo, src, expect) for _ in range(args.rounds)]
                    wall = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    results[(code, lane)] = (wall, cpu)
                    print(f"  {code:14} {lane:44} {wall:7.2f} s wall {cpu:7.2f} s CPU (median)")
        small, large = histories
        for code, _ in codes:
            for kind in ("decide", "apply --pending"):
                one = next(v for (c, lane), v in results.items()
                           if c == code and lane.startswith(f"{kind} ({small}"))  # fmt: skip
                many = next(v for (c, lane), v in results.items()
                            if c == code and lane.startswith(f"{kind} ({large}"))  # fmt: skip
                print(
                    f"  {code:14} {kind:16} {large} / {small}: {many[1] / one[1]:5.2f}x CPU "
                    f"(1.00 = independent of the history)"
                )
        if args.baseline:
            for (code, lane), new in results.items():
                if code != "this checkout":
                    continue
                old = results[("baseline", lane)]
                print(
                    f"  {lane:44} baseline / this checkout: {old[1] / new[1]:6.1f}x CPU, "
                    f"{old[0] / new[0]:6.1f}x wall"
                )


if __name__ == "__main__":
    main()
