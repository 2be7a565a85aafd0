"""Run the Testinfra suites (tests/infra) against an environment and report each test.

The same suites verify a Molecule instance, the lab, staging, production and a DR drill: this
is the one place that runs them for the CLI, the change workflow and drills, in a separate
pytest process (so a suite's imports and fixtures never leak into opsledger's own process),
and reads the outcome of every test from pytest's JUnit XML.

The suites run one host after another inside one pytest process, so verification time grew
with the host count (about 1.8 h extrapolated at 1,000 hosts). With several hosts, the hosts are
dealt round-robin to `workers` pytest processes of this same path (`--targets h1,h3,...`) that
run at once, and their outcomes are merged: time stays flat as hosts grow up to the worker
count. Workers default to the CPU count ($OPSLEDGER_VERIFY_WORKERS or `workers` to choose).
pytest-xdist is not needed: each worker is the ordinary suite run on fewer hosts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.inventory import load_inventory
from opsledger.project import Project
from opsledger.records import Verified


@dataclass(frozen=True)
class TestOutcome:
    """One verification test on one host: passed, failed, error or skipped, and why."""

    __test__ = False  # not a pytest test class

    test: str
    host: str
    status: Verified
    message: str = ""


@dataclass
class VerifyResult:
    environment: str
    targets: str
    suites: tuple[str, ...]
    outcomes: list[TestOutcome] = field(default_factory=list)
    duration_s: float = 0.0
    exit_code: int = 0
    output: str = ""
    workers: int = 1  # pytest processes that ran at once

    def count(self, status: Verified) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failures(self) -> list[TestOutcome]:
        return [o for o in self.outcomes if o.status in (Verified.FAILED, Verified.ERROR)]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures and self.count(Verified.PASSED) > 0


_JUNIT_KINDS = {"failure": Verified.FAILED, "error": Verified.ERROR, "skipped": Verified.SKIPPED}


def _outcomes(junit: Path) -> list[TestOutcome]:
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        test, _, param = name.partition("[")
        host = param.rstrip("]").split(":", 1)[0]
        status, message = Verified.PASSED, ""
        for kind, found in _JUNIT_KINDS.items():
            element = case.find(kind)
            if element is not None:
                status = found
                message = (element.get("message") or element.text or "").strip()
                break
        outcomes.append(TestOutcome(test, host, status, message.splitlines()[0] if message else ""))
    return outcomes


def verify_workers(hosts: int, workers: int | None = None) -> int:
    """How many pytest processes verify `hosts` hosts at once: the setting, else the CPUs."""
    if workers is None:
        configured = os.environ.get("OPSLEDGER_VERIFY_WORKERS", "")
        workers = int(configured) if configured.isdigit() and int(configured) > 0 else 0
        workers = workers or os.cpu_count() or 1
    return max(1, min(workers, hosts))


def _argv(project: Project, suite_dir: Path, junit: Path, environment: str, targets: str,
          suites: tuple[str, ...]) -> list[str]:  # fmt: skip
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(suite_dir),
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(project.root),
        "-o",
        "addopts=",
        "--junitxml",
        str(junit),
        "--inventory",
        str(project.inventory_file(environment)),
        "--env",
        environment,
        "--targets",
        targets,
    ]
    if suites:
        argv += ["--suites", ",".join(suites)]
    return argv


def verify(
    project: Project,
    *,
    environment: str = "lab",
    targets: str = "all",
    suites: tuple[str, ...] = (),
    timeout: float = 1800,
    workers: int | None = None,
) -> VerifyResult:
    """Verify hosts against their desired state with the Testinfra suites.

    With several hosts, up to `workers` pytest processes (default: the CPU count, or
    $OPSLEDGER_VERIFY_WORKERS) verify a share of the hosts each, at once.

    Example:
        result = verify(find_project(), environment="lab", targets="db", suites=("postgresql",))
        result.ok, result.count(Verified.PASSED), result.failures
    """
    suite_dir = project.root / "tests" / "infra"
    known = sorted(p.stem.removeprefix("test_") for p in suite_dir.glob("test_*.py"))
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise OpsledgerError(
            Problem(
                f"unknown suite(s) {', '.join(unknown)}",
                field="suite",
                fix=f"use one of: {', '.join(known)}",
            )
        )
    inventory = project.require_environment(environment)
    hosts = [
        h.name for h in load_inventory(inventory).match(targets)
    ]  # refused here, not in pytest
    count = verify_workers(len(hosts), workers)
    shares = [targets] if count == 1 else [",".join(hosts[i::count]) for i in range(count)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opsledger-verify-") as tmp:

        def run(index: int) -> tuple[subprocess.CompletedProcess, list[TestOutcome]]:
            junit = Path(tmp) / f"junit-{index}.xml"
            argv = _argv(project, suite_dir, junit, environment, shares[index], suites)
            proc = subprocess.run(
                argv,
                cwd=project.root,
                env=project.ansible_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            return proc, _outcomes(junit) if junit.exists() else []

        with ThreadPoolExecutor(max_workers=count) as pool:
            done = list(pool.map(run, range(count)))
    result = VerifyResult(
        environment,
        targets,
        tuple(suites),
        outcomes=[o for _, outcomes in done for o in outcomes],
        duration_s=round(time.monotonic() - started, 2),
        exit_code=max(proc.returncode for proc, _ in done),
        output="".join(proc.stdout + proc.stderr for proc, _ in done),
        workers=count,
    )
    broken = [proc for proc, _ in done if proc.returncode not in (0, 1)]
    if broken:  # 2+: the suites could not run at all
        raise OpsledgerError(
            Problem(
                f"verification could not run: {_why_not_run(broken[0])}",
                field=f"{environment}:{targets}",
                fix="check the inventory and that the hosts answer",
            ),
            1,
        )
    return result


def _why_not_run(proc: subprocess.CompletedProcess) -> str:
    """What stopped a pytest process before its tests ran, whole.

    pytest's closing summary cuts each line to the terminal's width (80 columns in a pipe),
    which left "OpsledgerError: /tmp/pytes…" as the only clue; its `E   ` lines hold the
    error itself.
    """
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return " | ".join(errors[-5:] or lines[-3:])
