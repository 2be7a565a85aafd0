"""Sharded applies without the lab: the split is deterministic and keeps a cluster on one
shard in its order; shard records merge into one run record with the worst result, which is the
only run decide and pending see; a shard never runs twice; real Ansible runs (local-connection
hosts) on a real git repository; bad `--shard` values exit 2; the GitLab pipeline is sized as
the policy says."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import sys

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.pending import apply_pending
from opsledger.project import Project
from opsledger.records import Record, read_runs
from opsledger.runbooks import load_runbook
from opsledger.sharded import apply_shard, merge_shards, shard_of
from opsledger.shards import (
    Shard,
    ShardFile,
    committed_shard_files,
    gitlab_parallel_problems,
    merge_records,
    plan_shards,
    shard_count,
    split_hosts,
    worst,
)
from opsledger.signoff import request_change

from ..conftest import REPO_ROOT
from .conftest import START

INSIDE = START + dt.timedelta(minutes=30)
LAB = ["lab-app1", "lab-app2", "lab-db1", "lab-db2"]


# -- the split -----------------------------------------------------------------------------


def test_the_split_is_the_same_whatever_order_the_hosts_come_in_and_covers_each_once():
    hosts = [f"web{i:04d}" for i in range(1000)]
    plan = split_hosts(hosts, 10)
    for _ in range(3):
        shuffled = random.sample(hosts, len(hosts))
        assert split_hosts(shuffled, 10).shards == plan.shards
    flat = [h for shard in plan.shards for h in shard]
    assert sorted(flat) == sorted(hosts) and len(flat) == len(set(flat))
    assert {len(s) for s in plan.shards} == {100}


def test_a_together_group_stays_on_one_shard_in_its_order_and_serial_batches_stay_whole():
    hosts = ["app1", "app2", "app3", "db1", "db2", "db3"]
    rank = {"db2": 0, "db3": 0, "db1": 1}.get  # standbys, then the primary
    plan = split_hosts(hosts, 3, together=[["db1", "db2", "db3"]], rank=lambda h: rank(h, 2))
    (db,) = [s for s in plan.shards if "db1" in s]
    assert db == ["db2", "db3", "db1"]
    assert sorted(h for s in plan.shards for h in s) == hosts
    batches = split_hosts([f"h{i}" for i in range(10)], 3, serial=2)
    for shard in batches.shards:  # batches of two consecutive hosts never straddle shards
        pairs = {int(h[1:]) // 2 for h in shard}
        assert sum(1 for h in shard) == 2 * len(pairs)


def test_the_lab_splits_its_db_cluster_standby_first_and_unsplittable_runbooks_run_whole(repo):
    project, _, _ = repo
    patch = load_runbook(project, "os-patch")
    plan = plan_shards(project, environment="lab", runbook=patch, hosts=LAB, count=3)
    assert plan.split
    assert ["lab-db2", "lab-db1"] in plan.shards  # lab-db2 is the standby (host_vars)
    assert sorted(h for s in plan.shards for h in s) == LAB
    again = plan_shards(project, environment="lab", runbook=patch, hosts=LAB[::-1], count=3)
    assert again.shards == plan.shards
    switchover = load_runbook(project, "pg-switchover")
    whole = plan_shards(project, environment="lab", runbook=switchover, hosts=LAB, count=3)
    assert not whole.split and whole.shards == [LAB, [], []]
    restart = load_runbook(project, "service-restart")  # serial 1, no say: not split
    assert not plan_shards(project, environment="lab", runbook=restart, hosts=LAB, count=2).split


def test_shard_counts_come_from_the_environments_host_count_in_policy(repo):
    project, _, _ = repo
    assert shard_count(project, "lab") == 3  # 5 hosts, 2 per shard
    assert shard_count(project, "production") == 1
    counts = {name: shard_count(Project(REPO_ROOT), name) for name in ("lab", "staging")}
    assert gitlab_parallel_problems(REPO_ROOT / ".gitlab-ci.yml", counts) == []


def test_a_gitlab_pipeline_sized_otherwise_is_caught(tmp_path):
    pipeline = tmp_path / ".gitlab-ci.yml"
    pipeline.write_text("---\napply:lab:\n  parallel: 5\n  script: [x]\n")
    (problem,) = gitlab_parallel_problems(pipeline, {"lab": 2})
    assert problem.field == "apply:lab.parallel" and "set `parallel: 2`" in problem.fix


@pytest.mark.parametrize("spec", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", "1/999", ""])
def test_a_bad_shard_exits_2_naming_the_option(repo, spec):
    project, change_id, _ = repo
    result = CliRunner().invoke(
        cli,
        ["apply", change_id, "--shard", spec],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == 2, result.output
    assert "--shard" in result.output and "is not a shard" in result.output
    assert "Traceback" not in result.output


# -- the merge -----------------------------------------------------------------------------


def _shard_record(index: int, result: str, hosts: list[str], **extra) -> Record:
    return Record(
        kind="run",
        environment="lab",
        result=result,
        started_at=f"2026-12-01T20:0{index}:00+00:00",
        finished_at=f"2026-12-01T20:1{index}:00+00:00",
        change="CHG-0001",
        runbook="converge",
        targets=",".join(hosts),
        hosts=hosts,
        runner={"person": "ci", "ci": "github:x#1", "machine": f"runner{index}"},
        git_commit=f"{index}" * 40,
        content_sha256="c" * 64,
        stats={h: {"ok": 3, "changed": 1, "failures": 0} for h in hosts},
        verification={"status": "passed", "passed": 5, "failed": 0, "skipped": 1},
        measurements={"run_s": 10.0 * index, "lock_wait_s": 0.5},
        **extra,
    )


@dataclasses.dataclass
class _Change:
    id: str = "CHG-0001"
    environment: str = "lab"
    runbook: str = "converge"
    params: dict = dataclasses.field(default_factory=dict)
    targets: str = "all"


def _file(index, record, started=False):
    return ShardFile(f"changes/CHG-0001/shards/001-{index}of3.json", Shard(index, 3), 1, started,
                     record)  # fmt: skip


def test_the_merged_record_is_the_union_of_its_shards_with_the_worst_result():
    failed = _shard_record(
        2,
        "rolled_back",
        ["lab-db1", "lab-db2"],
        rollback={"runbook": "converge", "result": "success", "reason": "x"},
    )
    failed.verification = {"status": "failed", "passed": 3, "failed": 2, "failures": [{"t": 1}]}
    reports = {
        1: _file(1, _shard_record(1, "success", ["lab-app1"])),
        2: _file(2, failed),
        3: _file(3, _shard_record(3, "success", ["lab-app2"])),
    }
    merged = merge_records(_Change(), 3, 1, reports)
    assert merged.result == "rolled_back"
    assert merged.hosts == LAB and merged.targets == "all"
    assert merged.started_at == "2026-12-01T20:01:00+00:00"
    assert merged.finished_at == "2026-12-01T20:13:00+00:00"
    assert merged.verification["status"] == "failed" and merged.verification["passed"] == 13
    assert merged.rollback["shards"]["2/3"]["result"] == "success"
    assert merged.measurements["run_s"] == 30.0 and merged.measurements["run_sum_s"] == 60.0
    assert [s["result"] for s in merged.runner["shards"]] == ["success", "rolled_back", "success"]
    assert set(merged.stats) == set(LAB) and merged.content_sha256 == "c" * 64
    # the same shards give the same bytes (two merges racing write one record)
    assert merge_records(_Change(), 3, 1, reports).to_json() == merged.to_json()


def test_a_shard_that_never_reported_or_died_makes_the_run_interrupted():
    reports = {
        1: _file(1, _shard_record(1, "success", ["lab-app1"])),
        2: _file(2, _shard_record(2, "started", ["lab-db1"]), started=True),
        3: None,
    }
    merged = merge_records(_Change(), 3, 1, reports)
    assert merged.result == "interrupted"
    whys = {s["shard"]: s.get("why") for s in merged.runner["shards"]}
    assert whys == {
        "1/3": None,
        "2/3": "the shard started but wrote no final record",
        "3/3": "the shard never reported",
    }
    assert worst(["success", "failed", "rolled_back"]) == "failed"
    assert worst(["canceled", "rollback_failed", "success"]) == "rollback_failed"


def test_shards_that_ran_different_content_fail_the_merge():
    other = _shard_record(2, "success", ["lab-app2"])
    other.content_sha256 = "d" * 64
    reports = {1: _file(1, _shard_record(1, "success", ["lab-app1"])), 2: _file(2, other)}
    merged = merge_records(_Change(), 2, 1, reports)
    assert merged.result == "failed" and merged.findings[0]["rule"] == "one-content"


# -- real sharded runs on local-connection hosts ---------------------------------------------

PROBE_RUNBOOK = """\
---
description: Touch every target, failing where probe_fail is set (a sharded-apply test).
playbook: playbook.yml
parameters: {type: object, additionalProperties: false, properties: {}}
change_types: [standard]
standard: true
risk: low
check_mode: false
roles: []
verification: {suites: []}
rollback: null
serial: "100%"
max_fail_percentage: null
timeout: 300
promotion: false
"""

PROBE_PLAYBOOK = """\
---
- name: Touch every target
  hosts: all
  gather_facts: false
  serial: "100%"
  tasks:
    - name: Fail where asked
      ansible.builtin.fail:
        msg: "{{ inventory_hostname }} fails on purpose"
      when: probe_fail | default(false) | bool
    - name: Say who ran
      ansible.builtin.debug:
        msg: "{{ inventory_hostname }}"
