#!/usr/bin/env python3
"""What apply costs next to Ansible itself, and what the repo's Ansible settings buy.

Measured side by side in one run on the lab (it must be up and converged: `scripts/demo`):

(a) `opsledger apply` of an idempotent converge with verification skipped, against raw
    `ansible-playbook` of the same playbook, targets and tags, both as opsledger runs the lab
    (its `opsledger_strategy: mitogen_linear` and forks, runsettings.py). Deciding, locking and
    recording (a git commit) should be nearly free next to the run: target ratio <= 1.05.
    Verification is timed on its own.
(b) the same raw converge with the repo's tuned ansible.cfg and Ansible's own `linear`
    strategy (what an environment that does not opt into Mitogen runs) against Ansible's stock
    settings (only what correctness needs is kept: inventory, vault id, force_handlers).
    Target >= 2x.
(c) the tuned ansible.cfg with the lab's opt-in Mitogen (the raw lane of (a)) against the same
    stock settings. Target >= 2.5x. Each raw run proves which strategy it ran: ansible-core
    warns about a third-party strategy plugin under Mitogen and only there.

Lanes alternate within each round and every timed run starts without SSH control masters
(as a fresh CI runner would), so drift in the machine's load hits both lanes alike. Each lane
keeps its masters in its own ControlPath folder and closes only those (`ssh -O exit`): the
user's other SSH sessions and the lab's own masters are never touched.

On a machine shared with other work, `--priority -20` (root) renices this run and every
process of the lab's containers, so the lanes compete only with each other, as on the idle
machine the targets assume.

Usage: .venv/bin/python benchmarks/apply.py [--rounds 3] [--targets all] [--tags postgresql]
                                             [--keep-output DIR] [--priority NICE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opsledger.gitrepo import commit_paths, git  # noqa: E402
from opsledger.lab.service import lab_status  # noqa: E402
from opsledger.lab.spec import LABEL  # noqa: E402
from opsledger.project import Project  # noqa: E402
from opsledger.runsettings import run_settings  # noqa: E402
from opsledger.signoff import approve_change, request_change  # noqa: E402

BIN = Path(sys.executable).parent
STOCK_CFG = """[defaults]
# Ansible's stock settings; only what this repository needs to be correct is set.
inventory = inventories/lab/hosts.yml
vault_identity_list = lab@vault-passwords/lab
force_handlers = true
"""


def close_masters(control_dir: Path) -> None:
    """End the SSH control masters of one lane, and only those.

    Each lane keeps its masters in its own folder (ANSIBLE_SSH_CONTROL_PATH_DIR), so closing
    them is `ssh -O exit` on that folder's sockets: never a kill by process name, which would
    also end a user's unrelated SSH sessions.
    """
    for socket_path in sorted(control_dir.glob("*")):
        if socket_path.is_socket():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "lane-master"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
    deadline = time.monotonic() + 5
    while any(p.is_socket() for p in control_dir.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)


def lab_roots() -> set[int]:
    """The init process of each of the lab's containers (podman's view)."""
    listing = subprocess.run(
        ["podman", "ps", "--format", "{{.Pid}}", "--filter", f"label={LABEL}.lab=1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(pid) for pid in listing.stdout.split() if pid.isdigit() and pid != "0"}


def lab_processes() -> list[int]:
    """Every process of the lab's containers: their init and all it started, by /proc."""
    roots = lab_roots()
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while listed
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def raise_priority(niceness: int) -> int:
    """Run this benchmark and the lab's hosts at `niceness`, ahead of other work.

    Other work on the machine then does not take their CPU: an approximation of the idle
    machine issue 16's targets assume. Both sides of every lane get the same priority (the
    controller's children inherit this process's; the hosts' new processes inherit their
    sshd's and init's), so the lanes still compete only with each other.
    Returns how many lab processes were reniced.
    """
    os.setpriority(os.PRIO_PROCESS, 0, niceness)
    _autogroup("self", niceness)
    pids = lab_processes()
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
        except (ProcessLookupError, PermissionError):
            continue
        _autogroup(str(pid), niceness)
    return len(pids)


def _autogroup(pid: str, niceness: int) -> None:
    """Give the process's session `niceness` too.

    With `kernel.sched_autogroup_enabled` (Debian's default) the scheduler shares the CPUs
    between sessions first and applies nice only inside each, so a nice alone does not lift a
    process above other sessions' work.
    """
    with contextlib.suppress(OSError):  # no autogroups, or the process ended
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


def lane_env(env: dict[str, str], control_dir: Path) -> dict[str, str]:
    """A lane's environment: its own ControlPath folder, so its masters are its own."""
    control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {**env, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir)}


