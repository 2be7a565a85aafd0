"""Ansible's linear strategy run over Mitogen (ansible.cfg: strategy = mitogen_linear).

Why: with plain SSH every task is a new remote Python process plus a module upload; Mitogen keeps
one interpreter per host for the whole play and ships each module once. A no-op converge of the
lab measured about 2.5x faster (benchmarks/apply.py lane c). The `mitogen` package comes from
PyPI (pinned in requirements.lock); this file only makes its strategy reachable from the
project's own plugin folder, so no path into the venv is written into ansible.cfg.

Set ANSIBLE_STRATEGY=linear to run the same play without Mitogen (Molecule does: its async
create and reset_connection steps do not work under Mitogen).
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    """The linear strategy, its connections and module runs handed to Mitogen."""
