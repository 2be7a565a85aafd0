"""Hostile input a second fuzz campaign found (#14): each was a traceback, a silent exit 2, a
fail-open or a corrupt commit before its fix.

- bytes that are not UTF-8 in an argument (or $OPSLEDGER_PERSON) reached YAML as lone
  surrogates: `--param` crashed, `approve --comment` and `incident new --note` committed files
  no loader reads back (an approval that never counts, an incident that cannot be shown);
- an explicit tag the value does not fit (`!!bool maybe`) crashed every policy reader, and
  `!!null 3` silently became null;
- an incidents.yml that does not read made `policy check` pass and `incident list` exit 2
  without a word;
- a committed change.yml that does not read vanished from `audit check` without a finding;
- names too long for a file (a change, incident or problem id, `--key`, a timezone, a
  runbook's suite) were OSError tracebacks; an inventory Ansible half read printed its own
  `[WARNING]` lines.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git
from opsledger.layout import change_folder, stored_file
from opsledger.yamlio import parse_yaml

from .badinput import assert_refused, run, tree_state
from .conftest import ALICE_ENV, START, build_repo

INSIDE = (START + dt.timedelta(minutes=30)).isoformat()
NEW = [
    "change", "new", "--title", "Restart chrony on the app hosts", "--runbook",
    "service-restart", "--type", "standard", "--targets", "app", "--param", "service=chrony",
    "--requested-by", "alice", "--reason", "chrony lost its sources after the change",
    "--start", START.isoformat(),
]  # fmt: skip
INCIDENT = [
    "incident", "new", "--title", "Disk full on lab-db1", "--class", "software", "--impact",
    "low", "--urgency", "low", "--as", "alice",
]  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One repository (CHG-0001 requested); every case asserts it leaves it as it was."""
    project, change_id, _ = build_repo(tmp_path_factory.mktemp("hostile"))
    return project, change_id


# --- arguments that are not UTF-8 ------------------------------------------------------------

NOT_UTF8 = "\udcff"  # how Python hands over the byte 0xff of an argument


def _args(change_id: str) -> list[list[str]]:
    return [
        ["approve", change_id, "--as", "bob", "--comment", "ok"],
        [*INCIDENT, "--note", "reported by phone"],
        [*NEW[:-2], "--start", START.isoformat()],
        [*NEW, "--param", "wait_seconds=30"],
        ["decide", change_id, "--at", INSIDE],
    ]


@settings(max_examples=40)
@given(
    pick=st.integers(min_value=0, max_value=4),
    position=st.integers(min_value=1, max_value=40),
    text=st.text(max_size=5),
)
def test_an_argument_that_is_not_utf8_is_refused_before_anything_is_written(
    shared, pick, position, text
):
    project, change_id = shared
    args = _args(change_id)[pick]
    at = position % len(args)
    args[at] = args[at][: len(text)] + NOT_UTF8 + text
    before = tree_state(project.root)
    lines = assert_refused(run(project.root, args), expect="is not UTF-8 text")
    assert len(lines) == 1 and f"argument {at + 1}" in lines[0]
    assert tree_state(project.root) == before


def test_a_person_variable_that_is_not_utf8_is_refused(shared):
    project, change_id = shared
    before = tree_state(project.root)
    from click.testing import CliRunner

    from opsledger.cli import cli

    result = CliRunner().invoke(
        cli,
        ["approve", change_id],
        env={"OPSLEDGER_PROJECT": str(project.root), "OPSLEDGER_PERSON": "bob" + NOT_UTF8},
    )
    assert_refused(result, expect="$OPSLEDGER_PERSON")
    assert tree_state(project.root) == before


# --- explicit tags ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["!!bool maybe", "!!null 3", "!!int abc", "!!float abc"])
def test_an_explicit_tag_the_value_does_not_fit_is_one_line(value):
    with pytest.raises(OpsledgerError, match=r"line 2: b: .* does not fit its tag"):
        parse_yaml(f"a: 1\nb: {value}\n", source="t.yml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("!!int 5", 5), ("!!float 5", 5.0), ("!!bool true", True), ("!!null", None), ("!!str 5", "5")],
)
def test_an_explicit_tag_that_fits_reads_as_before(value, expected):
    assert parse_yaml(f"b: {value}\n", source="t.yml") == {"b": expected}


TAGGED = st.builds(
    "{}: {} {}\n".format,
    st.sampled_from(["a", "b"]),
    st.sampled_from(["!!bool", "!!null", "!!int", "!!float", "!!timestamp", "!!str"]),
    st.text(alphabet="aeflnorstuy0123456789.-:_+ ", max_size=12),
)


@given(text=st.lists(TAGGED, max_size=3).map("".join) | st.text(max_size=60))
def test_tagged_scalars_and_any_text_with_surrogates_are_data_or_problems(text):
    """Property: the loader raises nothing but OpsledgerError, even for text holding lone
    surrogates (st.text above may draw them) and for every explicit scalar tag."""
    for candidate in (text, text + NOT_UTF8):
        try:
            parse_yaml(candidate, source="fuzz.yml")
        except OpsledgerError as exc:
            assert exc.problems and all("\n" not in str(p) for p in exc.problems)


