"""One CLI grammar (README, Conventions): one output option, one time and one duration syntax.

Every command that prints JSON takes `--format json` and its alias `--json`, and both print the
same bytes; every option that takes a time or a duration reads it with the one parser.
"""

from __future__ import annotations

import json

import click
import pytest

from opsledger.cli import cli
from opsledger.cli.history import leaf_commands
from opsledger.cli.options import DurationType, TimeType

from .badinput import assert_refused, run, tree_state
from .conftest import START, build_repo

COMMANDS = dict(leaf_commands(cli))
AT = START.isoformat()
# Options whose value is a time or a length of time, by name: a new one joins the grammar.
TIME_OPTIONS = {"--at", "--since", "--until", "--start", "--detected-at"}
DURATION_OPTIONS = {"--duration", "--due", "--within", "--wait"}


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory):
    project, change_id, _ = build_repo(tmp_path_factory.mktemp("grammar"))
    return project, change_id


def _options(command: click.Command) -> dict[str, click.Option]:
    return {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_output_is_one_option_with_its_alias(name):
    options = _options(COMMANDS[name])
    if "--json" in options or "--format" in options:
        assert "--format" in options, f"{name}: --json without --format"
        formats = options["--format"].type.choices
        assert ("json" in formats) == ("--json" in options), f"{name}: --json is --format json"
        assert options["--format"].name == "fmt"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_time_and_duration_option_reads_the_one_syntax(name):
    for option, param in _options(COMMANDS[name]).items():
        if option in TIME_OPTIONS:
            assert isinstance(param.type, TimeType), f"{name} {option}"
        if option in DURATION_OPTIONS and not param.is_flag:
            assert isinstance(param.type, DurationType), f"{name} {option}"


def _same_with_json_and_format_json(project, args: list[str]) -> object:
    by_alias = run(project.root, [*args, "--json"])
    by_format = run(project.root, [*args, "--format", "json"])
    assert by_alias.exit_code == by_format.exit_code, (by_alias.output, by_format.output)
    assert by_alias.stdout == by_format.stdout
    return json.loads(by_alias.stdout)


def test_decide_prints_the_same_json_for_both_spellings(shared_repo):
    project, change_id = shared_repo
    decision = _same_with_json_and_format_json(project, ["decide", change_id, "--at", AT])
    assert decision["change"] == change_id  # the shape --json always had


@pytest.mark.parametrize(
    "args",
    [
        ["change", "show", "CHG-0001"],
        ["audit", "check"],
        ["calendar", "--at", AT, "--days", "7"],
        ["incident", "list"],
        ["runbook", "show", "service-restart"],
        ["runbook", "list"],
        ["problem", "list"],
        ["ci", "shards"],
        ["host", "list"],
        ["problem", "suggest"],
    ],
)
def test_json_and_format_json_print_the_same(shared_repo, args):
    project, _ = shared_repo
    _same_with_json_and_format_json(project, args)


def test_old_format_names_still_read(shared_repo):
    project, _ = shared_repo
    table = run(project.root, ["audit", "log", "--format", "table"])
    text = run(project.root, ["audit", "log"])
    assert table.exit_code == text.exit_code == 0, table.output
    assert table.stdout == text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decide", "CHG-0001", "--at", "2026-12-01T20:30"], "--at: '2026-12-01T20:30' has no"),
        (["audit", "log", "--since", "last week"], "--since: 'last week' is not a time"),
        (["calendar", "--at", "+2x"], "--at: '2x' is not a duration"),
        (["incident", "list", "--due", "1h1h"], "--due: '1h1h' is not a duration"),
        (["decide", "CHG-0001", "--json", "--format", "text"], "--json and --format text"),
    ],
)
def test_a_bad_time_or_duration_is_one_line_and_exit_2(shared_repo, args, message):
    project, _ = shared_repo
    before = tree_state(project.root)
    lines = assert_refused(run(project.root, args), expect=message)
    assert len(lines) == 1
    assert tree_state(project.root) == before


def test_relative_times_and_durations_are_accepted(shared_repo):
    project, change_id = shared_repo
    for args in (
        ["decide", change_id, "--at", "now", "--json"],
        ["decide", change_id, "--at", "-1h", "--json"],
        ["audit", "log", "--since", "-30d", "--until", "now", "--format", "json"],
        ["incident", "list", "--due", "PT4H", "--json"],
    ):
        result = run(project.root, args)
        assert result.exit_code in (0, 3), (args, result.output)  # 3: denied now, still judged
        json.loads(result.stdout)