def scratch_repo(tmp: Path, targets: str, tags: list[str]) -> tuple[Project, str]:
    """A clone of this repository with one approved converge change, reaching the lab."""
    root = tmp / "repo"
    git(ROOT, "clone", "-q", str(ROOT), str(root))
    # The clone's branch is its protected branch, whatever this checkout's is called (a
    # feature branch's clone would otherwise find no `main` to decide against).
    git(root, "checkout", "-q", "-B", "main")
    (root / ".opsledger").mkdir()
    (root / ".opsledger" / "lab").symlink_to(ROOT / ".opsledger" / "lab")
    project = Project(root)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    change, _ = request_change(
        project,
        title="Benchmark: idempotent converge",
        runbook="converge",
        requested_by="alice",
        reason="Measure what apply adds to a run",
        targets=targets,
        params={"tags": tags} if tags else {},
        window_start=now - dt.timedelta(minutes=5),
        window_end=now + dt.timedelta(hours=12),
    )
    commit_paths(  # the change and alice's request statement
        root,
        [change.file.parent],
        "Benchmark change",
        name="Alice Arnold",
        email="alice@example.org",
    )
    approve_change(project, change.id, person="bob")
    return project, change.id


# ansible-core's warning when a play runs a strategy plugin from outside ansible.builtin.
THIRD_PARTY_STRATEGY = "Use of strategy plugins not included in ansible.builtin"