# --- incidents.yml that does not read --------------------------------------------------------


@pytest.mark.parametrize("tail", ["\nx: !!float abc\n", "\n<<: {classes: []}\n", "\nbad: [\n"])
def test_an_unreadable_incident_policy_fails_check_and_decide_and_says_why(shared, tail):
    project, change_id = shared
    path = project.root / "policies" / "incidents.yml"
    original = path.read_text()
    path.write_text(original + tail)
    try:
        before = tree_state(project.root)
        lines = assert_refused(run(project.root, ["policy", "check"]))
        assert "incidents.yml" in lines[0], lines
        assert "incidents.yml" in assert_refused(run(project.root, ["incident", "list"]))[0]
        decided = assert_refused(run(project.root, ["decide", change_id, "--at", INSIDE]))
        assert "policy check fails" in decided[-1]
        assert tree_state(project.root) == before
    finally:
        path.write_text(original)


# --- audit check and a committed change that does not read -----------------------------------


def test_audit_check_reports_a_committed_change_that_does_not_read(tmp_path):
    project, change_id, _ = build_repo(tmp_path)
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text() + "targets: all\n")  # a duplicate key
    git(project.root, "commit", "-q", "-am", "Widen the targets", env=ALICE_ENV)
    result = run(project.root, ["audit", "check", "--json"])
    assert result.exit_code == 1, result.output
    assert '"rule": "change-unreadable"' in result.stdout
    assert f"changes/{change_id}/change.yml" in result.stdout
    assert "duplicate key 'targets'" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "log"],
        ["audit", "log", "--format", "json"],
        ["calendar", "--at", "2026-12-01T19:00:00+00:00", "--days", "2"],
    ],
)
def test_a_log_or_calendar_that_leaves_a_change_out_says_so(tmp_path, args):
    """audit log and calendar skipped a committed change that does not read and exited 0: an
    auditor read an incomplete change log as complete."""
    project, change_id, _ = build_repo(tmp_path)
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text() + "targets: all\n")  # a duplicate key
    git(project.root, "commit", "-q", "-am", "Widen the targets", env=ALICE_ENV)
    result = run(project.root, args)
    assert result.exit_code == 1, result.output
    assert f"warning: not in this {'log' if args[0] == 'audit' else 'calendar'}: " in result.stderr
    # named where it is stored, the folder a person opens (an audit finding names the key)
    assert f"{stored_file(project.root, change_id)}: " in result.stderr
    assert "duplicate key" in result.stderr
    assert "Traceback" not in result.output


def test_a_dr_service_whose_targets_select_nothing_fails_closed(tmp_path):
    """A misspelt group in dr.yml passed policy check and selected no host: os-patch then ran
    on the db hosts with no backup first (upgrade_backup), and no drill found a primary."""
    from opsledger.maintenance import upgrade_backups

    project, _, _ = build_repo(tmp_path)
    dr = project.root / "policies" / "dr.yml"
    dr.write_text(dr.read_text().replace("targets: db\n", "targets: dbs\n"))
    result = run(project.root, ["policy", "check"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if "services.postgres.targets" in line]
    assert len(lines) == 1 and "'dbs' selects no host in any environment" in lines[0], lines
    with pytest.raises(OpsledgerError, match="cannot be known"):
        upgrade_backups(project, "lab")


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_runbook_whose_playbook_is_a_symlink_is_refused(tmp_path, where):
    """runbook check read a playbook symlinked out of the repository without a word, and
    change validate called a change running it valid (only decide refused it)."""
    project, change_id, _ = build_repo(tmp_path)
    playbook = project.root / "runbooks" / "converge" / "playbook.yml"
    target = tmp_path / "elsewhere.yml" if where == "outside" else project.root / "site.yml"
    if where == "outside":
        target.write_text(playbook.read_text())
    playbook.unlink()
    playbook.symlink_to(target)
    for args in (["runbook", "check"], ["change", "validate", change_id]):
        result = run(project.root, args)
        assert result.exit_code == 2, (args, result.output)
        assert "playbook playbook.yml is a symlink" in result.stderr, result.stderr
        assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["calendar", "--days", "1"], ["policy", "check"]])
