"""The bad-input contract, by hand-made example: exit 2, one `error:` line per problem naming
what to fix, no traceback, nothing run, written or committed.

#14.4 symlinked changes; #14.6 no traceback for any input, and no git history means exit 2;
#14.7 `change new` leaves nothing behind; #14.9 size limits of free text and params.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import textwrap

import click
import pytest

from opsledger.cli import cli
from opsledger.cli.history import WITHOUT_HISTORY, leaf_commands, needs_history
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file

from .badinput import assert_refused, run, tree_state
from .conftest import START, build_repo, copy_project

INSIDE = (START + dt.timedelta(minutes=30)).isoformat()
NEW = [
    "change", "new", "--title", "Restart chrony on the app hosts", "--runbook",
    "service-restart", "--type", "standard", "--targets", "app", "--param", "service=chrony",
    "--requested-by", "alice", "--reason", "chrony lost its sources after the change",
    "--start", START.isoformat(),
]  # fmt: skip


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory):
    """One repo for the many cases below: each asserts it writes nothing, so they can share."""
    project, change_id, _ = build_repo(tmp_path_factory.mktemp("bad"))
    return project, change_id


def option(args: list[str], name: str, value: str) -> list[str]:
    """NEW with one option's value replaced (or added)."""
    out = list(args)
    if name in out:
        out[out.index(name) + 1] = value
    else:
        out += [name, value]
    return out