class Run(NamedTuple):
    """One timed run: wall seconds, the controller's CPU seconds and the lab hosts' CPU seconds.

    On a machine shared with other work the wall clock swings with the load (the same lane
    60 s to 144 s in one hour); CPU seconds do not, and say where a lane's work is done: on
    the controller (Ansible's workers, ssh) or on the hosts (each module run).
    """

    wall: float
    controller: float
    hosts: float


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children and theirs (ansible-playbook's workers)."""
    times = os.times()
    return times.children_user + times.children_system


def lab_cpu() -> float:
    """CPU seconds the lab's containers have used so far: the sum over their cgroups.

    cgroup v1 (`cpuacct.usage`, nanoseconds) or v2 (`cpu.stat` usage_usec), found from each
    container's init process. A benchmark that cannot read it stops: a CPU figure of 0 would
    be a wrong figure, not a missing one.
    """
    total = 0.0
    for pid in lab_roots():
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        v1 = [
            line.split(":", 2)[2]
            for line in lines
            if line.split(":")[1] in ("cpuacct", "cpu,cpuacct")
        ]
        if v1:
            folder = v1[0].removesuffix("/init.scope")
            usage = Path("/sys/fs/cgroup/cpuacct", folder.lstrip("/"), "cpuacct.usage")
            total += int(usage.read_text()) / 1e9
            continue
        v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        if not v2:
            sys.exit(f"benchmark: no CPU accounting for lab process {pid}")
        stat = Path("/sys/fs/cgroup", v2[0].lstrip("/"), "cpu.stat").read_text()
        usec = dict(line.split() for line in stat.splitlines())["usage_usec"]
        total += int(usec) / 1e6
    return total


def timed(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    mitogen: bool | None = None,
    keep: Path | None = None,
) -> Run:
    """One successful run's cost; `mitogen` (when given) must match the strategy it ran.

    `keep` receives the run's output (the tuned lanes' end with profile_tasks' slowest tasks).
    """
    close_masters(Path(env["ANSIBLE_SSH_CONTROL_PATH_DIR"]))
    cpu, hosts = children_cpu(), lab_cpu()
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    run = Run(elapsed, children_cpu() - cpu, lab_cpu() - hosts)
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(
            f"benchmark: {' '.join(argv[:3])} failed ({proc.returncode}):\n"
            + proc.stdout[-2000:]
            + proc.stderr[-2000:]
        )
    if mitogen is not None and (THIRD_PARTY_STRATEGY in proc.stdout + proc.stderr) != mitogen:
        sys.exit(f"benchmark: expected mitogen={mitogen} but the run says otherwise")
    if run.hosts <= 0:
        sys.exit("benchmark: the lab's hosts used no CPU: the run reached no host it names")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--targets", default="all")
    parser.add_argument("--tags", default="", help="comma-separated role tags (default: all roles)")
    parser.add_argument("--skip-stock", action="store_true", help="skip (b) and (c)")
    parser.add_argument("--keep-output", type=Path, help="keep each lane's last output here")
    parser.add_argument(
        "--priority",
        type=int,
        metavar="NICE",
        help="renice this run and every lab process to NICE (root; e.g. -20 on a shared machine)",
    )
    args = parser.parse_args()
    if not lab_status(Project(ROOT)).healthy:
        sys.exit("benchmark: the lab is not up and healthy — run scripts/demo first")
    if args.priority is not None:
        count = raise_priority(args.priority)
        if count == 0:
            sys.exit("benchmark: --priority found no lab process to renice")
        print(f"priority {args.priority}: this run and {count} lab processes", flush=True)
    tags = [t for t in args.tags.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="opsledger-bench-") as tmp:
        project, change_id = scratch_repo(Path(tmp), args.targets, tags)
        lanes_dir = Path(tmp) / "control"
        base = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("ANSIBLE_STRATEGY", "ANSIBLE_FORKS")
            },
            "ANSIBLE_CONFIG": str(project.ansible_cfg),
            "OPSLEDGER_PROJECT": str(project.root),
            # `opsledger` runs the clone's code, whatever checkout the venv was installed from.
            "PYTHONPATH": str(project.root / "src"),
        }
        # The lab's own settings (Mitogen opted in), as apply reads them for itself.
        lab = run_settings(project.inventory_file("lab"), args.targets)
        if lab.strategy != "mitogen_linear":
            sys.exit("benchmark: the lab no longer opts into Mitogen; (a) and (c) assume it")
        env = lane_env({**base, **lab.env()}, lanes_dir / "tuned")
        apply_env = lane_env(base, lanes_dir / "apply")
        stock_cfg = Path(tmp) / "stock.cfg"
        stock_cfg.write_text(
            STOCK_CFG.replace("inventories/", f"{project.root}/inventories/").replace(
                "vault-passwords/", f"{project.root}/vault-passwords/"
            )
        )
        stock_env = lane_env({**base, "ANSIBLE_CONFIG": str(stock_cfg)}, lanes_dir / "stock")
        linear_env = lane_env(
            {**base, "ANSIBLE_FORKS": str(lab.forks), "ANSIBLE_STRATEGY": "linear"},
            lanes_dir / "linear",
        )
        playbook = [
            str(BIN / "ansible-playbook"),
            "runbooks/converge/playbook.yml",
            "-i",
            "inventories/lab/hosts.yml",
            "--limit",
            args.targets,
            "--diff",
            "-e",
            json.dumps({"opsledger_params": {"tags": tags} if tags else {}}),
        ] + (["--tags", ",".join(tags)] if tags else [])
        apply = [str(BIN / "opsledger"), "apply", change_id, "--again", "--skip-verify", "--json"]

        print(
            f"warm-up: converging {args.targets} once (the lab must be idempotent)...", flush=True
        )
        timed(playbook, project.root, env, True)
        first = [str(BIN / "opsledger"), "apply", change_id, "--skip-verify", "--json"]
        timed(first, project.root, apply_env)

        keep = args.keep_output.resolve() if args.keep_output else None
        # (name, argv, env, mitogen expected): the raw Mitogen lane serves (a) and (c).
        runs = [
            ("ansible-playbook", playbook, env, True),
            ("opsledger apply", apply, apply_env, None),
        ]
        if not args.skip_stock:
            runs += [
                ("tuned, linear", playbook, linear_env, False),
                ("stock settings", playbook, stock_env, False),
            ]
        times: dict[str, list[Run]] = {name: [] for name, *_ in runs}
        for n in range(args.rounds):
            for name, argv, lane, mitogen in runs if n % 2 == 0 else runs[::-1]:
                out = keep / f"{name.replace(' ', '-').replace(',', '')}.log" if keep else None
                times[name].append(timed(argv, project.root, lane, mitogen, out))
            print(f"round {n + 1}/{args.rounds} done", flush=True)
        verify_s = timed(
            [str(BIN / "opsledger"), "verify", "--env", "lab", "--targets", args.targets],
            project.root,
            env,
        )
        for lane in lanes_dir.iterdir():
            close_masters(lane)
        shutil.rmtree(project.root / ".opsledger", ignore_errors=True)

    print()
    med, cpu = print_lanes(f"lanes, {args.targets} {tags or 'all roles'}", times, args.rounds)
    print(f"verification on its own: {verify_s.wall:.1f} s")
    ratios = [
        (
            "(a) apply / ansible-playbook (both Mitogen)",
            "opsledger apply",
            "ansible-playbook",
            "<= 1.05",
        )
    ]
    if not args.skip_stock:
        ratios += [
            ("(b) stock / tuned linear", "stock settings", "tuned, linear", ">= 2x"),
            ("(c) stock / tuned Mitogen", "stock settings", "ansible-playbook", ">= 2.5x"),
            (
                "    Mitogen alone: tuned linear / tuned Mitogen",
                "tuned, linear",
                "ansible-playbook",
                "",
            ),
        ]
    for label, top, bottom, target in ratios:
        aim = f"  (target {target})" if target else ""
        print(
            f"{label} = {med[top] / med[bottom]:.2f}x wall, {cpu[top] / cpu[bottom]:.2f}x CPU{aim}"
        )


def print_lanes(
    title: str, lanes: dict[str, list[Run]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Print each lane's medians (wall, controller CPU, hosts' CPU) and runs under a title.

    Returns the median wall seconds and the median total CPU seconds (controller + hosts) of
    each lane: the CPU ratio is what the lanes cost, whatever else shared the machine.
    """
    walls = {name: statistics.median(r.wall for r in runs) for name, runs in lanes.items()}
    cpus = {
        name: statistics.median(r.controller + r.hosts for r in runs)
        for name, runs in lanes.items()
    }
    print(f"{title}, median of {rounds} (wall; CPU on the controller + on the hosts):")
    for name, runs in lanes.items():
        walled = ", ".join(f"{r.wall:.1f}" for r in runs)
        controller = statistics.median(r.controller for r in runs)
        hosts = statistics.median(r.hosts for r in runs)
        print(
            f"    {name:20} {walls[name]:7.1f} s   runs: {walled}   "
            f"CPU {controller:.1f} + {hosts:.1f} s"
        )
    return walls, cpus


if __name__ == "__main__":
    main()
