#!/usr/bin/env python3
"""How long the CLI takes to start, next to Python starting and doing nothing.

Start-up is what every command pays before its own work, and what a pipeline pays once per
step. Measured side by side in this run, interleaved round by round so a busy machine slows
every lane alike:

- `python -c pass` (the floor: the interpreter and site-packages);
- `opsledger --help` (the root group: parsing, every command's one-line help);
- `opsledger change validate CHG-0001` in a scratch copy of this project (a real change of the
  lab: schema, runbook, inventory with its vault, targets resolved), cold and warm. Cold is a
  fresh clone: `.opsledger/cache/` removed before each run; the lab's inventory is plain
  enough to be read without Ansible (plainshape.py) and its shape is kept. "cold, Ansible
  reads" is the same with an `ANSIBLE_` setting (Ansible's own default inventory plugins), for
  which the plain reader steps aside: Ansible parses the inventory, as it does any inventory
  the plain reader is not sure of. Warm uses what the previous run kept (no Ansible import).

Before timing, each lane is run once in a probe that reports whether Ansible and jsonschema
were imported: cold and warm must import neither, "Ansible reads" must import Ansible,
otherwise the benchmark stops (it would be timing another path than it names).

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
import contextlib
import json
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


# Ansible's default list of inventory plugins: no other meaning than "an ANSIBLE_ setting".
ANSIBLE_READS = {"ANSIBLE_INVENTORY_ENABLED": "host_list,script,auto,yaml,ini,toml"}
# The console script's body, then which heavy packages the run imported (the probe).
PROBE = (
    "import sys\nfrom opsledger.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
    "import json\nheavy = {m.split('.')[0] for m in sys.modules} & {'ansible', 'jsonschema'}\n"
    "print(json.dumps(sorted(heavy)), file=sys.stderr)\n"
)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(extra or {})
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


def imported(argv: list[str], cwd: Path, extra: dict[str, str] | None = None) -> list[str]:
    """Which of ansible and jsonschema a run of `opsledger ARGV` (argv[3:]) imports."""
    probe = [sys.executable, "-c", PROBE, *argv[3:]]
    proc = subprocess.run(probe, cwd=cwd, env=_env(extra), capture_output=True, text=True)
    return json.loads(proc.stderr.strip().splitlines()[-1])


def timed(
    argv: list[str], cwd: Path, expect: str, extra: dict[str, str] | None = None
) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run, which must exit 0 printing `expect`.

    CPU time (user + system of the child) barely moves when other processes share the cores;
    wall-clock is what a person waits.
    """
    cpu = _cpu()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=_env(extra), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu
    if proc.returncode != 0 or expect not in proc.stdout:
        sys.exit(
            f"benchmark: {' '.join(argv[-3:])} exited {proc.returncode} without {expect!r}:\n"
            f"{proc.stdout[-1000:]}{proc.stderr[-2000:]}"
        )
    return elapsed, cpu


def _session_priority() -> None:
    """Give this run's session (its lanes included) the nice it was started with.

    With `kernel.sched_autogroup_enabled` (Debian's default) the scheduler shares the CPUs
    between sessions first and applies nice only inside each, so `nice -n -20` alone does not
    lift a benchmark above the other jobs of a busy machine (benchmarks/audit.py found it).
    Every lane runs in this session, so they stay like for like; without the right to lower a
    nice (not root), or without autogroups, nothing changes.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))


def main() -> None:
    _session_priority()
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
            "python -c pass": ([sys.executable, "-c", "pass"], "", None, None),
            "opsledger --help": (
                [*OPSLEDGER, "--help"], "change    Create and validate", None, None
            ),
            f"change validate {change_id} (cold)": (validate, valid, "cold", None),
            f"change validate {change_id} (cold, Ansible reads)": (
                validate, valid, "cold", ANSIBLE_READS
            ),
            f"change validate {change_id} (warm)": (validate, valid, "warm", None),
        }  # fmt: skip
        for name, (argv, expect, state, extra) in lanes.items():  # the path, then warm caches
            if state is not None:
                if state == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                else:
                    timed(argv, project, expect)
                heavy = imported(argv, project, extra)
                if heavy != (["ansible"] if extra else []):
                    sys.exit(f"benchmark: {name} imported {heavy}: not the path it names")
            timed(argv, project, expect, extra)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in lanes}
        names = list(lanes)
        for round_ in range(args.rounds):
            shift = round_ % len(names)  # rotate the order: no lane always runs first
            for name in names[shift:] + names[:shift]:
                argv, expect, state, extra = lanes[name]
                if state == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                elif state == "warm":
                    timed(argv, project, expect)  # another lane may have run it cold
                times[name].append(timed(argv, project, expect, extra))
                if state is not None and not (cache / "inventory.json").is_file():
                    sys.exit(f"benchmark: {name} kept no inventory shape (read no inventory?)")
    print(f"median of {args.rounds} interleaved runs each (ms); every run exited 0 as expected")
    print(f"{'lane':<54} {'wall':>7} {'over py':>8} {'ratio':>6} {'cpu':>7} {'over py':>8}")
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs) * 1000
        cpu = statistics.median(c for _, c in runs) * 1000
        medians[name] = (wall, cpu)
    floor_wall, floor_cpu = medians["python -c pass"]
    for name, (wall, cpu) in medians.items():
        print(
            f"{name:<54} {wall:7.1f} {wall - floor_wall:8.1f} {wall / floor_wall:6.2f}"
            f" {cpu:7.1f} {cpu - floor_cpu:8.1f}"
        )
    help_over = medians["opsledger --help"][0] - floor_wall
    cold = medians[f"change validate {change_id} (cold)"][0]
    warm = medians[f"change validate {change_id} (warm)"][0]
    print(
        f"--help over python (wall): {help_over:.0f} ms (target <= {TARGET_HELP_MS:.0f}): "
        f"{'met' if help_over <= TARGET_HELP_MS else 'NOT met'}"
    )
    read = medians[f"change validate {change_id} (cold, Ansible reads)"][0]
    for label, ms in (("cold", cold), ("warm", warm)):
        print(
            f"change validate {label} (wall): {ms:.0f} ms (target <= {TARGET_VALIDATE_MS:.0f}): "
            f"{'met' if ms <= TARGET_VALIDATE_MS else 'NOT met'}"
        )
    print(
        f"cold / warm {cold / warm:.2f}x; cold with Ansible reading the inventory {read:.0f} ms, "
        f"{read / cold:.2f}x the plain cold read"
    )


if __name__ == "__main__":
    main()
