#!/usr/bin/env python3
"""What sharding an apply costs in locks and records, on a synthetic 1,000-host inventory.

Builds a project whose `bench` environment has `--hosts` hosts (app hosts, and db clusters of
three that a runbook keeps on one shard, standby first) and whose host locks live on a local
bare origin (policies/locks.yml: backends machine + origin), then measures, side by side in
each round (lanes alternate, so the machine's load hits them alike):

(a) plan: the split of every host over `--shards` shards, as each runner computes it
    (shards.plan_shards: the inventory loaded, the runbook's together/order rules applied);
(b) lock, one controller: every host in one acquire (one atomic push of N refs), then release;
(c) lock, one shard alone: shard 1's hosts acquired, renewed once and released by one process —
    what each runner pays when the runners are separate machines;
(d) lock, sharded: `--shards` processes at once on THIS machine, each acquiring only its
    shard's hosts on the same origin, then releasing: the wall time until every shard held its
    hosts (here they share the cores and the one bare repository);
(e) heartbeat: one renewal of a shard's leases by compare-and-swap, alone and at once;
(f) merge: `--shards` shard records merged into the one run record (shards.merge_records),
    written and committed to git, next to writing and committing one shard record.

and prints each figure with the ratios (c)/(b), (d)/(b) and (f)/(one record). It stops
(exit 1) unless it measured the real path: every lock ref was on the origin with the holder of
its own shard and none is left after release; the shards cover every host once and keep each
db cluster together; the merged record names every host, has the worst shard result and is
committed. Nothing here needs the lab.

Usage: .venv/bin/python benchmarks/shards.py [--hosts 1000] [--shards 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opsledger import inventory, runbooks  # noqa: E402
from opsledger.gitrepo import commit_paths, git  # noqa: E402
from opsledger.lock import acquire, release  # noqa: E402
from opsledger.lockholder import Holder  # noqa: E402
from opsledger.origin_lock import LOCK_REFS, renew_origin  # noqa: E402
from opsledger.project import Project  # noqa: E402
from opsledger.records import Record, write_record  # noqa: E402
from opsledger.runbooks import load_runbook  # noqa: E402
from opsledger.shards import Shard, ShardFile, merge_records, plan_shards  # noqa: E402

FORK = multiprocessing.get_context("fork")
ENV = "bench"
PARTS = ("runbooks", "roles", "tests/infra", "ansible.cfg", "site.yml")


def fail(message: str) -> None:
    raise SystemExit(f"benchmark stopped: {message}")


def build(root: Path, hosts: int) -> tuple[Project, Path, list[str]]:
    """A project with a `--hosts`-host inventory whose locks are on a bare origin."""
    bare = root / "origin.git"
    tree = root / "project"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    tree.mkdir()
    for part in PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tree / part)
    clusters = hosts // 10  # 30 % db hosts in clusters of three, the rest app hosts
    db = [f"db{c:03d}-{m}" for c in range(clusters) for m in range(3)]
    app = [f"app{i:04d}" for i in range(hosts - len(db))]
    lines = ["---", "all:", "  children:", "    app:", "      hosts:"]
    lines += [f"        {h}:" for h in app]
    lines += ["    db:", "      children:"]
    for c in range(clusters):
        lines += [f"        db{c:03d}:", "          hosts:"]
        for m in range(3):
            role = "primary" if m == 0 else "standby"
            lines += [f"            db{c:03d}-{m}: {{postgresql_replication_role: {role}}}"]
    inventory = tree / "inventories" / ENV
    inventory.mkdir(parents=True)
    (inventory / "hosts.yml").write_text("\n".join(lines) + "\n")
    (tree / "policies").mkdir()
    (tree / "policies" / "locks.yml").write_text(
        f"environments:\n  {ENV}: {{backends: [machine, origin], remote: origin, lease_s: 600}}\n"
    )
    git(tree, "init", "-q", "-b", "main")
    git(tree, "add", "-A")
    commit_paths(tree, [tree], "Synthetic project", name="bench", email="bench@example.org")
    git(tree, "remote", "add", "origin", str(bare))
    git(tree, "push", "-q", "origin", "main")
    return Project(tree), bare, app + db


def lock_refs(bare: Path) -> dict[str, str]:
    """Lock ref -> the change its holder names, as the origin has them now."""
    out = git(bare, "for-each-ref", "--format=%(refname) %(contents)", LOCK_REFS).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith(LOCK_REFS):
            ref, _, body = line.partition(" ")
            holder = Holder.parse(body)
            found[ref] = holder.change if holder else "?"
    return found


def lane_plan(project: Project, hosts: list[str], shards: int):
    inventory._CACHE.clear()  # cold, as a runner computes it: the inventory read and parsed
    (project.state_dir / "cache" / "inventory.json").unlink(missing_ok=True)  # its kept shape
    runbooks._CACHE.clear()
    started = time.perf_counter()
    runbook = load_runbook(project, "os-patch")  # splittable, db clusters together, standby first
    plan = plan_shards(project, environment=ENV, runbook=runbook, hosts=hosts, count=shards)
    took = time.perf_counter() - started
    flat = [h for s in plan.shards for h in s]
    if sorted(flat) != sorted(hosts) or len(set(flat)) != len(flat):
        fail("the shards do not cover every host exactly once")
    for shard in plan.shards:
        for host in shard:
            if host.startswith("db") and host.endswith("-0"):  # a primary...
                cluster = host[:-2]
                members = [h for h in shard if h.startswith(cluster + "-")]
                if len(members) != 3 or members[-1] != host:  # ...with its standbys, last
                    fail(f"cluster {cluster} split or out of order: {members}")
    return took, plan


def lane_one(project: Project, bare: Path, hosts: list[str], lock_dir: Path) -> float:
    before = os.environ.get("OPSLEDGER_LOCK_DIR")
    os.environ["OPSLEDGER_LOCK_DIR"] = str(lock_dir)  # this lane's machine locks
    try:
        started = time.perf_counter()
        held = acquire(project, environment=ENV, hosts=hosts, change="CHG-0001", owner="bench")
        took = time.perf_counter() - started
    finally:
        if before is None:
            os.environ.pop("OPSLEDGER_LOCK_DIR", None)
        else:
            os.environ["OPSLEDGER_LOCK_DIR"] = before
    refs = lock_refs(bare)
    if len(refs) != len(hosts) or set(refs.values()) != {"CHG-0001"}:
        fail(f"one controller: {len(refs)} lock refs on the origin, {len(hosts)} hosts locked")
    release(held)
    if lock_refs(bare):
        fail("one controller: lock refs left after release")
    return took


def lane_alone(project: Project, bare: Path, plan, lock_dir: Path) -> tuple[float, float]:
    """Shard 1's hosts, locked, renewed once and released by one process with no other."""
    before = os.environ.get("OPSLEDGER_LOCK_DIR")
    os.environ["OPSLEDGER_LOCK_DIR"] = str(lock_dir)
    try:
        hosts = plan.hosts_of(1)
        started = time.perf_counter()
        held = acquire(project, environment=ENV, hosts=hosts, change="SHARD-1", owner="bench")
        took = time.perf_counter() - started
        if set(lock_refs(bare).values()) != {"SHARD-1"} or len(lock_refs(bare)) != len(hosts):
            fail("one shard alone: its locks are not on the origin")
        beat = time.perf_counter()
        if not renew_origin(held.origin):
            fail("one shard alone: the heartbeat renewal did not go through")
        beat = time.perf_counter() - beat
        release(held)
    finally:
        if before is None:
            os.environ.pop("OPSLEDGER_LOCK_DIR", None)
        else:
            os.environ["OPSLEDGER_LOCK_DIR"] = before
    if lock_refs(bare):
        fail("one shard alone: lock refs left after release")
    return took, beat


