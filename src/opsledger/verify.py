"""Run the Testinfra suites (tests/infra) against an environment and report each test.

The same suites verify a Molecule instance, the lab, staging, production and a DR drill: this
is the one place that runs them for the CLI, the change workflow and drills, in a separate
pytest process (so a suite's imports and fixtures never leak into opsledger's own process),
and reads the outcome of every test from pytest's JUnit XML.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem
from opsledger.inventory import load_inventory
from opsledger.project import Project


@dataclass(frozen=True)
class TestOutcome:
    """One verification test on one host: passed, failed, error or skipped, and why."""

    __test__ = False  # not a pytest test class

    test: str
    host: str
    status: str
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

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failures(self) -> list[TestOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "error")]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures and self.count("passed") > 0


def _outcomes(junit: Path) -> list[TestOutcome]:
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        test, _, param = name.partition("[")
        host = param.rstrip("]").split(":", 1)[0]
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (element.get("message") or element.text or "").strip()
                break
        outcomes.append(TestOutcome(test, host, status, message.splitlines()[0] if message else ""))
    return outcomes


def verify(
    project: Project,
    *,
    environment: str = "lab",
    targets: str = "all",
    suites: tuple[str, ...] = (),
    timeout: float = 1800,
) -> VerifyResult:
    """Verify hosts against their desired state with the Testinfra suites.

    Example:
        result = verify(find_project(), environment="lab", targets="db", suites=("postgresql",))
        result.ok, result.count("passed"), result.failures
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
    load_inventory(inventory).match(targets)  # refuse a bad pattern here, not inside pytest
    with tempfile.TemporaryDirectory(prefix="opsledger-verify-") as tmp:
        junit = Path(tmp) / "junit.xml"
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
        started = time.monotonic()
        proc = subprocess.run(
            argv,
            cwd=project.root,
            env=project.ansible_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = VerifyResult(
            environment,
            targets,
            tuple(suites),
            duration_s=round(time.monotonic() - started, 2),
            exit_code=proc.returncode,
            output=proc.stdout + proc.stderr,
        )
        if junit.exists():
            result.outcomes = _outcomes(junit)
    if proc.returncode not in (0, 1):  # 2+: the suites could not run at all
        last = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise OpsledgerError(
            Problem(
                f"verification could not run: {' | '.join(last)}",
                field=f"{environment}:{targets}",
                fix="check the inventory and that the hosts answer",
            ),
            1,
        )
    return result
