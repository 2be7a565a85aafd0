#!/usr/bin/env python3
"""Whether the block layout of `changes/` removes git's superlinear cost of reading history.

Issue 16 measured `git log --name-status` growing 23-39x from 1,000 to 10,000 changes with
every change in one flat folder (`changes/<ID>/`): each change commit rewrites that folder's
tree, and git compares the whole tree at every commit it reads. This builds, with
`git fast-import`, the same history in three layouts — flat, the adopted block layout
(`changes/CHG-050xx/CHG-05000/`, the folders `opsledger.layout.block_file` names, which
`change new` writes and `change migrate-layout` moves to) and by year
(`changes/<year>/<ID>/`, `--per-year` changes a year, the alternative issue 16 named) — at
`--small` and `--large` changes (three commits each: request, approval, run record), and
times side by side in this run:

- `git log --name-status` over the whole history (what `audit` streams);
- `git log -- <one change's folder>` (what decide's walks of one change cost; run with
  git's commit-graph and changed-path filters, as decide writes them);

then prints, per layout, how each grows from small to large (10x the changes is linear at
10x) and the flat / block and flat / by-year ratios at the large size. Each lane must list
every change (name-status) or the change's three commits (path walk), and the block
history's top tree must hold one folder per block: an empty or failing read, or a layout
that is not the one opsledger writes, stops the benchmark. Nothing here needs the lab.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/layout.py [--small 1000] [--large 10000]
                                             [--per-year 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opsledger.layout import CHANGES, block_file, block_of, change_file

START = 1_700_000_000
LAYOUTS = ("flat", "block", "by year")


def folder_of(layout: str, n: int, per_year: int) -> str:
    cid = f"CHG-{n:05d}"
    if layout == "flat":
        return change_file(cid)
    if layout == "block":
        return block_file(cid)  # the real path: what opsledger writes a new change to
    return f"{CHANGES}/{2020 + n // per_year}/{cid}"


def check_blocks(repo: Path, changes: int) -> None:
    """The block history holds what opsledger writes: one folder per block, <= 100 in each."""
    top = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", "HEAD", f"{CHANGES}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    blocks = {f"{CHANGES}/{block_of(f'CHG-{n:05d}')}" for n in range(1, changes + 1)}
    if set(top) - {f"{CHANGES}/README.md"} != blocks:
        sys.exit(f"benchmark: {repo.name} is not in the block layout ({len(top)} top folders)")
    inner = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", "HEAD", f"{min(blocks)}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not 0 < len(inner) <= 100:
        sys.exit(f"benchmark: {min(blocks)} holds {len(inner)} changes, not 1-100")


def build(repo: Path, layout: str, changes: int, per_year: int) -> None:
    """A history of `changes` changes, each requested, approved and run (three commits)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    when = START
    readme = b"Change requests, one folder each.\n"
    proc.stdin.write(
        b"commit refs/heads/main\ncommitter A <a@example.org> %d +0000\ndata 4\nInit\n"
        b"M 100644 inline changes/README.md\ndata %d\n%s\n" % (when, len(readme), readme)
    )
    for n in range(1, changes + 1):
        folder = folder_of(layout, n, per_year)
        for step, (name, text) in enumerate(
            (
                ("change.yml", f"id: CHG-{n:05d}\ntitle: Change {n}\nrunbook: converge\n"),
                ("approvals/bob/1.yml", f"change: CHG-{n:05d}\ndecision: approved\n"),
                ("runs/1.json", f'{{"change": "CHG-{n:05d}", "result": "success"}}\n'),
            )
        ):
            when += 60
            data = text.encode()
            message = f"Step {step} of CHG-{n:05d}".encode()
            proc.stdin.write(
                b"commit refs/heads/main\ncommitter A <a@example.org> %d +0000\n" % when
                + b"data %d\n%s\n" % (len(message), message)
                + b"M 100644 inline %s/%s\ndata %d\n%s\n"
                % (folder.encode(), name.encode(), len(data), data)
            )
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("benchmark: git fast-import failed")
    subprocess.run(
        ["git", "-C", str(repo), "commit-graph", "write", "--reachable", "--changed-paths"],
        check=True,
    )


def timed(argv: list[str], repo: Path, expect: int, what: str) -> float:
    """Seconds of one git read, which must print `expect` lines that name a change."""
    started = time.perf_counter()
    proc = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    found = sum(1 for line in proc.stdout.splitlines() if "CHG-" in line)
    if proc.returncode != 0 or found != expect:
        sys.exit(f"benchmark: {what} on {repo.name} found {found} lines, not {expect}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--per-year", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    layouts = LAYOUTS
    sizes = (args.small, args.large)
    results: dict[tuple[str, int, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="opsledger-layout-bench-") as tmp:
        repos = {}
        for layout in layouts:
            for size in sizes:
                repo = Path(tmp) / f"{layout.replace(' ', '-')}-{size}"
                build(repo, layout, size, args.per_year)
                if layout == "block":
                    check_blocks(repo, size)
                repos[(layout, size)] = repo
        print(f"built {len(repos)} histories ({args.small} and {args.large} changes)")
        for _ in range(args.rounds):  # interleaved: every lane sees the same machine
            for (layout, size), repo in repos.items():
                middle = folder_of(layout, size // 2, args.per_year)
                lanes = {
                    "git log --name-status": (["log", "--name-status", "--format="], 3 * size),
                    "git log -- <one change>": (["log", "--format=%s", "--", middle], 3),
                }
                for lane, (argv, expect) in lanes.items():
                    seconds = timed(argv, repo, expect, lane)
                    results.setdefault((layout, size, lane), []).append(seconds)  # type: ignore[attr-defined]
        medians = {k: statistics.median(v) for k, v in results.items()}  # type: ignore[arg-type]
        lanes = sorted({k[2] for k in medians})
        for lane in lanes:
            for layout in layouts:
                small, large = (
                    medians[(layout, args.small, lane)],
                    medians[(layout, args.large, lane)],
                )
                print(
                    f"  {lane:24} {layout:8} {args.small:>6}: {small:7.3f} s  {args.large:>6}: "
                    f"{large:7.3f} s  growth {large / small:5.1f}x for "
                    f"{args.large / args.small:.0f}x the changes"
                )
            flat = medians[("flat", args.large, lane)]
            for other in layouts[1:]:
                ratio = flat / medians[(other, args.large, lane)]
                print(f"  {lane:24} flat / {other} at {args.large}: {ratio:5.2f}x")


if __name__ == "__main__":
    main()
