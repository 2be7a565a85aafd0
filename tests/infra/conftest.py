"""Testinfra suites: verify hosts against the desired state their inventory gives them.

Run against any environment:
    pytest tests/infra --env lab --targets db             # the lab's db hosts over SSH
    pytest tests/infra --inventory path/to/inventory      # any inventory
Molecule's testinfra verifier sets MOLECULE_INVENTORY_FILE; hosts are then reached through
podman and the environment is called "molecule".

Each module declares SUITE (the role it verifies) and APPLIES_TO (a group, or "all"); a module
may declare PARAMS = {"argname": function(target) -> list} to parametrize one test per item of a
host's list (one resource per test, never a loop inside a test).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsledger.policy.waivers import active_waiver, load_waivers
from opsledger.testinfra_hosts import Target, resolve_targets

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser):
    group = parser.getgroup("opsledger")
    group.addoption(
        "--env",
        default=os.environ.get("OPSLEDGER_ENV"),
        help="inventory environment to verify (inventories/<env>); default lab",
    )
    group.addoption("--inventory", default=None, help="inventory path (overrides --env)")
    group.addoption(
        "--targets",
        default=os.environ.get("OPSLEDGER_TARGETS", "all"),
        help="Ansible host pattern to verify (default all)",
    )
    group.addoption(
        "--suites",
        default=os.environ.get("OPSLEDGER_SUITES", ""),
        help="comma-separated suites (roles) to run; default all",
    )


def _targets(config) -> list[Target]:
    cached = getattr(config, "_opsledger_targets", None)
    if cached is None:
        inventory = config.getoption("--inventory")
        env = config.getoption("--env")
        if inventory:
            path = Path(inventory)
        elif env:
            path = ROOT / "inventories" / env
        elif os.environ.get("MOLECULE_INVENTORY_FILE"):
            path, env = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent, "molecule"
        else:
            path, env = ROOT / "inventories" / "lab", "lab"
        cached = resolve_targets(
            path, pattern=config.getoption("--targets"), roles_dir=ROOT / "roles", environment=env
        )
        config._opsledger_targets = cached
    return cached


def _id(item) -> str:
    if isinstance(item, dict):
        return str(item.get("name") or item.get("path") or item.get("key") or item)
    if isinstance(item, tuple):
        return str(item[0])
    return str(item)


def pytest_collection_modifyitems(config, items):
    suites = {s for s in config.getoption("--suites").split(",") if s}
    if not suites:
        return
    keep = [i for i in items if getattr(i.module, "SUITE", None) in suites]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def pytest_generate_tests(metafunc):
    if "target" not in metafunc.fixturenames:
        return
    applies_to = getattr(metafunc.module, "APPLIES_TO", "all")
    targets = [
        t for t in _targets(metafunc.config) if applies_to == "all" or applies_to in t.groups
    ]
    params = getattr(metafunc.module, "PARAMS", {})
    extra = [name for name in metafunc.fixturenames if name in params]
    if not extra:
        metafunc.parametrize("target", targets, ids=[t.name for t in targets])
        return
    (name,) = extra
    rows = [(t, item) for t in targets for item in params[name](t)]
    if not rows:  # none of these hosts has one (a worker's share, a subset): nothing to check
        why = f"no {name} on {', '.join(t.name for t in targets) or 'these hosts'}"
        rows = [pytest.param(None, None, marks=pytest.mark.skip(reason=why))]
        metafunc.parametrize(("target", name), rows, ids=["none"])
        return
    metafunc.parametrize(("target", name), rows, ids=[f"{t.name}:{_id(item)}" for t, item in rows])


@pytest.fixture
def host(target):
    return target.host


@pytest.fixture
def expect(target):
    return target.expect


@pytest.fixture(scope="session")
def _waivers():
    return load_waivers(ROOT / "policies" / "waivers.yml")


@pytest.fixture
def skip_if_waived(target, _waivers):
    """Skip when an unexpired waiver covers this control here; say which one and why."""

    def check(control: str) -> None:
        waiver = active_waiver(_waivers, control, target.environment, target.name, target.groups)
        if waiver:
            pytest.skip(f"{control} waived by {waiver.id} until {waiver.expires}: {waiver.reason}")

    return check
