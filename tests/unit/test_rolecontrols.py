"""`opsledger roles controls`: the compliance table built from the roles, their tests, waivers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

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


# --- the references themselves: numbers and titles the benchmark has -----------------------------

CIS_ITEMS = Path(__file__).parent / "data" / "cis_debian12_items.txt"
CIS_REF = re.compile(r"(?P<number>\d+(?:\.\d+)+) (?P<title>.+?)(?: \((?P<note>[^()]+)\))?")
DEVSEC_REF = re.compile(r"(os_hardening|ssh_hardening): [a-z][a-z0-9_]*(, [a-z][a-z0-9_]*)*")
LYNIS_REF = re.compile(r"[A-Z]{3,5}-\d{4} \S.*")


def _cis_items() -> dict[str, tuple[str, str]]:
    """number -> (Server profile L1/L2, title without "Ensure "), from the vendored list."""
    items = {}
    for line in CIS_ITEMS.read_text().splitlines():
        if line and not line.startswith("#"):
            number, profile, title = line.split("\t")
            assert profile in ("L1", "L2") and title.startswith("Ensure "), line
            items[number] = (profile, title.removeprefix("Ensure "))
    return items


def _references(benchmark: str) -> list[tuple[str, str]]:
    """(control, reference) for every reference to `benchmark`, read as the table reads them."""
    rows = _table(REPO_ROOT, benchmark).rows
    return [(row.control, ref) for row in rows for ref in row.references]


def test_every_cis_reference_is_a_benchmark_item_with_its_title_and_profile():
    """A CIS reference is "<number> <title>[ (note)]" as the benchmark has them (v1.1.0, from
    tests/unit/data/cis_debian12_items.txt), a Level 2 - Server item noted "(Level 2...)":
    the numbers written from memory (another version's, a section heading for an item) were
    the references an auditor would have found wrong."""
    items = _cis_items()
    wrong = []
    for where, ref in _references("cis"):
        match = CIS_REF.fullmatch(ref)
        if not match:
            wrong.append(f"{where}: {ref!r} is not '<number> <title>[ (note)]'")
            continue
        number, title, note = match["number"], match["title"], match["note"] or ""
        if number not in items:
            wrong.append(f"{where}: {ref!r}: no item {number} in {CIS_ITEMS.name}")
            continue
        profile, expected = items[number]
        if title != expected:
            wrong.append(f"{where}: {ref!r}: item {number} is {expected!r}")
        if (profile == "L2") != note.startswith("Level 2"):
            wrong.append(f"{where}: {ref!r}: item {number} is {profile} - Server, note {note!r}")
    assert not wrong, "\n".join(wrong)


def test_the_vendored_cis_items_are_those_referenced_and_name_the_version():
    """The list stays small and honest: only items some control references, and the version
    the controls files name is the one the list was taken for."""
    referenced = {ref.split(" ", 1)[0] for _, ref in _references("cis")}
    assert set(_cis_items()) == referenced
    header = CIS_ITEMS.read_text().splitlines()[0]
    (version,) = re.findall(r"v\d+\.\d+\.\d+", header)
    assert version in _table(REPO_ROOT).title


def test_devsec_references_name_role_variables_and_lynis_references_test_ids():
    """devsec: "<os_hardening|ssh_hardening>: <variable>, ..." only; prose or another tool's ids
    (Lynis's) belong elsewhere."""
    wrong = [f"{w}: {r!r}" for w, r in _references("devsec") if not DEVSEC_REF.fullmatch(r)]
    wrong += [f"{w}: {r!r}" for w, r in _references("lynis") if not LYNIS_REF.fullmatch(r)]
    assert not wrong, "\n".join(wrong)
