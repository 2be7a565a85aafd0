"""The CLI contract: every command documented with an example; errors are lines, not tracebacks."""

import click
import pytest
from click.testing import CliRunner

from opsledger.cli import cli


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


COMMANDS = [pytest.param(path, id=" ".join(path)) for path, _ in all_commands(cli)]


def test_top_level_help_lists_every_command_with_a_description():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name, command in cli.commands.items():
        assert name in result.output
        assert command.get_short_help_str().strip(), name


@pytest.mark.parametrize("path", COMMANDS)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`opsledger {' '.join(path)}` help has no Example"
    example = result.output.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.strip().startswith("opsledger ")


def test_invalid_inventory_exits_2_with_one_line_per_problem(make_project, monkeypatch):
    hosts = "all:\n  hosts:\n    h1: {ansible_port: 22}\n    h2: {}\n"
    project = make_project(hosts)
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["lab", "status"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") and "hosts.yml: " in line for line in lines)
    assert "h1.ansible_port" in lines[0] and "h2.ansible_port" in lines[1]


def test_outside_a_project_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSLEDGER_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["lab", "status"])
    assert result.exit_code == 2
    assert "no opsledger project" in result.stderr


def test_unknown_lab_host_for_ssh(make_project, monkeypatch):
    project = make_project("all:\n  hosts:\n    h1: {ansible_port: 2401}\n")
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["lab", "ssh", "nope"])
    assert result.exit_code == 2
    assert "no lab host named 'nope'" in result.stderr