CLI_CASES = [
    (["change", "validate", "CHG-" + "9" * 300], "is not a change id"),
    (["change", "validate", "../../etc"], "'../../etc' is not a change id"),
    (["change", "validate", "CHG-0001\n"], "is not a change id"),
    (["change", "show", "CHG-1"], "'CHG-1' is not a change id"),
    (["decide", "CHG-0001", "--at", "0001-01-01T00:00:00+05:00"], "years 1970 to 9000"),
    (["decide", "CHG-0001", "--at", "soon"], "--at: 'soon' is not a time"),
    (["decide", "CHG-0001", "--at", "2026-12-01T20:30"], "'2026-12-01T20:30' has no timezone"),
    (["decide", "CHG-0001", "--at", "+1m30m"], "--at: '1m30m' is not a duration"),
    (["decide", "../CHG-0001"], "is not a change id"),
    (option(NEW, "--param", "service"), "'service' is not name=value"),
    (option(NEW, "--param", "=chrony"), "'=chrony' is not name=value"),
    (option(NEW, "--param", "service=[chrony"), "--param service: line 2: invalid YAML"),
    (option(NEW, "--param", "service=!!python/object/apply:os.system [id]"), "unsupported tag"),
    (option(NEW, "--param", "service={a: 1, a: 2}"), "duplicate key 'a'"),
    ([*NEW, "--param", "service=ssh"], "service is given twice"),
    (option(NEW, "--start", "nope"), "'nope' is not a time"),
    (option(NEW, "--start", "9999-12-31T23:00:00+00:00"), "years 1970 to 9000"),
    (
        option(NEW, "--start", "2026-12-01T20:00:00"),
        "--start: '2026-12-01T20:00:00' has no timezone",
    ),
    (option(NEW, "--duration", "99999999999d"), "'99999999999d' is not a duration"),
    (option(NEW, "--duration", "31d1s"), "'31d1s' is not a duration of 1m to 31d"),
    (option(NEW, "--duration", "0m"), "is not a duration"),
    (option(NEW, "--start", ""), "--start: empty value"),
    (option(NEW, "--start", " "), "--start: empty value"),
    (option(NEW, "--duration", ""), "--duration: '' is not a duration"),
    (["decide", "CHG-0001", "--at", ""], "--at: empty value"),
    (["incident", "list", "--due", ""], "'' is not a duration"),
    (option(NEW, "--targets", "~("), "targets: '~(' is not a host or group name"),
    (option(NEW, "--env", "../lab"), "environment: '../lab' does not match"),
    (option(NEW, "--runbook", "../roles"), "runbook: '../roles' does not match"),
    (option(NEW, "--title", "x" * 121), "title: 121 characters; at most 120 allowed"),
    (option(NEW, "--title", "two\nlines"), "title: 'two\\nlines' does not match"),
    (option(NEW, "--reason", "y" * 2001), "reason: 2001 characters; at most 2000 allowed"),
    (["report", "-o", "missing/folder/report.html"], "no such folder"),
    (["report", "--period", "99999999d"], "is not a period"),
    (["report", "--period", "9999-12"], "'9999-12' is not a period"),
    (["audit", "log", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
    (["incident", "new", "--detected-at", "2026-13-01T00:00Z"], "--detected-at: '2026-13-01"),
    (["notify", "breaches", "--within", "0s"], "--within: '0s' is not a duration of 1m to 31d"),
    (["plan", "CHG-0001", "--json", "--format", "md"], "--json and --format md ask for two"),
    (["apply", "CHG-0001", "--wait", "nan"], "--wait: 'nan' is not a duration"),
    (["apply", "CHG-0001", "--wait", "-1"], "--wait: '-1' is not a duration"),
    (["apply", "CHG-0001", "--wait", "1d1s"], "--wait: '1d1s' is not a duration of 0s to 1d"),
    (["ci", "pr", "--base", "--output=/tmp/x"], "unknown base"),
    (["ci", "pr", "--base", "main", "--summary", "missing/summary.md"], "no such folder"),
    (["ci", "apply", "--push", "--receive-pack=touch x"], "is not a remote name"),
    (["verify", "--targets", "@/etc/hostname"], "'@/etc/hostname' is not a host or group name"),
    (["runbook", "show", "../roles"], "is not a runbook name"),
    (["drill", "postgres", "--param", "x"], "'x' is not name=value"),
    (["policy", "schema", "../../etc/passwd"], "is not one of"),
    (["change", "new", "--title"], "Option '--title' requires an argument"),
    (
        [
            "change",
            "review",
            "CHG-" + "9" * 300,
            "--as",
            "carol",
            "--summary",
            "s" * 20,
            "--cause",
            "because",
        ],
        "is not a change id",
    ),
    (["ci", "codeowners", "--output", "x" * 300], "cannot write: File name too long"),
    (["report", "-o", "r" * 300], "cannot write: File name too long"),
]


@pytest.mark.parametrize(
    ("args", "message"), CLI_CASES, ids=[str(i) for i in range(len(CLI_CASES))]
)
def test_bad_arguments_exit_2_with_one_line_each(shared_repo, args, message):
    project, _ = shared_repo
    before = tree_state(project.root)
    assert_refused(run(project.root, args), expect=message)
    assert tree_state(project.root) == before


WRONG_TYPES = [
    ("window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}", "window: 5",
     "window: must be object, got a number"),
    ("params: {service: chrony}", "params: [chrony]", "params: must be object, got a list"),
    ("targets: app", "targets: 5", "targets: must be string, got a number"),
    ("id: CHG-0007", "id: 7", "id: must be string, got a number"),
    ("type: standard", "type: ~", "type: None is not allowed"),
    ("title: Restart chrony on the app hosts", "title: {a: b}", "title: must be string"),
    ("window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}",
     "window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00, timezone: Europe}",
     "window.timezone: unknown timezone 'Europe'"),
    ("window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}",
     "window: {start: '9999-12-31T23:59:00-12:00', end: '9999-12-31T23:59:30-12:00'}",
     "window.start: '9999-12-31T23:59:00-12:00' is not an ISO 8601 date-time"),
    ("params: {service: chrony}", "params: {service: '" + "s" * 2000 + "'}",
     "params.service: 2000 characters; at most 1024 allowed"),
    ("params: {service: chrony}",
     "params: {" + ", ".join(f"p{i}: 1" for i in range(33)) + "}",
     "params: 33 entries; at most 32 allowed"),
    ("params: {service: chrony}",
     "params: {" + ", ".join(f"p{i}: '{'v' * 1000}'" for i in range(20)) + "}",
     "params: params take more than 16384 bytes as JSON"),
]  # fmt: skip
CHANGE = textwrap.dedent(
    """\
    id: CHG-0007
    title: Restart chrony on the app hosts
    type: standard
    runbook: service-restart
    environment: lab
    targets: app
    params: {service: chrony}
    impact: low
    urgency: low
    window: {start: 2026-12-01T20:00:00+01:00, end: 2026-12-01T21:00:00+01:00}
    requested_by: alice
    reason: chrony lost its sources after the network change
    """
)


@pytest.mark.parametrize(
    ("line", "replacement", "message"), WRONG_TYPES, ids=[str(i) for i in range(len(WRONG_TYPES))]
)
def test_wrong_types_and_sizes_in_a_change_file(tmp_path, line, replacement, message):
    project = copy_project(tmp_path / "p")
    folder = project.root / "changes" / "CHG-0007"
    folder.mkdir(parents=True)
    (folder / "change.yml").write_text(CHANGE.replace(line, replacement))
    before = tree_state(project.root)
    lines = assert_refused(run(project.root, ["change", "validate", "CHG-0007"]), expect=message)
    assert all("changes/CHG-0007/change.yml: " in line for line in lines)
    assert tree_state(project.root) == before


def test_the_change_schema_states_the_size_limits():
    from .conftest import REPO_ROOT

    schema = json.loads(run(REPO_ROOT, ["change", "schema"]).stdout)
    props = schema["properties"]
    assert props["title"]["maxLength"] == 120 and props["reason"]["maxLength"] == 2000
    assert props["params"]["maxProperties"] == 32 and "16 KiB" in props["params"]["description"]
    assert schema["$defs"]["param"]["maxLength"] == 1024


# --- #14.4: what is approved and run is what git records: no symlinked change -----------------


def test_a_symlinked_change_file_or_folder_is_refused(shared_repo):
    project, change_id = shared_repo
    changes = project.root / "changes"
    (changes / "CHG-0002").mkdir()
    stored = stored_file(project.root, change_id).removeprefix("changes/")  # CHG-00xx/CHG-0001
    (changes / "CHG-0002" / "change.yml").symlink_to(f"../{stored}/change.yml")
    (changes / "CHG-0003").symlink_to(stored)
    try:
        before = tree_state(project.root)
        for other in ("CHG-0002", "CHG-0003"):
            for args in (["change", "validate", other], ["decide", other, "--at", INSIDE]):
                lines = assert_refused(run(project.root, args), expect="is a symlink")
                assert other in lines[0]
        result = run(project.root, ["change", "validate", "--all"])
        assert result.exit_code == 2 and f"{change_id}: valid" in result.stdout
        assert result.stderr.count("is a symlink") == 2
        assert tree_state(project.root) == before
    finally:
        (changes / "CHG-0002" / "change.yml").unlink()
        (changes / "CHG-0002").rmdir()
        (changes / "CHG-0003").unlink()


def test_a_change_linked_to_a_file_outside_the_repository_is_refused(tmp_path):
    project = copy_project(tmp_path / "p")
    outside = tmp_path / "elsewhere.yml"
    outside.write_text(CHANGE.replace("targets: app", "targets: all"))
    (project.root / "changes" / "CHG-0007").mkdir()
    (project.root / "changes" / "CHG-0007" / "change.yml").symlink_to(outside)
    lines = assert_refused(run(project.root, ["change", "validate", "CHG-0007"]))
    assert "is a symlink" in lines[0] and "targets: all" not in lines[0]


# --- #14.6: commands that read history need a git repository with commits ---------------------

VALUES = {"change_id": "CHG-0001", "incident_id": "INC-0001", "problem_id": "PRB-0001",
          "incidents": "INC-0001", "change": "CHG-0001", "person": "alice"}  # fmt: skip


def required_args(command: click.Command) -> list[str]:
    """Values for a command's required arguments and options, enough for click to parse them:
    the history check runs before the command reads any of them."""
    args: list[str] = []
    for param in command.params:
        if param.required:
            value = VALUES.get(param.name or "", "some value")
            if isinstance(param.type, click.Choice):
                value = str(param.type.choices[0])
            args += [value] if isinstance(param, click.Argument) else [param.opts[0], value]
    return args


def commands_needing_history() -> list[list[str]]:
    """Every command of the CLI except those cli/history.py says read only the working tree:
    derived from the command tree, so a new command is covered without editing this list."""
    return [
        [*name.split(), *required_args(command)]
        for name, command in leaf_commands(cli)
        if needs_history(name)
    ]


HISTORY_COMMANDS = [
    *commands_needing_history(),
    ["decide", "CHG-0001", "--at", INSIDE],
    ["plan", "CHG-0001", "--at", INSIDE],
    ["apply", "CHG-0001", "--at", INSIDE],
    ["apply", "--pending"],
    ["approve", "CHG-0001", "--as", "bob"],
    ["change", "show", "CHG-0001"],
    ["audit", "log"],
    ["audit", "check"],
    ["report"],
    ["ci", "pr", "--base", "main", "--no-plan"],
]


def test_the_commands_that_need_no_history_are_few_and_exist():
    names = [name for name, _ in leaf_commands(cli)]
    for exempt in WITHOUT_HISTORY:
        assert any(n == exempt or n.startswith(exempt + " ") for n in names), exempt
    needing = {" ".join(a[:2]) for a in commands_needing_history()}
    for name in (
        "incident list",
        "problem suggest",
        "change withdraw",
        "incident new",
        "host list",
    ):
        assert name in needing or name.split()[0] in needing, name
    assert len(needing) > 40


@pytest.fixture(scope="module")
def no_git(tmp_path_factory):
    """A project with a valid CHG-0001, not in any git repository."""
    project = copy_project(tmp_path_factory.mktemp("nogit") / "p")
    assert run(project.root, NEW).exit_code == 0
    return project


@pytest.mark.parametrize("args", HISTORY_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_outside_a_git_repository_is_exit_2(no_git, args):
    before = tree_state(no_git.root)
    assert_refused(run(no_git.root, args), expect="not the top of a git repository", progress=True)
    assert tree_state(no_git.root) == before


def test_an_alias_is_refused_under_the_name_of_the_command_it_names(no_git):
    """`change cancel` is `change withdraw` under another name: the history check wraps that
    command once, as `change withdraw` (the group's own order, not the alphabet)."""
    for name in ("withdraw", "cancel"):
        args = ["change", name, "CHG-0001", "--as", "alice", "--reason", "no longer needed"]
        result = run(no_git.root, args)
        assert result.exit_code == 2
        assert "change withdraw reads approvals and records from git" in result.stderr


@pytest.fixture(scope="module")
def no_commits(no_git, tmp_path_factory):
    """That project in a repository without commits (the cases below write nothing)."""
    root = tmp_path_factory.mktemp("nocommits") / "p"
    shutil.copytree(no_git.root, root)
    git(root, "init", "-q", "-b", "main")
    return root


@pytest.mark.parametrize("args", HISTORY_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_repository_without_commits_is_exit_2(no_commits, args):
    root = no_commits
    before = tree_state(root)
    assert_refused(run(root, args), expect="the repository has no commits yet", progress=True)
    assert tree_state(root) == before


def test_a_project_inside_another_repository_is_not_its_history(tmp_path):
    git(tmp_path, "init", "-q")
    project = copy_project(tmp_path / "p")
    assert run(project.root, NEW).exit_code == 0
    assert_refused(run(project.root, ["decide", "CHG-0001"]), expect="not the top of a git")


# --- #14.7: change new writes nothing when anything fails --------------------------------------


def test_change_new_leaves_nothing_when_validation_throws(tmp_path):
    project = copy_project(tmp_path / "p")
    before = tree_state(project.root)
    assert_refused(run(project.root, option(NEW, "--targets", "db[5]")), expect="targets")
    assert tree_state(project.root) == before
    hosts = project.root / "inventories" / "lab" / "hosts.yml"
    hosts.write_text(hosts.read_text() + "all: {}\n")  # a duplicate key: the inventory breaks
    before = tree_state(project.root)
    assert_refused(run(project.root, NEW), expect="duplicate key 'all'")
    assert tree_state(project.root) == before
    assert not (change_folder(project.root, "CHG-0001")).exists()


def test_change_new_does_not_write_into_a_leftover_folder(tmp_path):
    project = copy_project(tmp_path / "p")
    leftover = change_folder(project.root, "CHG-0001") / "approvals"
    leftover.mkdir(parents=True)
    (leftover / "bob.yml").write_text("decision: approved\n")
    before = tree_state(project.root)
    assert_refused(run(project.root, NEW), expect="the folder exists without a change.yml")
    assert tree_state(project.root) == before


def test_a_failed_approval_commit_leaves_nothing_behind(shared_repo, tmp_path):
    project, change_id = shared_repo
    # The statement is signed before anything is written (statements.py), so a key ssh-keygen
    # cannot sign with is refused up front; git refusing the commit itself is held here by
    # its index lock, as a concurrent git would.
    key = tmp_path / "not-a-key"
    key.write_text("this is not an SSH key\n")
    before = tree_state(project.root)
    result = run(project.root, ["approve", change_id, "--as", "bob", "--key", str(key)])
    assert_refused(result, expect="could not sign")
    assert tree_state(project.root) == before
    lock = project.root / ".git" / "index.lock"
    lock.touch()
    try:
        result = run(project.root, ["approve", change_id, "--as", "bob"])
    finally:
        lock.unlink()
    assert_refused(result, code=1, expect="failed")
    assert tree_state(project.root) == before
    assert git(project.root, "status", "--porcelain").stdout == ""


def test_a_withdrawal_git_refuses_leaves_no_withdrawn_yml(shared_repo):
    """withdrawn.yml left behind by a failed commit made the change read as withdrawn though
    git never recorded it (changes.withdraw_change wrote, then committed separately)."""
    project, change_id = shared_repo
    before = tree_state(project.root)
    lock = project.root / ".git" / "index.lock"
    lock.touch()
    try:
        args = ["change", "withdraw", change_id, "--as", "alice", "--reason", "superseded"]
        result = run(project.root, args)
    finally:
        lock.unlink()
    assert_refused(result, code=1, expect="index.lock': File exists")
    assert tree_state(project.root) == before
    # the commit lock's empty file under .opsledger/ (machine-local state) is no change
    assert git(project.root, "status", "--porcelain", "--", ".", ":!.opsledger").stdout == ""


def test_files_in_runs_that_are_not_records_are_ignored_not_fatal(shared_repo):
    """Run records feed decisions (already applied, promotion) and reports; a hand-made file
    there must not crash them (audit check reports evidence nobody committed through apply)."""
    project, change_id = shared_repo
    runs = change_folder(project.root, change_id) / "runs"
    record = {
        "kind": "run",
        "environment": "lab",
        "result": "success",
        "started_at": "2026-12-01T20:00:00+00:00",
        "finished_at": "2026-12-01T20:05:00+00:00",
        "change": change_id,
    }
    files = {
        "a.json": json.dumps({**record, "finished_at": 5}),
        "b.json": json.dumps({**record, "findings": ["not a finding"]}),
        "c.json": '{"kind": "run", "result": "failed", "result": "success"}',
        "d.json": "[1, 2]",
        "e.json": json.dumps({**record, "measurements": {"rto_s": "fast"}}),
    }
    runs.mkdir()
    try:
        for name, text in files.items():
            (runs / name).write_text(text)
        before = tree_state(project.root)
        decided = run(project.root, ["decide", change_id, "--at", INSIDE])
        assert decided.exit_code == 3, (decided.output, decided.exception)
        assert isinstance(decided.exception, SystemExit), decided.exception
        for args in (["audit", "log"], ["report", "--format", "json", "--period", "2026-12"]):
            result = run(project.root, args)
            assert result.exit_code == 0, (args, result.output, result.exception)
        assert tree_state(project.root) == before
    finally:
        shutil.rmtree(runs)


def test_an_inventory_file_linked_out_of_the_repository_is_neither_read_nor_shown(tmp_path):
    project = copy_project(tmp_path / "p")
    private = tmp_path / "private.yml"
    private.write_text("marker: private-content-42\n[broken yaml\n")
    link = project.root / "inventories" / "lab" / "group_vars" / "all" / "extra.yml"
    link.symlink_to(private)
    before = tree_state(project.root)
    lines = assert_refused(run(project.root, NEW), expect="is a symlink out of the repository")
    assert "private-content-42" not in "\n".join(lines)
    assert tree_state(project.root) == before


def test_an_overlong_approval_comment_is_refused_before_anything_is_written(shared_repo):
    project, change_id = shared_repo
    before = tree_state(project.root)
    args = ["approve", change_id, "--as", "bob", "--comment", "c" * 2001]
    assert_refused(run(project.root, args), expect="the comment has 2001 characters")
    assert tree_state(project.root) == before


def test_an_approval_is_never_written_through_a_symlinked_folder(shared_repo, tmp_path):
    project, change_id = shared_repo
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    approvals = change_folder(project.root, change_id) / "approvals"
    aside = tmp_path / "approvals"  # alice's request statement lives there (#12): set it aside
    approvals.rename(aside)
    approvals.symlink_to(elsewhere)
    try:
        before = tree_state(project.root)
        result = run(project.root, ["approve", change_id, "--as", "bob"])
        assert_refused(result, expect="is a symlink")
        assert tree_state(project.root) == before and not any(elsewhere.iterdir())
    finally:
        approvals.unlink()
        aside.rename(approvals)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[defaults]\nforks = 5\n[defaults]\nforks = 6\n", "section 'defaults' already exists"),
        (b"forks = 5\n[defaults]\n", "no section headers"),
        (b"[defaults]\nforks = \xff\n", "can't decode byte 0xff"),
    ],
    ids=["duplicate-section", "no-section", "not-utf8"],
)
def test_a_malformed_ansible_cfg_is_one_line_naming_it(tmp_path, text, message):
    """Every command reading ansible.cfg before Ansible does says what is wrong, no traceback.

    (It was configparser's traceback from the vault-id reader of `change validate`.)
    """
    project, change_id, _ = build_repo(tmp_path)
    shutil.rmtree(project.root / ".opsledger" / "cache", ignore_errors=True)
    (project.root / "ansible.cfg").write_bytes(text)
    before = tree_state(project.root)
    for args in (["change", "validate", change_id], ["plan", change_id], NEW):
        lines = assert_refused(run(project.root, args), expect=message)
        assert any("ansible.cfg: unreadable" in line for line in lines), lines
        assert tree_state(project.root) == before
