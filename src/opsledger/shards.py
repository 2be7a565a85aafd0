"""Sharded applies: one change's hosts split over the CI runners a team already has.

Nothing here schedules anything: the pipeline's matrix (GitHub) or `parallel:` (GitLab)
starts N jobs, and each runs `opsledger ci apply --shard I/N`. Every job computes the same
split from the same inputs, so no coordinator is needed:

- **split** (`split_hosts`): the change's hosts, sorted by name, grouped into *units* that never
  straddle two shards — the hosts of a group the runbook keeps together (`shards.together`: a
  PostgreSQL cluster, standby before primary as `shards.order` says), and otherwise the
  runbook's serial batches (hosts one at a time for `serial: 1`). Units go, largest first
  and then by first host, to the least loaded shard (lowest index on a tie). Same inputs, same
  shards, on every runner. A runbook that may not be split (`shards.split: false`, and by
  default any whose serial limits how many hosts change at once) runs whole on shard 1.
- **shard run**: each shard locks only its hosts (lock.py, with the origin backend so every
  runner sees them), runs, verifies and, on failure, rolls back its own hosts; it writes a
  *shard record* `changes/<block>/<ID>/shards/<set>-<I>of<N>.json` (write-ahead `.started.json`
  first). The set number is the change's count of run records + 1, the same on every runner.
  Shard records live outside `runs/`, so decide, evidence and audit never read one: they are
  the working papers of a run, not the run.
- **merge** (`merge_shards`): once every shard reported (a final record each; in CI the merge
  job runs after all shard jobs ended, and a shard that left only a write-ahead record, or
  none, counts as interrupted), one run record `changes/<block>/<ID>/runs/<stamp>.json` is written:
  the union of the shards' hosts, stats and verification, the worst result. That record is
  THE run record: the one evidence, decide and audit read. With `shards.on_failure: all`
  (policies/locks.yml) the hosts of the shards that succeeded are rolled back too when
  another failed. It is claimed on the origin like a run (origin_records.py): of two merges
  racing, one writes it. The use cases (run a shard, merge) are in sharded.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsledger.errors import EXIT_INVALID, EXIT_LOCKED, OpsledgerError, Problem
from opsledger.gitrepo import blob_contents, git_env
from opsledger.layout import SHARDS, change_folder, change_pathspecs
from opsledger.project import Project
from opsledger.records import Record, RunResult, Verified, change_runs, record_from_data

# Worst last: the merged run's result is the worst of its shards'.
SEVERITY = (  # a merged run ends as its worst shard
    RunResult.SUCCESS,
    RunResult.CANCELED,
    RunResult.INTERRUPTED,
    RunResult.ROLLED_BACK,
    RunResult.FAILED,
    RunResult.ROLLBACK_FAILED,
)
_SPEC = re.compile(r"^([1-9][0-9]{0,2})/([1-9][0-9]{0,2})$")
_SHARD_FILE = re.compile(r"^([0-9]{3})-([0-9]+)of([0-9]+)(\.started)?\.json$")
MAX_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """Shard I of N (1-based), as `--shard I/N` names it."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> Shard:
        """`I/N` with 1 <= I <= N <= 256; exit 2 naming the option otherwise."""
        match = _SPEC.fullmatch(text or "")
        if not match or not 1 <= int(match[1]) <= int(match[2]) <= MAX_SHARDS:
            raise OpsledgerError(
                Problem(
                    f"{text!r} is not a shard",
                    field=option,
                    fix=f"I/N with 1 <= I <= N <= {MAX_SHARDS}, e.g. 2/4 (the job's index "
                    "and the matrix size: $CI_NODE_INDEX/$CI_NODE_TOTAL on GitLab)",
                ),
                EXIT_INVALID,
            )
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class ShardPlan:
    """Which hosts each shard runs, in run order; `split` False: all on shard 1."""

    count: int
    shards: list[list[str]]
    units: list[list[str]]
    split: bool
    why: str = ""

    def hosts_of(self, index: int) -> list[str]:
        return self.shards[index - 1]


