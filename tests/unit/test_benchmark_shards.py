"""The shards benchmark times the real path or stops: locks it did not really take on the
origin, or a merge that did not name every host, end it instead of being timed."""

from __future__ import annotations

import importlib.util

import pytest

from ..conftest import REPO_ROOT


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_shards", REPO_ROOT / "benchmarks/shards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shards_benchmark_measures_locks_on_the_origin_and_a_real_merge(tmp_path):
    bench = _bench()
    project, bare, hosts = bench.build(tmp_path, 40)
    took, plan = bench.lane_plan(project, hosts, 3)
    assert took > 0 and sum(len(s) for s in plan.shards) == 40
    assert bench.lane_one(project, bare, hosts, tmp_path / "locks") > 0
    alone, beat = bench.lane_alone(project, bare, plan, tmp_path / "alone")
    assert alone > 0 and beat > 0
    wall, acquire_s, beat = bench.lane_sharded(project, bare, plan, tmp_path)
    assert wall > 0 and acquire_s > 0 and beat > 0
    merged, single = bench.lane_merge(project, plan, 1)
    assert merged > 0 and single > 0


def test_the_shards_benchmark_stops_when_no_lock_reached_the_origin(tmp_path):
    bench = _bench()
    project, bare, hosts = bench.build(tmp_path, 40)
    (project.root / "policies" / "locks.yml").write_text(
        "environments:\n  bench: {backends: [machine]}\n"  # locks that stay on this machine
    )
    with pytest.raises(SystemExit, match="0 lock refs on the origin"):
        bench.lane_one(project, bare, hosts, tmp_path / "locks")
