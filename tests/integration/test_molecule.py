"""Every Molecule scenario, full sequence: create, converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO_ROOT

SCENARIOS = sorted(p.parent.name for p in (REPO_ROOT / "molecule").glob("*/molecule.yml"))
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.molecule, pytest.mark.lab]


@pytest.fixture(scope="session")
def base_image(repo_project):
    """The lab's image under its stable `latest` name, which every scenario uses."""
    if os.geteuid() != 0:
        pytest.fail("Molecule scenarios need root (rootful podman)")
    from opsledger.lab.service import lab_image

    return lab_image(repo_project).ref


def test_every_role_has_a_scenario():
    roles = {p.parent.parent.name for p in (REPO_ROOT / "roles").glob("*/tasks/main.yml")}
    # site.yml over the lab topology is tests/integration/test_site.py, on the lab itself
    assert roles <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes(base_image, scenario):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
        "NO_COLOR": "1",
    }
    env.pop("ANSIBLE_CONFIG", None)  # Molecule writes its own
    try:
        proc = subprocess.run(
            [str(BIN / "molecule"), "test", "-s", scenario],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    finally:
        left = _remove_volumes(scenario)
    assert left == [], f"volumes of {scenario} could not be removed: {left}"
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "idempotence" in output.lower()
    assert " passed" in output


def _remove_volumes(scenario: str) -> list[str]:
    """Named volumes outlive Molecule's destroy: remove the ones the scenario declares;
    return any that are still there."""
    config = yaml.safe_load((REPO_ROOT / "molecule" / scenario / "molecule.yml").read_text())
    names = {v.split(":", 1)[0] for p in config.get("platforms", []) for v in p.get("volumes", [])}
    for name in sorted(names):
        subprocess.run(["podman", "volume", "rm", "--force", name], capture_output=True)
    existing = subprocess.run(
        ["podman", "volume", "ls", "--format", "{{.Name}}"], capture_output=True, text=True
    ).stdout.split()
    return sorted(names & set(existing))