def _batch_size(serial: int | str | None, total: int) -> int:
    """Hosts per serial batch, as Ansible counts it (a percentage of the play's hosts)."""
    if serial is None or serial == "100%":
        return total
    text = str(serial)
    if text.endswith("%"):
        return max(1, math.floor(total * float(text[:-1]) / 100))
    return max(1, int(text))


def split_hosts(
    hosts: list[str],
    count: int,
    *,
    serial: int | str | None = "100%",
    together: list[list[str]] | None = None,
    rank: Callable[[str], int] | None = None,
) -> ShardPlan:
    """Split hosts into `count` shards deterministically (see the module doc).

    `together`: host lists that must stay in one shard (overlapping lists join); `rank`:
    a host's place inside its unit (lower first: standby before primary).

    Example:
        split_hosts(["a", "b", "c"], 2).shards == [["a", "c"], ["b"]]
    """
    ordered = sorted(set(hosts))
    rank = rank or (lambda host: 0)
    # union of the together-groups (a host in two groups joins them)
    owner: dict[str, int] = {}
    groups: list[set[str]] = []
    for members in together or []:
        wanted = {h for h in members if h in set(ordered)}
        if not wanted:
            continue
        joined = {owner[h] for h in wanted if h in owner}
        merged = set(wanted).union(*(groups[i] for i in joined))
        for i in joined:
            groups[i] = set()
        groups.append(merged)
        for h in merged:
            owner[h] = len(groups) - 1
    units = [sorted(g, key=lambda h: (rank(h), h)) for g in groups if g]
    loose = [h for h in ordered if h not in owner]
    size = _batch_size(serial, len(ordered))
    if size >= len(ordered):
        size = 1  # one batch of all: every host may run anywhere
    units += [loose[i : i + size] for i in range(0, len(loose), size)]
    units.sort(key=lambda u: min(u))
    shards: list[list[str]] = [[] for _ in range(count)]
    loads = [0] * count
    placed: list[list[list[str]]] = [[] for _ in range(count)]
    for unit in sorted(units, key=lambda u: (-len(u), min(u))):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += len(unit)
        placed[target].append(unit)
    for i in range(count):
        for unit in sorted(placed[i], key=lambda u: min(u)):
            shards[i] += unit
    return ShardPlan(count, shards, units, True)


def plan_shards(
    project: Project, *, environment: str, runbook: Any, hosts: list[str], count: int
) -> ShardPlan:
    """The split of a change's hosts for `count` shards, as its runbook allows.

    Example:
        plan_shards(project, environment="lab", runbook=load_runbook(project, "converge"),
                    hosts=["lab-app1", "lab-app2", "lab-db1", "lab-db2"], count=3).shards
    """
    from opsledger.inventory import load_inventory

    rules = dict(runbook.raw.get("shards") or {})
    default_split = runbook.serial in (None, "100%")
    if runbook.raw.get("drill"):
        rules["split"] = False  # one drill record of the whole service
    if not rules.get("split", default_split) or count == 1:
        why = (
            f"runbook {runbook.name} is not split over runners"
            if count > 1
            else "one shard: the whole change"
        )
        whole = sorted(set(hosts))
        return ShardPlan(count, [whole] + [[] for _ in range(count - 1)], [whole], False, why)
    inventory = load_inventory(project.inventory_file(environment))
    together = [[h.name for h in inventory.group(g)] for g in rules.get("together") or []]
    order = rules.get("order") or {}
    values = list(order.get("values") or [])
    by_name = {h.name: h for h in inventory.match("all")}

    def rank(host: str) -> int:
        value = by_name[host].get(order["variable"]) if order and host in by_name else None
        return values.index(value) if value in values else len(values)

    return split_hosts(hosts, count, serial=runbook.serial, together=together, rank=rank)


def shard_count(project: Project, environment: str) -> int:
    """How many shards (runners) an apply of the environment gets, from its host count.

    The host count divided by `shards.hosts_per_shard` of policies/locks.yml, rounded up, at
    most `shards.max`; 1 when the policy does not shard it. The pipelines' matrix (GitHub) and
    `parallel:` (GitLab) are sized from it.

    Example:
        shard_count(find_project(), "production")
    """
    from opsledger.inventory import load_inventory
    from opsledger.lock import lock_policy

    rules = lock_policy(project, environment).shards
    per = rules.get("hosts_per_shard")
    if not per:
        return 1
    hosts = len(load_inventory(project.require_environment(environment)).match("all"))
    return max(1, min(int(rules.get("max", MAX_SHARDS)), math.ceil(hosts / int(per))))