def _shard(root: str, lock_dir: str, index: int, hosts: list[str], gate, held_q, done) -> None:
    os.environ["OPSLEDGER_LOCK_DIR"] = lock_dir  # each shard a machine of its own
    project = Project(Path(root))
    gate.wait()
    started = time.perf_counter()
    held = acquire(project, environment=ENV, hosts=hosts, change=f"SHARD-{index}", owner="bench")
    took = time.perf_counter() - started
    beat = time.perf_counter()
    renewed = renew_origin(held.origin)
    beat = time.perf_counter() - beat
    held_q.put((index, took, beat, bool(renewed), time.perf_counter()))
    done.wait(120)
    release(held)


def lane_sharded(project: Project, bare: Path, plan, root: Path) -> tuple[float, float, float]:
    clones = []
    for index in range(1, plan.count + 1):
        clone = root / f"runner{index}"
        if not clone.exists():
            git(root, "clone", "-q", str(bare), str(clone))
            shutil.copytree(project.root / "inventories", clone / "inventories", dirs_exist_ok=True)
        clones.append(clone)
    gate, done, held_q = FORK.Barrier(plan.count + 1), FORK.Event(), FORK.Queue()
    procs = [
        FORK.Process(
            target=_shard,
            args=(
                str(clones[i - 1]),
                str(root / f"locks-{i}"),
                i,
                plan.hosts_of(i),
                gate,
                held_q,
                done,
            ),
        )
        for i in range(1, plan.count + 1)
    ]
    for proc in procs:
        proc.start()
    gate.wait()
    started = time.perf_counter()
    reports = [held_q.get(timeout=300) for _ in procs]
    wall = max(r[4] for r in reports) - started
    refs = lock_refs(bare)
    expected = {f"{LOCK_REFS}/{ENV}/{h}": f"SHARD-{i}" for i in range(1, plan.count + 1)
                for h in plan.hosts_of(i)}  # fmt: skip
    if refs != expected:
        fail(f"sharded: {len(refs)} lock refs on the origin, not each host by its own shard")
    if not all(r[3] for r in reports):
        fail("sharded: a heartbeat renewal did not go through")
    done.set()
    for proc in procs:
        proc.join(120)
        if proc.exitcode != 0:
            fail(f"a shard process exited {proc.exitcode}")
    if lock_refs(bare):
        fail("sharded: lock refs left after release")
    return wall, statistics.median(r[1] for r in reports), statistics.median(r[2] for r in reports)


