"""`opsledger roles controls`: the compliance table built from the roles, their tests, waivers."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.errors import OpsledgerError
from opsledger.rolecontrols import control_table, render_markdown

from ..conftest import REPO_ROOT


def _table(root, benchmark="cis"):
    return control_table(
        roles_dir=root / "roles",
        tests_dir=root / "tests" / "infra",
        waivers_path=root / "policies" / "waivers.yml",
        benchmark=benchmark,
    )


def test_the_shipped_table_joins_reference_task_test_and_waiver():
    rows = {r.control: r for r in _table(REPO_ROOT).rows}
    ssh = rows["OS-SSH-05"]
    assert "5.1.17 sshd MaxSessions is configured" in ssh.references
    assert ssh.tasks == ("Write sshd_config, validated with sshd -t",)
    assert ssh.tests == ("test_sshd_session_limits_os_ssh_05",)
    assert ssh.waivers == ()
    modules = rows["OS-KRN-03"]
    assert [w.split(" ", 1)[0] for w in modules.waivers] == ["W-0004"]
    assert "(lab, molecule)" in modules.waivers[0]
    # every control of every role is a row, mapped or not
    assert {"OS-ACC-01", "OS-PAM-02", "OS-AIDE-02", "MON-SBX-01", "NET-FW-01"} <= set(rows)
    assert rows["NET-FW-01"].references == ()


def test_devsec_is_a_benchmark_of_its_own():
    rows = {r.control: r for r in _table(REPO_ROOT, "devsec").rows}
    assert rows["OS-KRN-02"].references == ("os_hardening: os_unused_filesystems",)


def test_lynis_test_ids_are_a_benchmark_of_their_own():
    """Lynis ids are CISOfy's, not dev-sec's: their own column, not in devsec's."""
    lynis = {r.control: r for r in _table(REPO_ROOT, "lynis").rows}
    assert lynis["MON-SBX-01"].references == ("BOOT-5264 Run systemd-analyze security",)
    devsec = {r.control: r for r in _table(REPO_ROOT, "devsec").rows}
    assert devsec["MON-SBX-01"].references == ()
    assert not any("Lynis" in ref for row in devsec.values() for ref in row.references)


def _copy_project(tmp_path):
    for part in ("roles", "tests/infra", "policies"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part)
    shutil.copy(REPO_ROOT / "ansible.cfg", tmp_path / "ansible.cfg")
    (tmp_path / "inventories").mkdir()
    return tmp_path


def test_a_reference_to_a_control_no_task_implements_is_named(tmp_path):
    root = _copy_project(tmp_path)
    path = root / "roles" / "monitoring" / "meta" / "controls.yml"
    path.write_text(path.read_text() + "  MON-GONE-01:\n    cis: ['1.1']\n  nonsense: {}\n")
    with pytest.raises(OpsledgerError) as caught:
        _table(root)
    fields = {(p.field, p.message) for p in caught.value.problems}
    assert ("controls.MON-GONE-01", "no task of the role implements this control") in fields
    assert ("controls.nonsense", "not a control id") in fields


def test_cli_unknown_benchmark_exits_2_naming_the_choices(monkeypatch):
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(REPO_ROOT))
    result = CliRunner().invoke(cli, ["roles", "controls", "--benchmark", "nist"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {REPO_ROOT}/roles/*/meta/controls.yml: benchmarks: unknown benchmark 'nist' "
        "— use one of: cis, devsec, lynis"
    ]


def test_cli_bad_reference_list_exits_2_one_line_per_problem(tmp_path, monkeypatch):
    root = _copy_project(tmp_path)
    path = root / "roles" / "monitoring" / "meta" / "controls.yml"
    path.write_text(path.read_text().replace('lynis: ["BOOT', 'lynis: {"x": ["BOOT') + "\n")
    path.write_text(path.read_text().replace('security"]', 'security"]}'))
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(root))
    result = CliRunner().invoke(cli, ["roles", "controls", "--benchmark", "lynis"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "controls.MON-SBX-01.lynis" in lines[0], lines
    assert "Traceback" not in result.output


def test_cli_markdown_and_json(monkeypatch):
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(REPO_ROOT))
    md = CliRunner().invoke(
        cli, ["roles", "controls", "--benchmark", "cis", "--format", "markdown"]
    )
    assert md.exit_code == 0, md.output
    assert md.output.startswith("Benchmark: CIS Debian Linux 12 Benchmark")
    assert "| OS-ACC-03 | 5.4.2.7 system accounts do not have a valid login shell" in md.output
    data = json.loads(
        CliRunner()
        .invoke(cli, ["roles", "controls", "--benchmark", "cis", "--format", "json"])
        .output
    )
    assert data["benchmark"] == "cis"
    assert any(r["control"] == "OS-AIDE-01" and r["tests"] for r in data["rows"])
    assert render_markdown(_table(REPO_ROOT)) == md.output