def gitlab_parallel_problems(pipeline: Path, counts: dict[str, int]) -> list[Problem]:
    """Where the GitLab pipeline's `apply:<env>` jobs are not sized as the policy says.

    GitLab's `parallel:` must be a number written in the file (a generated child pipeline
    would hide the jobs from the environment's page), so the file is checked instead:
    `opsledger ci shards --check-gitlab .gitlab-ci.yml` in the lint job.
    """
    from opsledger.yamlio import load_yaml

    data = load_yaml(pipeline, what="GitLab pipeline")
    problems = []
    for name, count in counts.items():
        job = data.get(f"apply:{name}") if isinstance(data, dict) else None
        if not isinstance(job, dict):
            continue
        written = job.get("parallel", 1)
        if written != count:
            problems.append(
                Problem(
                    f"apply:{name} runs {written} shard job(s), policies/locks.yml sizes "
                    f"{name} at {count}",
                    str(pipeline),
                    f"apply:{name}.parallel",
                    f"set `parallel: {count}`" if count > 1 else "remove `parallel:`",
                )
            )
    return problems


# -- shard records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRun:
    """What apply needs to run one shard: which, of which set, on which hosts."""

    shard: Shard
    attempt: int  # the set: the change's run records + 1 (the same on every runner)
    hosts: tuple[str, ...]

    def paths(self, project: Project, change_id: str) -> tuple[Path, Path]:
        """(write-ahead, final) record paths of this shard."""
        folder = shards_dir(project, change_id)
        stem = f"{self.attempt:03d}-{self.shard.index}of{self.shard.count}"
        return folder / f"{stem}.started.json", folder / f"{stem}.json"

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": str(self.shard),
            "set": self.attempt,
            "hosts": list(self.hosts),
        }


def shards_dir(project: Project, change_id: str) -> Path:
    return change_folder(project.root, change_id, SHARDS)


def next_attempt(project: Project, change_id: str) -> int:
    """The set number of the change's next sharded run: its committed run records + 1."""
    return 1 + sum(1 for r in change_runs(project) if r.change == change_id)


@dataclass
class ShardFile:
    path: str  # relative to the project
    shard: Shard
    attempt: int
    started: bool
    record: Record | None


def committed_shard_files(project: Project, change_id: str) -> list[ShardFile]:
    """The shard records of a change that HEAD holds (write-ahead and final)."""
    folders = [f"{p}/" for p in change_pathspecs(change_id, SHARDS)]  # either layout
    listing = subprocess.run(
        ["git", "-C", str(project.root), "ls-tree", "-r", "-z", "HEAD", "--", *folders],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # a path git prints may be any bytes
        env=git_env(),
        check=False,
    ).stdout.split("\0")
    blobs: dict[str, str] = {}
    for entry in filter(None, listing):
        meta, _, path = entry.partition("\t")
        if _SHARD_FILE.fullmatch(path.rsplit("/", 1)[-1]):
            blobs[path] = meta.split()[-1]
    if not blobs:
        return []
    contents = blob_contents(project.root, list(blobs.values()))
    files = []
    for path, blob in sorted(blobs.items()):
        match = _SHARD_FILE.fullmatch(path.rsplit("/", 1)[-1])
        assert match is not None
        try:
            record = record_from_data(json.loads(contents.get(blob, b"")))
        except ValueError:
            record = None
        shard = Shard(int(match[2]), int(match[3]))
        files.append(ShardFile(path, shard, int(match[1]), bool(match[4]), record))
    return files


def shard_ran(project: Project, change_id: str, run: ShardRun) -> ShardFile | None:
    """The shard's record of its set, when HEAD already has one (another job ran it)."""
    for file in committed_shard_files(project, change_id):
        if file.attempt == run.attempt and file.shard == run.shard:
            return file
    return None