def test_a_symlinked_policies_folder_is_said_once(tmp_path, args):
    """Every policy loader met the same symlink and calendar printed the same line 5 times."""
    project, _, _ = build_repo(tmp_path)
    policies = project.root / "policies"
    policies.rename(tmp_path / "real-policies")
    policies.symlink_to(tmp_path / "real-policies")
    result = run(project.root, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(set(errors)) and any("is a symlink" in e for e in errors), errors


# --- change withdraw/cancel and its id -------------------------------------------------------


@pytest.mark.parametrize("change_id", ["x" * 300, "../../etc", "CHG-0001/../CHG-0001"])
@pytest.mark.parametrize("verb", ["withdraw", "cancel"])
def test_withdraw_checks_the_id_before_it_becomes_a_path(shared, verb, change_id):
    """An id of 300 characters was an OSError traceback (file name too long)."""
    project, _ = shared
    before = tree_state(project.root)
    args = ["change", verb, change_id, "--as", "alice", "--reason", "superseded"]
    assert_refused(run(project.root, args), expect="is not a change id")
    assert tree_state(project.root) == before


# --- incident and problem ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["x" * 300, "INC-" + "1" * 300, "../../etc", "INC-0001\n", "INC-١٢٣٤"]
)
@pytest.mark.parametrize("command", [["incident", "show"], ["problem", "show"]])
def test_an_incident_or_problem_id_is_checked_before_it_becomes_a_path(shared, command, bad):
    """An id of 300 characters was an OSError traceback (file name too long); `\\d` took other
    scripts' digits and `$` a final newline."""
    project, _ = shared
    before = tree_state(project.root)
    assert_refused(run(project.root, [*command, bad]), expect="is not a")
    assert tree_state(project.root) == before


# --- an inventory Ansible only half reads ----------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "skipped"),
    [
        ("all: 1000\n", "Skipping 'all'"),
        (
            "all:\n  children:\n    db:\n      hosts: {lab-db1: {}, lab-db2: {}}\n    app: 5\n",
            "Skipping 'app'",
        ),
    ],
)
def test_an_inventory_ansible_skips_part_of_is_refused_in_error_lines_only(shared, hosts, skipped):
    """Ansible's own `[WARNING]` lines reached stderr, and a group it skipped silently left
    the inventory (its hosts no longer targets)."""
    project, change_id = shared
    path = project.root / "inventories" / "lab" / "hosts.yml"
    original = path.read_text()
    path.write_text(hosts)
    try:
        before = tree_state(project.root)
        lines = assert_refused(run(project.root, ["change", "validate", change_id]))
        assert any(skipped in line for line in lines), lines
        assert tree_state(project.root) == before
    finally:
        path.write_text(original)


def test_host_vars_that_are_not_utf8_give_error_lines_only(shared):
    """Ansible's deprecation notice about the encoding reached stderr beside the error."""
    project, change_id = shared
    path = project.root / "inventories" / "lab" / "host_vars" / "lab-db1.yml"
    original = path.read_bytes()
    path.write_bytes(b"\x85" + original)
    try:
        before = tree_state(project.root)
        for args in (["change", "validate", change_id], ["host", "show", "lab-db1"]):
            assert_refused(run(project.root, args), expect="Ansible cannot load it")
        assert tree_state(project.root) == before
    finally:
        path.write_bytes(original)


# --- runbook names that become paths ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("verification", {"suites": ["é" * 200]}, "verification.suites[0]"),
        ("roles", ["r" * 300], "roles[0]"),
        ("roles", ["../runbooks"], "roles[0]"),
        ("rollback", "x" * 300, "rollback"),
        ("playbook", "../../../../../tmp/elsewhere.yml", "playbook"),
        ("playbook", "p" * 300 + ".yml", "playbook"),
    ],
)
def test_names_in_a_runbook_are_checked_before_they_become_paths(shared, field, value, message):
    """A suite of 200 characters was an OSError traceback (file name too long) in every
    command that lists runbooks; a playbook could name a file outside the repository."""
    import yaml

    project, _ = shared
    path = project.root / "runbooks" / "service-restart" / "runbook.yml"
    original = path.read_text()
    data = yaml.safe_load(original)
    data[field] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        before = tree_state(project.root)
        for args in (["runbook", "list"], ["runbook", "show", "service-restart"], NEW):
            assert_refused(run(project.root, args), expect=message)
        assert tree_state(project.root) == before
    finally:
        path.write_text(original)


# --- names too long for the file system ------------------------------------------------------


def test_a_signing_key_path_too_long_for_a_file_is_not_found(shared):
    """`--key` with a 300-character name was an OSError traceback before anything was said."""
    project, change_id = shared
    before = tree_state(project.root)
    args = ["approve", change_id, "--as", "bob", "--key", "é" * 300]
    assert_refused(run(project.root, args), expect="signing key not found")
    assert tree_state(project.root) == before


def test_a_business_hours_timezone_too_long_for_a_file_is_unknown(shared):
    """An IANA name is a file name under zoneinfo: 300 characters were an OSError traceback."""
    import yaml

    project, change_id = shared
    path = project.root / "policies" / "sla.yml"
    original = path.read_text()
    data = yaml.safe_load(original)
    data["business_hours"]["timezone"] = "x" * 300
    path.write_text(yaml.safe_dump(data))
    try:
        assert_refused(run(project.root, ["policy", "check"]), expect="unknown timezone")
        decided = assert_refused(run(project.root, ["decide", change_id, "--at", INSIDE]))
        assert "policy check fails" in decided[-1]
    finally:
        path.write_text(original)
