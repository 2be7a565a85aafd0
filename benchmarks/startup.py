#!/usr/bin/env python3
"""How long the CLI takes to start, next to Python starting and doing nothing.

Start-up is what every command pays before its own work, and what a pipeline pays once per
step. Measured side by side in this run, interleaved round by round so a busy machine slows
every lane alike:

- `python -c pass` (the floor: the interpreter and site-packages);
- `opsledger --help` (the root group: parsing, every command's one-line help);
- `opsledger change validate CHG-0001` in a scratch copy of this project (a real change of the
  lab: schema, runbook, inventory with its vault, targets resolved), cold and warm: cold with
  `.opsledger/cache/` removed before each run (Ansible parses the inventory and the result is
  kept), warm with what the previous run kept (the inventory's shape: no Ansible import).

Runs have Python's bytecode cache on (PYTHONDONTWRITEBYTECODE is dropped from the children's
environment), as an installed opsledger has: with it off every module is compiled from
source on every run, which measures the compiler.

Each lane runs the source tree next to this script (`src/`), with the same body as the console
script. Every run must exit 0 and print what that command prints on success; otherwise the
benchmark stops: a start-up figure of an error path would measure nothing.

Usage: .venv/bin/python benchmarks/startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "policies",
    "runbooks",
    "roles",
    "tests/infra",
    "inventories",
    "vault-passwords",
    "ansible.cfg",
    "plugins",
    "site.yml",
)
# The console script's own body (pyproject.toml: opsledger = "opsledger.cli:main").
OPSLEDGER = [sys.executable, "-c", "import sys; from opsledger.cli import main; sys.exit(main())"]
TARGET_HELP_MS = 60.0  # over `python -c pass`
TARGET_VALIDATE_MS = 250.0  # absolute


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src")
    env.pop("OPSLEDGER_PROJECT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _git(repo: Path, *args: str) -> None:
    who = {
        "GIT_AUTHOR_NAME": "Alice Arnold",
        "GIT_AUTHOR_EMAIL": "alice@example.org",
        "GIT_COMMITTER_NAME": "Alice Arnold",
        "GIT_COMMITTER_EMAIL": "alice@example.org",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env={**os.environ, **who})


def scratch_project(root: Path) -> str:
    """A git repository of this project with one change requested through the CLI; its id."""
    for part in PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / part)
    (root / "changes").mkdir()
    (root / "changes" / "README.md").write_text("Change requests.\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "Initial state")
    new = subprocess.run(
        [
            *OPSLEDGER,
            "change",
            "new",
            "--title",
            "Raise work_mem on db",
            "--runbook",
            "converge",
            "--targets",
            "db",
            "--param",
            "tags=[postgresql]",
            "--requested-by",
            "alice",
            "--reason",
            "Start-up benchmark: a real change of the lab",
        ],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if new.returncode != 0 or not new.stdout.startswith("CHG-0001: wrote"):
        sys.exit(f"benchmark: `change new` failed:\n{new.stdout}{new.stderr}")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "Request CHG-0001")
    return "CHG-0001"


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str], cwd: Path, expect: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run, which must exit 0 printing `expect`.

    CPU time (user + system of the child) barely moves when other processes share the cores;
    wall-clock is what a person waits.
    """
    cpu = _cpu()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu
    if proc.returncode != 0 or expect not in proc.stdout:
        sys.exit(
            f"benchmark: {' '.join(argv[-3:])} exited {proc.returncode} without {expect!r}:\n"
            f"{proc.stdout[-1000:]}{proc.stderr[-2000:]}"
        )
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsledger-startup-bench-") as tmp:
        project = Path(tmp) / "p"
        project.mkdir()
        change_id = scratch_project(project)
        validate = [*OPSLEDGER, "change", "validate", change_id]
        valid = f"{change_id}: valid (converge on 2 host(s) of lab)"
        cache = project / ".opsledger" / "cache"
        lanes = {
            "python -c pass": ([sys.executable, "-c", "pass"], "", None),
            "opsledger --help": ([*OPSLEDGER, "--help"], "change    Create and validate", None),
            f"change validate {change_id} (cold)": (validate, valid, "cold"),
            f"change validate {change_id} (warm)": (validate, valid, "warm"),
        }
        for argv, expect, _ in lanes.values():  # warm the page cache and __pycache__ first
            timed(argv, project, expect)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in lanes}
        names = list(lanes)
        for round_ in range(args.rounds):
            shift = round_ % len(names)  # rotate the order: no lane always runs first
            for name in names[shift:] + names[:shift]:
                argv, expect, state = lanes[name]
                if state == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                elif state == "warm":
                    timed(argv, project, expect)  # another lane may have run it cold
                    if not (cache / "inventory.json").is_file():
                        sys.exit("benchmark: change validate kept no inventory shape")
                times[name].append(timed(argv, project, expect))
    print(f"median of {args.rounds} interleaved runs each (ms); every run exited 0 as expected")
    print(f"{'lane':<40} {'wall':>7} {'over py':>8} {'ratio':>6} {'cpu':>7} {'over py':>8}")
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs) * 1000
        cpu = statistics.median(c for _, c in runs) * 1000
        medians[name] = (wall, cpu)
    floor_wall, floor_cpu = medians["python -c pass"]
    for name, (wall, cpu) in medians.items():
        print(
            f"{name:<40} {wall:7.1f} {wall - floor_wall:8.1f} {wall / floor_wall:6.2f}"
            f" {cpu:7.1f} {cpu - floor_cpu:8.1f}"
        )
    help_over = medians["opsledger --help"][0] - floor_wall
    cold = medians[f"change validate {change_id} (cold)"][0]
    warm = medians[f"change validate {change_id} (warm)"][0]
    print(
        f"--help over python (wall): {help_over:.0f} ms (target <= {TARGET_HELP_MS:.0f}): "
        f"{'met' if help_over <= TARGET_HELP_MS else 'NOT met'}"
    )
    print(
        f"change validate (wall): warm {warm:.0f} ms (target <= {TARGET_VALIDATE_MS:.0f}): "
        f"{'met' if warm <= TARGET_VALIDATE_MS else 'NOT met'}; cold {cold:.0f} ms, "
        f"cold / warm {cold / warm:.2f}x"
    )


if __name__ == "__main__":
    main()