def refuse_shard_ran(project: Project, change_id: str, run: ShardRun) -> None:
    """Exit 4 when this shard of this set already ran (or runs): never run a shard twice.

    Checked once the shard's hosts are locked and the origin pulled, like refuse_running: two
    pipelines that both start shard 2 lock the same hosts, and the second finds the first's
    record once it gets them.
    """
    found = shard_ran(project, change_id, run)
    if found is not None:
        ended = found.record.result if found.record else "?"
        how = "started" if found.started else f"ended {ended}"
        raise OpsledgerError(
            Problem(
                f"shard {run.shard} of set {run.attempt} already ran ({how}): {found.path}; "
                "nothing was run",
                found.path,
                "shards",
                "nothing to do: the merge of the shards writes the change's run record",
            ),
            EXIT_LOCKED,
        )


def reports_of(
    project: Project, change_id: str, attempt: int, count: int
) -> dict[int, ShardFile | None]:
    """Each shard's newest word in HEAD: its final record, else its write-ahead one, else None."""
    reports: dict[int, ShardFile | None] = {i: None for i in range(1, count + 1)}
    for file in committed_shard_files(project, change_id):
        if file.attempt != attempt or file.shard.count != count:
            continue
        current = reports.get(file.shard.index)
        if current is None or (current.started and not file.started):
            reports[file.shard.index] = file
    return reports


def latest_attempt(project: Project, change_id: str, count: int) -> int:
    """The newest set of `count` shards the change has records of (else its next set)."""
    sets = [f.attempt for f in committed_shard_files(project, change_id) if f.shard.count == count]
    return max(sets) if sets else next_attempt(project, change_id)


def merged_already(project: Project, change_id: str, attempt: int) -> Record | None:
    """The change's run record merged from this set, when HEAD has it."""
    for record in change_runs(project):
        shards = record.runner.get("shards") if record.change == change_id else None
        if shards and record.runner.get("set") == attempt:
            return record
    return None


# -- the merge ----------------------------------------------------------------------------------


def worst(results: list[str]) -> str:
    """The worst result of several (SEVERITY order); an unknown one counts as failed."""
    ranked = [SEVERITY.index(r) if r in SEVERITY else SEVERITY.index("failed") for r in results]
    return SEVERITY[max(ranked)] if ranked else "interrupted"


def _merge_verification(parts: list[dict[str, Any]], targets: str) -> dict[str, Any]:
    statuses = [p.get("status", Verified.NOT_RUN) for p in parts]
    status: Verified
    if all(s == Verified.PASSED for s in statuses):
        status = Verified.PASSED
    elif all(s == Verified.SKIPPED for s in statuses):
        return {"status": Verified.SKIPPED}
    elif any(s == Verified.FAILED for s in statuses):
        status = Verified.FAILED
    elif any(s == Verified.ERROR for s in statuses):
        status = Verified.ERROR
    else:
        status = Verified.NOT_RUN
    merged: dict[str, Any] = {"status": status, "targets": targets}
    for key in ("passed", "failed", "skipped"):
        merged[key] = sum(int(p.get(key) or 0) for p in parts)
    merged["suites"] = sorted({s for p in parts for s in p.get("suites") or []})
    merged["environment"] = next((p["environment"] for p in parts if p.get("environment")), "")
    merged["failures"] = [f for p in parts for f in p.get("failures") or []]
    merged["duration_s"] = max((float(p.get("duration_s") or 0) for p in parts), default=0.0)
    merged["shards"] = statuses
    return merged


def _merge_maps(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key] = merged[key] + value
            else:
                merged.setdefault(key, value)
    return merged


