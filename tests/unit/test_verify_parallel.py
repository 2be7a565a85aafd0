"""Verification runs hosts side by side: the existing suite path, in up to `workers` pytest
processes at once (the CPU count by default), with the outcomes of every host merged. Real
pytest processes and real Testinfra hosts (local connection); each test notes when it ran, so
the proof is that hosts were verified at the same time (each test waits at a barrier until all
four are running), not a timing ratio on a busy machine."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from opsledger.errors import OpsledgerError
from opsledger.project import Project
from opsledger.verify import verify, verify_workers

from ..conftest import REPO_ROOT

HOSTS = [f"vh{i}" for i in range(1, 5)]

PROBE_SUITE = """\
import json
import os
import time

SUITE = "probe"
APPLIES_TO = "all"


def test_the_host_answers(target, host):
    log = os.environ["PROBE_LOG"]
    started = time.time()
    assert host.run("true").rc == 0
    open(os.path.join(log, target.name + ".started"), "w").close()
    # A barrier: with PROBE_TOGETHER=n this test goes on only once n hosts are being verified
    # at this very moment, which only processes running side by side can do.
    together = int(os.environ.get("PROBE_TOGETHER", "0"))
    deadline = time.time() + 300
    while sum(1 for name in os.listdir(log) if name.endswith(".started")) < together:
        assert time.time() < deadline, "the other hosts were not verified at the same time"
        time.sleep(0.1)
    with open(os.path.join(log, target.name + ".json"), "w") as out:
        json.dump({"start": started, "end": time.time(), "pid": os.getpid()}, out)
    assert target.name != os.environ.get("PROBE_FAIL")
"""


def _project(tmp_path) -> Project:
    root = tmp_path / "p"
    for part in ("ansible.cfg", "roles", "vault-passwords"):
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / part)
    suites = root / "tests" / "infra"
    suites.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "infra" / "conftest.py", suites / "conftest.py")
    (suites / "test_probe.py").write_text(PROBE_SUITE)
    inventory = root / "inventories" / "lab"
    inventory.mkdir(parents=True)
    hosts = "".join(
        f"        {h}:\n          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
        for h in HOSTS
    )
    (inventory / "hosts.yml").write_text(f"---\nall:\n  children:\n    web:\n      hosts:\n{hosts}")
    (root / "policies").mkdir()
    return Project(root)


def _spans(log_dir):
    return {p.stem: json.loads(p.read_text()) for p in log_dir.glob("*.json")}


def test_hosts_are_verified_at_the_same_time_and_their_outcomes_merged(tmp_path, monkeypatch):
    project = _project(tmp_path)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    monkeypatch.setenv("PROBE_LOG", str(log_dir))
    monkeypatch.setenv("PROBE_FAIL", "vh3")
    monkeypatch.setenv("PROBE_TOGETHER", "4")  # each waits until all four are being verified
    result = verify(project, environment="lab", targets="web", workers=4)
    assert result.workers == 4
    assert sorted(o.host for o in result.outcomes) == HOSTS  # every host, once
    assert [o.host for o in result.failures] == ["vh3"] and not result.ok
    spans = _spans(log_dir)
    assert len({s["pid"] for s in spans.values()}) == 4  # four pytest processes
    assert sorted(spans) == HOSTS  # each passed the barrier: all four ran at one moment


def test_one_worker_is_the_one_process_path_and_the_worker_count_is_bounded(tmp_path, monkeypatch):
    project = _project(tmp_path)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    monkeypatch.setenv("PROBE_LOG", str(log_dir))
    result = verify(project, environment="lab", targets="vh1,vh2", workers=1)
    assert result.ok and result.workers == 1 and result.count("passed") == 2
    spans = _spans(log_dir)
    assert len({s["pid"] for s in spans.values()}) == 1
    assert verify_workers(1000, 8) == 8 and verify_workers(3, 8) == 3
    monkeypatch.setenv("OPSLEDGER_VERIFY_WORKERS", "2")
    assert verify_workers(1000) == 2
    monkeypatch.setenv("OPSLEDGER_VERIFY_WORKERS", "nonsense")  # falls back to the CPUs
    assert 1 <= verify_workers(1000) <= 1000


def test_a_suite_that_cannot_be_collected_is_named_with_its_whole_error(tmp_path, monkeypatch):
    """pytest's closing summary cuts lines to 80 columns in a pipe; verify quoted that summary,
    so a worker's collection error read "OpsledgerError: /tmp/pytes…" and nothing more."""
    project = _project(tmp_path)
    monkeypatch.setenv("PROBE_LOG", str(tmp_path))
    why = "the probe cannot start: " + "a long reason that goes past eighty columns " * 3
    suite = project.root / "tests" / "infra" / "test_probe.py"
    suite.write_text(f"raise RuntimeError({why!r})\n" + suite.read_text())
    with pytest.raises(OpsledgerError) as raised:
        verify(project, environment="lab", targets="web", workers=2)
    assert why.strip() in str(raised.value.problems[0]), raised.value.problems[0]
