"""The CLI contract: every command documented with an example; errors are lines, not tracebacks."""

import importlib
import json
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import opsledger.cli
from opsledger.cli import COMMANDS as ROOT_TABLE
from opsledger.cli import _Group, cli

from ..conftest import REPO_ROOT


def all_commands(group: click.Group, prefix=()):
    """Every command and group under `group`, loaded (the root group loads on first use)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


COMMANDS = [pytest.param(path, id=" ".join(path)) for path, _ in all_commands(cli)]


def test_top_level_help_lists_every_command_with_a_description():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for (name, *rest), command in all_commands(cli):
        if rest:
            continue
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


def _example_commands(help_text: str) -> list[str]:
    """The `opsledger ...` commands of a help page's Example block, continuation lines joined."""
    block = help_text.split("Example:", 1)[1]
    lines, joined = [], ""
    for line in block.splitlines():
        if not line.strip():
            if lines or joined:
                break
            continue
        if not line.startswith("      "):  # the example block ends where its indent does
            break
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip() + " "
            continue
        lines.append(joined)
        joined = ""
    return lines


def _shell_commands(line: str) -> list[list[str]]:
    """The commands of one shell line (split at ; && |), each cut at a redirection."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for token in [*lexer, ";"]:
        if token in (";", "&&", "|", "||"):
            if words:
                commands.append(words)
            words = []
        elif words and words[-1] in (">", ">>", "2>"):
            continue
        else:
            words.append(token)
    return [[w for w in c if w not in (">", ">>", "2>")] for c in commands]


def _parse(args: list[str]) -> None:
    """Parse args as the CLI would (options, arguments, required ones) without running anything."""
    command: click.Command = cli
    ctx = None
    while True:
        if isinstance(command, click.Group):
            name, rest = args[0], args[1:]
            sub = command.get_command(click.Context(command), name)
            assert sub is not None, f"no command {name!r}"
            command, args = sub, rest
            continue
        ctx = command.make_context(command.name or "", list(args), parent=ctx)
        return


@pytest.mark.parametrize("path", COMMANDS)
def test_every_example_is_a_command_the_cli_accepts(path, monkeypatch):
    """A person copies the example first: it must parse as typed (options that exist, every
    required one given, one command per line) — no variable from the environment helps."""
    monkeypatch.delenv("OPSLEDGER_PERSON", raising=False)
    help_text = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200).output
    examples = _example_commands(help_text)
    assert examples, help_text
    for example in examples:
        for words in _shell_commands(example):
            if words[0] != "opsledger":
                continue
            try:
                _parse(words[1:])
            except click.ClickException as exc:
                where = f"`{example}` in `opsledger {' '.join(path)} --help`"
                pytest.fail(f"{where}: {exc.format_message()}")
        typed = example.split(" #")[0].rstrip()  # a trailing comment may be aligned
        assert "  " not in typed, f"`{example}`: a line continuation was lost"


# Set by opsledger for its own children, never by a person.
INTERNAL_VARIABLES = {"OPSLEDGER_RUN", "OPSLEDGER_RUN_MARKER", "OPSLEDGER_READ_LOG"}


def test_every_variable_opsledger_reads_is_named_in_the_top_level_help():
    """A variable read in silence changes what a command does with nothing on screen to say why
    (OPSLEDGER_BASE picks the policies approve and change show follow): --help names them all."""
    source = REPO_ROOT / "src" / "opsledger"
    read = set()
    for path in source.rglob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r"environ(?:\.get)?[(\[]\"(OPSLEDGER_[A-Z_]+)\"", text))
        read |= set(re.findall(r"envvar=\"(OPSLEDGER_[A-Z_]+)\"", text))
        read |= set(re.findall(r"^[A-Z_]+ = \"(OPSLEDGER_[A-Z_]+)\"", text, re.M))
    read -= INTERNAL_VARIABLES
    assert {"OPSLEDGER_PROJECT", "OPSLEDGER_BASE", "OPSLEDGER_LOCK_DIR"} <= read
    help_text = CliRunner().invoke(cli, ["--help"], terminal_width=100).output
    assert "NO_COLOR" in help_text
    assert not [v for v in sorted(read) if v not in help_text], help_text


@pytest.mark.parametrize("path", COMMANDS)
def test_an_option_set_by_a_variable_says_so_in_its_help(path):
    command = cli
    for name in path:
        command = command.get_command(click.Context(command), name)
    help_text = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200).output
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            assert param.envvar in help_text, f"{param.opts[0]} of {' '.join(path)}"


def _top_level_commands() -> dict[str, click.Command]:
    """Every command object of the opsledger.cli modules that no group there holds: the
    root's commands, found from the code rather than from COMMANDS."""
    found: list[click.Command] = []
    held: set[int] = set()
    for info in pkgutil.iter_modules(opsledger.cli.__path__):
        module = importlib.import_module(f"opsledger.cli.{info.name}")
        for value in vars(module).values():
            if value is cli:  # the root itself (cli/root.py)
                continue
            if isinstance(value, click.Command) and value.callback.__module__ == module.__name__:
                found.append(value)
            if isinstance(value, click.Group):
                held |= {id(c) for c in value.commands.values()}
    top = [c for c in found if id(c) not in held]
    assert len({c.name for c in top}) == len(top), "two top-level commands share a name"
    return {c.name: c for c in top}