def merge_records(
    change: Any, count: int, attempt: int, reports: dict[int, ShardFile | None]
) -> Record:
    """The change's one run record from its shards' records (pure: same shards, same bytes).

    `reports`: shard index -> its final record, or its write-ahead one (the shard died:
    interrupted), or None (it never started: interrupted too, nothing of it ran).
    """
    finals = {i: f.record for i, f in reports.items() if f and not f.started and f.record}
    opened = {i: f.record for i, f in reports.items() if f and f.started and f.record}
    every = [r for r in (*finals.values(), *opened.values()) if r is not None]
    results = []
    entries = []
    for index in range(1, count + 1):
        file = reports.get(index)
        record = file.record if file else None
        if file is None or record is None:
            result, why = "interrupted", "the shard never reported"
        elif file.started:
            result, why = "interrupted", "the shard started but wrote no final record"
        else:
            result, why = record.result, ""
        results.append(result)
        entry = {"shard": f"{index}/{count}", "result": result}
        if file is not None:
            entry["record"] = file.path
        if record is not None:
            entry["hosts"] = record.hosts
            entry["machine"] = record.runner.get("machine", "")
            entry["ci"] = record.runner.get("ci")
            entry["lock_runner"] = record.runner.get("lock_runner", "")
            if record.log:
                entry["log"] = record.log
        if why:
            entry["why"] = why
        entries.append(entry)
    first = min(every, key=lambda r: r.started_at) if every else None
    contents = sorted({r.content_sha256 for r in every})
    findings = [f for r in finals.values() for f in r.findings]
    result = worst(results)
    if len(contents) > 1:
        findings.append(
            {
                "rule": "one-content",
                "message": "the shards ran different content: "
                + ", ".join(c[:12] for c in contents),
            }
        )
        result = worst([result, "failed"])
    rollbacks = {f"{i}/{count}": r.rollback for i, r in sorted(finals.items()) if r.rollback}
    rollback = None
    if rollbacks:
        oks = [rb.get("result") == "success" for rb in rollbacks.values()]
        one = next(iter(rollbacks.values()))
        rollback = {
            "runbook": one.get("runbook"),
            "base_commit": one.get("base_commit"),
            "reason": "; ".join(f"{k}: {rb.get('reason', '')}" for k, rb in rollbacks.items()),
            "result": "success" if all(oks) else "failed",
            "shards": rollbacks,
        }
    timings = [r.measurements for r in finals.values()]
    measurements: dict[str, Any] = {"shards": count}
    for key in ("lock_wait_s", "run_s", "verify_s", "rollback_s"):
        values = [float(t[key]) for t in timings if isinstance(t.get(key), int | float)]
        if values:
            measurements[key] = max(values)  # the shards ran side by side: the longest counts
            measurements[f"{key.removesuffix('_s')}_sum_s"] = round(sum(values), 3)
    hosts = [h for i in sorted(finals) for h in finals[i].hosts] + [
        h for i in sorted(opened) for h in opened[i].hosts
    ]
    return Record(
        kind="run",
        environment=change.environment,
        result=result,
        started_at=first.started_at if first else "",
        finished_at=max((r.finished_at for r in finals.values()), default="")
        or (first.started_at if first else ""),
        change=change.id,
        runbook=change.runbook,
        params=change.params,
        targets=change.targets,
        hosts=sorted(set(hosts)),
        runner={
            **({k: v for k, v in first.runner.items() if k in ("person", "ci")} if first else {}),
            "shards": entries,
            "set": attempt,
        },
        git_commit=first.git_commit if first else "",
        content_sha256=contents[0] if len(contents) == 1 else "",
        policy_sha256=first.policy_sha256 if first else "",
        decision=first.decision if first else {},
        stats={h: s for r in finals.values() for h, s in r.stats.items()},
        changed_tasks=[t for i in sorted(finals) for t in finals[i].changed_tasks],
        verification=_merge_verification(
            [
                finals[i].verification if i in finals else {"status": Verified.NOT_RUN}
                for i in range(1, count + 1)
            ],
            change.targets,
        ),
        rollback=rollback,
        findings=findings,
        measurements=measurements,
        maintenance=_merge_maps([finals[i].maintenance for i in sorted(finals)]),
        lock={
            "backends": first.lock.get("backends", []) if first else [],
            "taken_over": [n for r in every for n in r.lock.get("taken_over", [])],
            "shards": count,
        },
    )


__all__ = [
    "Shard",
    "ShardPlan",
    "ShardRun",
    "gitlab_parallel_problems",
    "latest_attempt",
    "merge_records",
    "merged_already",
    "next_attempt",
    "plan_shards",
    "refuse_shard_ran",
    "reports_of",
    "shard_count",
    "shard_ran",
    "split_hosts",
    "worst",
]
