"""How Ansible runs against one environment: its forks and its strategy, from the inventory.

ansible.cfg holds what is the same everywhere; how many hosts a run works on at once and
whether it runs over Mitogen belong to the environment, so they are inventory settings read
by opsledger on the controller (like the lab's `lab_*` settings), in `group_vars/all`:

- `opsledger_forks`: hosts worked on at once. Unset: the run's host count, at most
  `DEFAULT_FORKS` — a fork is a controller process mostly waiting on SSH, and past ~10 per
  core (a 2-core controller) more only queue for the CPU.
- `opsledger_strategy`: `linear` (Ansible's own, the default) or `mitogen_linear` (opt-in:
  one Python interpreter per host for the whole play instead of a module upload per task;
  a third-party plugin, so an environment chooses it, and the lab does).

They reach ansible-playbook as ANSIBLE_FORKS / ANSIBLE_STRATEGY. A value already in this
process's environment wins: `ANSIBLE_STRATEGY=linear opsledger apply ...` turns Mitogen off
for one run. A setting must be one value for the whole environment: a host_vars override
would be read by nobody (one run has one strategy), so it is refused rather than ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.inventory import load_inventory

DEFAULT_FORKS = 20
MAX_FORKS = 500
STRATEGIES = ("linear", "mitogen_linear")


@dataclass(frozen=True)
class RunSettings:
    forks: int
    strategy: str

    def env(self) -> dict[str, str]:
        """ANSIBLE_* variables for ansible-playbook, except those this process already sets."""
        wanted = {"ANSIBLE_FORKS": str(self.forks), "ANSIBLE_STRATEGY": self.strategy}
        return {k: v for k, v in wanted.items() if k not in os.environ}


def run_settings(inventory: Path, limit: str = "all") -> RunSettings:
    """The forks and strategy a run of `limit` in this inventory's environment uses.

    Example:
        run_settings(Path("inventories/lab/hosts.yml"), "db")  # RunSettings(2, 'mitogen_linear')
    """
    inv = load_inventory(inventory)
    hosts = inv.match(limit) or list(inv.hosts.values())
    problems: list[Problem] = []

    def one_value(key: str) -> object:
        values = {repr(h.get(key)): h.get(key) for h in inv.hosts.values()}
        if len(values) > 1:
            problems.append(
                Problem(
                    f"hosts disagree on {key} ({', '.join(sorted(values))})",
                    str(inventory),
                    key,
                    "set it once for the environment, in group_vars/all",
                )
            )
        return next(iter(values.values()))

    forks = one_value("opsledger_forks")
    strategy = one_value("opsledger_strategy")
    if forks is not None and (
        isinstance(forks, bool) or not isinstance(forks, int) or not 1 <= forks <= MAX_FORKS
    ):
        problems.append(
            Problem(
                f"opsledger_forks is {shown(forks)}, not a whole number of hosts",
                str(inventory),
                "opsledger_forks",
                f"use 1 to {MAX_FORKS}, or leave it unset (the run's hosts, at most "
                f"{DEFAULT_FORKS})",
            )
        )
    if strategy is not None and strategy not in STRATEGIES:
        problems.append(
            Problem(
                f"opsledger_strategy is {shown(strategy)}",
                str(inventory),
                "opsledger_strategy",
                f"use one of: {', '.join(STRATEGIES)} (unset: linear)",
            )
        )
    if problems:
        raise OpsledgerError(problems)
    return RunSettings(
        forks=forks if isinstance(forks, int) else max(1, min(len(hosts), DEFAULT_FORKS)),
        strategy=str(strategy or "linear"),
    )