def test_the_root_table_names_every_command_its_module_and_its_help():
    """cli.COMMANDS is what the root's --help prints without loading a module: a new command, a
    moved one or an edited first help paragraph must show up here, not as a stale help line."""
    commands = _top_level_commands()
    assert sorted(ROOT_TABLE) == sorted(commands)
    for name, (module, summary) in ROOT_TABLE.items():
        command = commands[name]
        assert command.callback.__module__ == f"opsledger.cli.{module}"
        assert getattr(importlib.import_module(f"opsledger.cli.{module}"), name) is command
        assert summary == " ".join(command.help.partition("\n\n")[0].split()), name
        assert not (command.short_help or command.hidden or command.deprecated), name


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_the_root_help_reads_as_click_prints_it_from_the_loaded_commands(width):
    """The lazy root's command list, before any module loads, is line for line what click
    prints from the real commands at any terminal width (truncation included)."""
    lazy = _Group(name="opsledger", params=cli.params, help=cli.help)
    assert not lazy.commands
    all(True for _ in all_commands(cli))  # load every command of the real root

    def rendered(group, format_commands):
        ctx = click.Context(group, info_name="opsledger", terminal_width=width)
        formatter = ctx.make_formatter()
        format_commands(group, ctx, formatter)
        return formatter.getvalue()

    assert "Commands:" in rendered(lazy, _Group.format_commands)
    assert rendered(lazy, _Group.format_commands) == rendered(cli, click.Group.format_commands)
    assert not lazy.commands


def test_a_mistyped_command_gets_a_suggestion_from_every_command():
    """click suggests close names from the loaded commands; none are loaded before one runs."""
    lazy = _Group(name="opsledger", params=cli.params, help=cli.help, callback=cli.callback)
    result = CliRunner().invoke(lazy, ["chnge"], prog_name="opsledger")
    assert result.exit_code == 2
    assert "No such command 'chnge'. Did you mean 'change'?" in result.output


HEAVY = ("click", "jsonschema", "rich", "ansible", "yaml", "jinja2")


def _main(
    args: list[str], columns: str, entry: str = "opsledger.cli"
) -> subprocess.CompletedProcess:
    """`opsledger ARGS` in a fresh interpreter through `entry`'s main(), off a terminal of
    COLUMNS columns; its stderr's last line lists the modules it imported."""
    code = (
        "import json, sys\n"
        f"from {entry} import main\n"
        f"sys.argv = ['opsledger', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(opsledger.__file__).parents[1]),
        "COLUMNS": columns,
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_root_help_imports_no_command_module_and_no_heavy_library():
    """`opsledger --help` in a fresh interpreter: the help is printed and exit is 0, and no
    command module, not even click, no jsonschema, rich, Ansible, YAML or Jinja was imported
    to print it (click alone costs more than the start-up target)."""
    proc = _main(["--help"], "80")
    assert "change    Create and validate change requests." in proc.stdout
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, heavy
    ours = [m for m in loaded if m.startswith("opsledger")]
    assert sorted(ours) == ["opsledger", "opsledger.cli", "opsledger.cli.roothelp"]


@pytest.mark.parametrize("args", [["--help"], ["-h"]])
@pytest.mark.parametrize("columns", ["50", "79", "80", "200"])
def test_the_kept_root_help_is_what_click_prints(args, columns):
    """What `opsledger --help` prints without click is, byte for byte, what click prints from
    the commands at that width; under 80 columns click itself prints it. When this fails
    after an edit of a command's help: run
    `python -c 'from opsledger.cli.root import write_root_help as w; w()'`."""
    kept = _main(args, columns)
    clicks = _main(args, columns, entry="opsledger.cli.root")
    assert kept.stdout == clicks.stdout
    assert ("click" in json.loads(kept.stderr.splitlines()[-1])) == (int(columns) < 80)


def modules_of_a_run(project, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `opsledger ARGV` on `project` in a fresh interpreter: its result and every module
    it imported (the command must succeed)."""
    code = (
        "import json, sys\n"
        "from opsledger.cli import main\n"
        f"sys.argv = ['opsledger', *{list(argv)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(opsledger.__file__).parents[1]),
        "OPSLEDGER_PROJECT": str(project.root),
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        return proc, set()
    return proc, set(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_change_validate_reads_the_inventory_without_ansibles_cli(repo, monkeypatch):
    """`change validate` of a real change in a fresh clone reads the lab's inventory (vaulted
    group_vars included) without importing Ansible at all: it is plain enough for
    plainshape.py. Where Ansible does read it (here: an ANSIBLE_ setting, Ansible's own
    default, makes the plain reader step aside), it goes through Ansible's inventory classes
    and vault, but not ansible.cli: that import alone was a tenth of the command's start-up.
    Checked in a fresh interpreter, on the command's real path."""
    project, change_id, _ = repo
    shutil.rmtree(project.root / ".opsledger" / "cache", ignore_errors=True)
    proc, loaded = modules_of_a_run(project, "change", "validate", change_id)
    assert proc.returncode == 0, proc.stderr
    assert f"{change_id}: valid (converge on 2 host(s) of lab)" in proc.stdout
    assert not {m for m in loaded if m.split(".")[0] in ("ansible", "jsonschema")}
    assert "opsledger.plainshape" in loaded  # the inventory was really read
    shutil.rmtree(project.root / ".opsledger" / "cache", ignore_errors=True)
    monkeypatch.setenv("ANSIBLE_INVENTORY_ENABLED", "host_list,script,auto,yaml,ini,toml")
    proc, loaded = modules_of_a_run(project, "change", "validate", change_id)
    assert proc.returncode == 0, proc.stderr
    assert f"{change_id}: valid (converge on 2 host(s) of lab)" in proc.stdout
    assert "ansible.inventory.manager" in loaded  # Ansible read it
    assert "ansible.parsing.vault" in loaded
    assert "ansible.cli" not in loaded
    assert not {m for m in loaded if m.startswith(("rich", "opsledger.cli.drill"))}