"""


UNDO_PLAYBOOK = """\
---
- name: Undo the probe on each host, leaving a mark of it
  hosts: all
  gather_facts: false
  serial: "100%"
  tasks:
    - name: Mark the host as rolled back
      ansible.builtin.copy:
        content: "rolled back\\n"
        dest: "{{ probe_marks }}/{{ inventory_hostname }}"
        mode: "0644"
"""


def _local_change(repo, failing: str = "", marks=None):
    """A standard change on four local-connection hosts (group `local`), one failing. With
    `marks` (a folder) its runbook rolls back with shardprobe-undo, which marks each host
    it rolled back there."""
    project, _, _ = repo
    root = project.root
    (root / ".gitignore").write_text(".opsledger/\n__pycache__/\n")
    folder = root / "runbooks" / "shardprobe"
    folder.mkdir()
    runbook = PROBE_RUNBOOK
    if marks is not None:
        runbook = runbook.replace("rollback: null", "rollback: shardprobe-undo")
        undo = root / "runbooks" / "shardprobe-undo"
        undo.mkdir()
        (undo / "runbook.yml").write_text(
            PROBE_RUNBOOK.replace("Touch every target, failing", "Undo the probe, marking")
        )
        (undo / "playbook.yml").write_text(UNDO_PLAYBOOK)
    (folder / "runbook.yml").write_text(runbook)
    (folder / "playbook.yml").write_text(PROBE_PLAYBOOK)
    hosts = root / "inventories/lab/hosts.yml"
    lines = "    local:\n      hosts:\n"
    for i in range(1, 5):
        lines += (
            f"        lab-l{i}:\n          ansible_connection: local\n"
            f"          ansible_python_interpreter: {sys.executable}\n"
        )
        if marks is not None:  # a file written on this machine, as this user
            lines += f"          probe_marks: {marks}\n          ansible_become: false\n"
        if f"lab-l{i}" == failing:
            lines += "          probe_fail: true\n"
    hosts.write_text(hosts.read_text() + lines)
    git(root, "add", "-A")
    git(root, "-c", "user.name=Carol Chen", "-c", "user.email=carol@example.org", "commit", "-qm",
        "Probe")  # fmt: skip
    change, _ = request_change(
        project,
        title="Touch the local hosts",
        runbook="shardprobe",
        change_type="standard",
        requested_by="alice",
        reason="Shard a run",
        targets="local",
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(root, [change.file.parent], "Request", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    return project, change.id


def test_two_shards_run_their_own_hosts_and_merge_into_one_run_with_the_worst_result(repo):
    project, change_id = _local_change(repo, failing="lab-l3")
    one = shard_of(project, change_id, Shard(1, 2))
    two = shard_of(project, change_id, Shard(2, 2))
    assert set(one.hosts).isdisjoint(two.hosts)
    assert sorted(one.hosts + two.hosts) == ["lab-l1", "lab-l2", "lab-l3", "lab-l4"]
    first = apply_shard(project, change_id, Shard(1, 2), now=INSIDE, skip_verify=True)
    assert first.record_path.parent.name == "shards" and first.record.hosts == list(one.hosts)
    assert first.record.runner["shard"]["shard"] == "1/2"
    assert read_runs(project).committed == []  # a shard record is no run record
    with pytest.raises(OpsledgerError) as err:  # a shard never runs twice
        apply_shard(project, change_id, Shard(1, 2), now=INSIDE, skip_verify=True)
    assert err.value.exit_code == 4 and err.value.problems[0].field == "shards"
    second = apply_shard(project, change_id, Shard(2, 2), now=INSIDE, skip_verify=True)
    assert second.result == ("failed" if "lab-l3" in two.hosts else "success")
    (run,) = read_runs(project).committed  # the last shard merged them: THE run record
    assert run.result == "failed" and run.targets == "local"
    assert run.hosts == ["lab-l1", "lab-l2", "lab-l3", "lab-l4"]
    assert set(run.stats) == set(run.hosts)
    assert [s["shard"] for s in run.runner["shards"]] == ["1/2", "2/2"]
    files = committed_shard_files(project, change_id)
    assert sorted(f.path.rsplit("/", 1)[1] for f in files) == [
        "001-1of2.json", "001-1of2.started.json", "001-2of2.json", "001-2of2.started.json"
    ]  # fmt: skip
    assert git(project.root, "status", "--porcelain").stdout == ""
    # decide and pending read the merged run: a failed run of this content never runs again
    pending = apply_pending(project, now=INSIDE, environment="lab", skip_verify=True)
    (item,) = [i for i in pending.items if i.change_id == change_id]
    assert item.action == "cannot run" and "ended failed" in item.why
    again = merge_shards(project, change_id, count=2, final=True)
    assert again.already and again.result == "failed"  # merged once


@pytest.mark.parametrize("on_failure", ["own", "all"])
def test_a_failed_shard_rolls_back_its_own_hosts_and_the_policy_says_whether_others_do(
    repo, tmp_path, on_failure
):
    """policies/locks.yml `shards.on_failure`: `own` rolls back the failed shard's hosts only;
    `all` also rolls back, at the merge, the hosts of the shards that succeeded."""
    project, _, _ = repo
    (project.root / "policies" / "locks.yml").write_text(
        "---\ndefault: [machine]\nenvironments:\n  lab:\n    backends: [machine]\n"
        f"    shards: {{hosts_per_shard: 2, on_failure: {on_failure}}}\n"
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    project, change_id = _local_change(repo, failing="lab-l3", marks=marks)
    one = shard_of(project, change_id, Shard(1, 2))
    two = shard_of(project, change_id, Shard(2, 2))
    failed, other = (two, one) if "lab-l3" in two.hosts else (one, two)
    results = {
        i: apply_shard(project, change_id, Shard(i, 2), now=INSIDE, skip_verify=True)
        for i in (other.shard.index, failed.shard.index)  # the failing shard last: it merges
    }
    assert results[other.shard.index].result == "success"
    assert results[failed.shard.index].result in ("rolled_back", "rollback_failed", "failed")
    (run,) = read_runs(project).committed
    assert run.result != "success"
    rolled = sorted(p.name for p in marks.iterdir())
    if on_failure == "own":
        assert rolled == sorted(failed.hosts)  # the failed shard's hosts, no others
        assert "others" not in (run.rollback or {})
    else:
        assert rolled == ["lab-l1", "lab-l2", "lab-l3", "lab-l4"]  # every shard's hosts
        others = run.rollback["others"]
        assert others["result"] == "success", others
        assert "on_failure: all" in others["reason"]


def test_ci_apply_shard_on_the_cli_runs_one_shard_and_a_final_merge_records_a_missing_one(repo):
    project, change_id = _local_change(repo)
    env = {"OPSLEDGER_PROJECT": str(project.root)}
    ran = CliRunner().invoke(
        cli, ["apply", change_id, "--shard", "1/3", "--at", INSIDE.isoformat(), "--skip-verify",
              "--json"], env=env, catch_exceptions=False,
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.output.strip().splitlines()[-1])
    assert "/shards/001-1of3.json" in result["record"]
    assert read_runs(project).committed == []
    merged = CliRunner().invoke(cli, ["ci", "merge", "--env", "lab"], env=env)
    assert merged.exit_code == 0 and "waits for shard(s) 2/3, 3/3" in merged.output
    final = CliRunner().invoke(cli, ["ci", "merge", "--env", "lab", "--final"], env=env)
    assert final.exit_code == 1, final.output  # shards 2 and 3 never reported
    assert "merged: interrupted" in final.output
    (run,) = read_runs(project).committed
    assert run.result == "interrupted" and run.runner["set"] == 1


def test_two_ci_runners_sharing_only_a_bare_origin_apply_one_change_in_shards(repo, tmp_path):
    """`ci apply --shard I/2` in two clones at once (each its own machine-lock folder), the
    locks and records on a bare origin: each runs its own hosts, pushes its shard record
    (rebasing onto the other's), and the last one merges them into the one run record."""
    import subprocess

    project, _, _ = repo
    (project.root / "policies" / "locks.yml").write_text(
        "---\ndefault: [machine]\nenvironments:\n"
        "  lab: {backends: [machine, origin], remote: origin, lease_s: 60,\n"
        "        shards: {hosts_per_shard: 2, max: 3, on_failure: own}}\n"
    )
    project, change_id = _local_change(repo)
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(project.root, "push", "-q", str(bare), "main")
    runners = []
    for index in (1, 2):
        root = tmp_path / f"runner{index}"
        git(tmp_path, "clone", "-q", str(bare), str(root))
        env = {
            **os.environ,
            "OPSLEDGER_PROJECT": str(root),
            "OPSLEDGER_PERSON": "ci",
            "OPSLEDGER_COMMITTER_NAME": "opsledger CI",
            "OPSLEDGER_COMMITTER_EMAIL": "ci@example.org",
            "OPSLEDGER_LOCK_DIR": str(tmp_path / f"locks{index}"),
            "OPSLEDGER_RUNNER": f"runner-{index}",
            "PYTHONPATH": str(REPO_ROOT / "src"),  # this checkout's opsledger, from any cwd
        }
        argv = [
            sys.executable,
            "-m",
            "opsledger",
            "ci",
            "apply",
            "--env",
            "lab",
            "--push",
            "origin",
            "--wait",
            "300",
            "--at",
            INSIDE.isoformat(),
            "--shard",
            f"{index}/2",
        ]
        out = subprocess.PIPE
        runners.append(subprocess.Popen(argv, cwd=root, env=env, text=True, stdout=out, stderr=out))
    outputs = ["".join(proc.communicate(timeout=900)) for proc in runners]
    for proc, out in zip(runners, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    auditor = tmp_path / "auditor"
    git(tmp_path, "clone", "-q", str(bare), str(auditor))
    audit = Project(auditor)
    (run,) = [r for r in read_runs(audit).committed if r.change == change_id]
    assert run.result == "success" and run.hosts == ["lab-l1", "lab-l2", "lab-l3", "lab-l4"]
    finals = [f for f in committed_shard_files(audit, change_id) if not f.started]
    assert sorted(h for f in finals for h in f.record.stats) == run.hosts  # none ran twice
    assert {f.record.runner["lock_runner"] for f in finals} == {
        "runner-1 shard 1/2",
        "runner-2 shard 2/2",
    }
    assert git(bare, "for-each-ref", "refs/opsledger/locks").stdout == ""  # all released