class _Change:
    id = "CHG-0001"
    environment = ENV
    runbook = "os-patch"
    targets = "all"
    params: dict = {}  # noqa: RUF012 - read only


def lane_merge(project: Project, plan, round_no: int) -> tuple[float, float]:
    now = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)
    folder = project.root / "changes" / "CHG-0001" / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    reports = {}
    for index in range(1, plan.count + 1):
        hosts = plan.hosts_of(index)
        result = "rolled_back" if index == 2 else "success"
        record = Record(
            kind="run", environment=ENV, result=result,
            started_at=(now + dt.timedelta(seconds=index)).isoformat(),
            finished_at=(now + dt.timedelta(minutes=30, seconds=index)).isoformat(),
            change="CHG-0001", runbook="os-patch", targets=",".join(hosts), hosts=hosts,
            content_sha256="c" * 64,
            stats={h: {"ok": 12, "changed": 3, "failures": 0} for h in hosts},
            changed_tasks=[{"host": h, "task": "Upgrade", "role": ""} for h in hosts],
            verification={"status": "passed", "passed": 40 * len(hosts), "failed": 0},
            measurements={"run_s": 600.0, "verify_s": 90.0},
        )  # fmt: skip
        name = f"{round_no:03d}-{index}of{plan.count}.json"
        reports[index] = ShardFile(f"changes/CHG-0001/shards/{name}", Shard(index, plan.count),
                                   round_no, False, record)  # fmt: skip
    one = folder / f"{round_no:03d}-1of{plan.count}.json"
    started = time.perf_counter()
    write_record(one, reports[1].record)
    commit_paths(project.root, [one], "Shard record", name="bench", email="bench@example.org")
    single = time.perf_counter() - started
    for index in range(2, plan.count + 1):
        write_record(folder / reports[index].path.rsplit("/", 1)[1], reports[index].record)
    started = time.perf_counter()
    merged = merge_records(_Change, plan.count, round_no, reports)
    path = project.root / "changes" / "CHG-0001" / "runs" / f"2026120{round_no}T200001Z.json"
    write_record(path, merged)
    sha = commit_paths(project.root, [path], "Merged run", name="bench", email="bench@example.org")
    took = time.perf_counter() - started
    if len(merged.hosts) != sum(len(s) for s in plan.shards) or merged.result != "rolled_back":
        fail(f"the merged record has {len(merged.hosts)} hosts, result {merged.result}")
    shown = git(project.root, "show", "--name-only", "--format=", sha).stdout.split()
    if shown != [path.relative_to(project.root).as_posix()]:
        fail("the merged record was not committed")
    return took, single


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.hosts < 10 * args.shards // 3 or not 1 < args.shards <= 256:
        raise SystemExit("need 1 < --shards <= 256 and enough hosts for every shard")
    lanes = ("plan", "one", "alone", "alone_beat", "sharded", "acquire", "beat", "merge", "single")
    figures: dict[str, list[float]] = {k: [] for k in lanes}
    with tempfile.TemporaryDirectory(prefix="opsledger-bench-shards-") as tmp:
        root = Path(tmp)
        project, bare, hosts = build(root, args.hosts)
        for round_no in range(1, args.rounds + 1):
            took, plan = lane_plan(project, hosts, args.shards)
            figures["plan"].append(took)
            order = ["one", "alone", "sharded"]
            if round_no % 2 == 0:
                order.reverse()
            for lane in order:
                if lane == "one":
                    figures["one"].append(lane_one(project, bare, hosts, root / "locks-one"))
                elif lane == "alone":
                    took, beat = lane_alone(project, bare, plan, root / "locks-alone")
                    figures["alone"].append(took)
                    figures["alone_beat"].append(beat)
                else:
                    wall, acquire_s, beat = lane_sharded(project, bare, plan, root)
                    figures["sharded"].append(wall)
                    figures["acquire"].append(acquire_s)
                    figures["beat"].append(beat)
            merged, single = lane_merge(project, plan, round_no)
            figures["merge"].append(merged)
            figures["single"].append(single)
            print(
                f"round {round_no}: plan {figures['plan'][-1]:.2f} s, one controller "
                f"{figures['one'][-1]:.2f} s, {args.shards} shards {figures['sharded'][-1]:.2f} s, "
                f"merge {merged:.3f} s",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"median of {args.rounds} rounds, {args.hosts} hosts over {args.shards} shards:")
    print(f"  plan (each runner, inventory loaded)      {med['plan']:8.3f} s")
    print(f"  lock all hosts, one controller            {med['one']:8.3f} s")
    print(f"  lock one shard's hosts, alone             {med['alone']:8.3f} s   "
          f"ratio to one controller: {med['alone'] / med['one']:5.2f}x")  # fmt: skip
    print(f"  lock, {args.shards} shards at once here (wall)      {med['sharded']:8.3f} s   "
          f"ratio to one controller: {med['sharded'] / med['one']:5.2f}x")  # fmt: skip
    print(f"  lock, one shard's acquire among them      {med['acquire']:8.3f} s")
    print(f"  heartbeat of a shard's leases, alone      {med['alone_beat']:8.3f} s")
    print(f"  heartbeat of a shard's leases, at once    {med['beat']:8.3f} s")
    print(f"  merge {args.shards} shard records + commit          {med['merge']:8.3f} s   "
          f"ratio to one record + commit: {med['merge'] / med['single']:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
