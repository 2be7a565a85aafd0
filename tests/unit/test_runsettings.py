"""An environment's forks and strategy: read once for the environment, refused when wrong."""

from __future__ import annotations

import pytest

from opsledger.errors import OpsledgerError
from opsledger.runsettings import DEFAULT_FORKS, run_settings

from ..conftest import REPO_ROOT


def _inventory(tmp_path, text):
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    return path


def _many(count, extra=""):
    hosts = "".join(f"    h{n}: {{ansible_connection: local}}\n" for n in range(count))
    return f"all:\n  hosts:\n{hosts}{extra}"


def test_unset_forks_are_the_runs_hosts_at_most_the_default(tmp_path):
    inventory = _inventory(tmp_path, _many(DEFAULT_FORKS + 5))
    assert run_settings(inventory).forks == DEFAULT_FORKS
    assert run_settings(inventory, "h1:h2:h3").forks == 3
    assert run_settings(inventory).strategy == "linear"


def test_the_lab_opts_into_mitogen():
    settings = run_settings(REPO_ROOT / "inventories/lab/hosts.yml")
    assert settings.strategy == "mitogen_linear"
    for env in ("staging", "production"):
        assert run_settings(REPO_ROOT / f"inventories/{env}/hosts.yml").strategy == "linear"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("  vars: {opsledger_forks: 0}\n", "opsledger_forks"),
        ("  vars: {opsledger_forks: 'many'}\n", "opsledger_forks"),
        ("  vars: {opsledger_forks: true}\n", "opsledger_forks"),
        ("  vars: {opsledger_strategy: free_for_all}\n", "opsledger_strategy"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, extra, field):
    with pytest.raises(OpsledgerError) as caught:
        run_settings(_inventory(tmp_path, _many(2, extra)))
    assert [p.field for p in caught.value.problems] == [field]


def test_hosts_that_disagree_are_refused(tmp_path):
    """One run has one strategy: a host_vars value would be read by nobody."""
    text = (
        "all:\n  hosts:\n    h0: {ansible_connection: local, opsledger_strategy: linear}\n"
        "    h1: {ansible_connection: local}\n  vars: {opsledger_strategy: mitogen_linear}\n"
    )
    with pytest.raises(OpsledgerError) as caught:
        run_settings(_inventory(tmp_path, text))
    assert [p.field for p in caught.value.problems] == ["opsledger_strategy"]
    assert "group_vars/all" in caught.value.problems[0].fix
