"""Property-based bad input (#14): generated change files, policies and CLI arguments.

Every example is invalid by construction (a value of the wrong type, a forbidden character,
a duplicate key, bytes that are not UTF-8 ...), so the property is the whole contract: exit 2,
one `error:` line per problem, no traceback, nothing written or committed. Hypothesis shrinks a
failure to the smallest such input; many more variants than the hand-made ones are tried on
every run.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.policy.files import POLICY_FILES

from .badinput import assert_refused, run, tree_state
from .conftest import START, build_repo

INSIDE = (START + dt.timedelta(minutes=30)).isoformat()
VALID_CHANGE = {
    "id": "CHG-0007",
    "title": "Restart chrony on the app hosts",
    "type": "standard",
    "runbook": "service-restart",
    "environment": "lab",
    "targets": "app",
    "params": {"service": "chrony"},
    "impact": "low",
    "urgency": "low",
    "window": {"start": "2026-12-01T20:00:00+01:00", "end": "2026-12-01T21:00:00+01:00"},
    "requested_by": "alice",
    "reason": "chrony lost its sources after the network change",
}


@pytest.fixture(scope="module")
def repo_once(tmp_path_factory):
    """One repository (CHG-0001 committed) shared by every example: each restores what it
    edits and asserts it wrote nothing else."""
    project, change_id, _ = build_repo(tmp_path_factory.mktemp("props"))
    return project, change_id


# --- values ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.dates(),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def not_a(kind: type | tuple[type, ...]) -> st.SearchStrategy:
    """Any value of another type (a bool is not an int here, as in JSON Schema; an unquoted
    date is the text it was written as, so it counts as text)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if str in kinds:
        kinds = (*kinds, dt.date)

    def other(value: object) -> bool:
        if isinstance(value, bool):
            return bool not in kinds
        return not isinstance(value, kinds)

    return anything.filter(other)


FORBIDDEN_IN_TEXT = ["\x00", "\n", "\x1b[31m", "\u2028", "{{ lookup('pipe', 'id') }}\n"]
bad_text = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.text(max_size=10),
    st.sampled_from(FORBIDDEN_IN_TEXT),
    st.text(max_size=10),
)

# Per field of change.yml: values that can never be valid there.
BAD_FIELDS = {
    "id": not_a(str) | bad_text | st.from_regex(r"CHG-[0-9]{10,40}", fullmatch=True),
    "title": not_a(str) | bad_text | st.text(min_size=121, max_size=200).filter(str.strip),
    "type": anything.filter(lambda v: v not in ("standard", "normal", "emergency")),
    "runbook": not_a(str) | bad_text | st.text(alphabet="/.~@ ", min_size=1, max_size=10),
    "environment": not_a(str) | bad_text | st.just("../lab"),
    "targets": not_a(str)
    | st.builds(
        lambda t, c: t + c,
        st.sampled_from(["db", "app", "all"]),
        st.sampled_from([":@/etc/hostname", ",~(", "[5]", " app", ":!", ",", "[0:1]", ":&"]),
    ),
    "params": not_a(dict)
    | st.dictionaries(st.text(alphabet="-. /$", min_size=1, max_size=5), scalars, min_size=1)
    | st.just({"service": "x" * 1025}),
    "impact": anything.filter(lambda v: v not in ("low", "medium", "high")),
    "window": not_a(dict)
    | st.fixed_dictionaries({"start": anything, "end": anything}).filter(
        lambda w: not all(isinstance(v, str) for v in w.values())
    )
    | st.just({"start": "2026-02-30T20:00:00+01:00", "end": "2026-12-01T21:00:00+01:00"})
    | st.just({"start": "2026-12-01T21:00:00+01:00", "end": "2026-12-01T20:00:00+01:00"}),
    "requested_by": not_a(str) | bad_text | st.just("alice\n"),
    "reason": not_a(str) | st.text(max_size=9) | st.text(min_size=2001, max_size=2100),
}


@st.composite
def bad_changes(draw) -> dict:
    data = dict(VALID_CHANGE)
    fields = draw(st.lists(st.sampled_from(sorted(BAD_FIELDS)), min_size=1, max_size=3))
    for field in fields:
        data[field] = draw(BAD_FIELDS[field])
    if draw(st.booleans()):
        data.pop(draw(st.sampled_from(sorted(VALID_CHANGE))))
    if draw(st.booleans()):
        data[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in VALID_CHANGE))] = 1
    return data


def dump(data: dict) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


def _validate(project, content: bytes) -> None:
    folder = project.root / "changes" / "CHG-0007"
    folder.mkdir(exist_ok=True)
    (folder / "change.yml").write_bytes(content)
    before = tree_state(project.root)
    try:
        assert_refused(run(project.root, ["change", "validate", "CHG-0007"]))
        assert tree_state(project.root) == before
    finally:
        (folder / "change.yml").unlink()
        folder.rmdir()


@given(data=bad_changes())
def test_generated_bad_change_files_exit_2(repo_once, data):
    project, _ = repo_once
    _validate(project, dump(data).encode())


ALWAYS_BAD = [
    b"\x00",
    b"\xff\xfe",
    b"\nid: CHG-0007\n",  # a duplicate key
    b"\nx: !!python/object/apply:os.system [id]\n",
    b"\nx: &a [*a]\n",
    b"\nx: " + b"[" * 200 + b"]" * 200 + b"\n",
    b"\n1: one\n",
    b"\nx: 2026-02-30\n",
    b"\ntargets: all\n",
]


@given(
    noise=st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=6)), max_size=4),
    bad=st.sampled_from(ALWAYS_BAD),
)
def test_mangled_change_text_exits_2(repo_once, noise, bad):
    project, _ = repo_once
    text = bytearray(dump(VALID_CHANGE).encode())
    for position, chunk in noise:
        at = position % (len(text) + 1)
        text[at:at] = chunk
    text += bad
    _validate(project, bytes(text))


# --- policies --------------------------------------------------------------------------------

POLICIES = sorted(POLICY_FILES)  # all ten policy files (incidents, locks, notifications too)


def _paths(node, prefix=()):
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _of_another_type(value):
    kinds = {bool: bool, int: (int, float), float: (int, float), str: str, list: list, dict: dict}
    kind = next((k for t, k in kinds.items() if isinstance(value, t)), type(None))
    if isinstance(value, dt.date):
        kind = str
    return not_a(kind)


@st.composite
def broken_policy(draw):
    """(file name, YAML text) of one shipped policy file with one part of another type, or an
    unknown top-level key."""
    from .conftest import REPO_ROOT

    name = draw(st.sampled_from(POLICIES))
    data = yaml.safe_load((REPO_ROOT / "policies" / f"{name}.yml").read_text())
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        data[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in data))] = 1
    else:
        path = draw(st.sampled_from(list(_paths(data))))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(_of_another_type(parent[path[-1]]))
    return f"{name}.yml", yaml.safe_dump(data, allow_unicode=True)


@settings(max_examples=30)
@given(broken=broken_policy())
def test_generated_policy_mistakes_stop_check_and_decide(repo_once, broken):
    project, change_id = repo_once
    name, text = broken
    path = project.root / "policies" / name
    original = path.read_text()
    path.write_text(text)
    try:
        before = tree_state(project.root)
        assert_refused(run(project.root, ["policy", "check"]))
        lines = assert_refused(run(project.root, ["decide", change_id, "--at", INSIDE]))
        assert "policy check fails" in lines[-1]
        assert tree_state(project.root) == before
    finally:
        path.write_text(original)


# --- command-line arguments ------------------------------------------------------------------

NEW = [
    "change", "new", "--title", "Restart chrony on the app hosts", "--runbook",
    "service-restart", "--type", "standard", "--targets", "app", "--param", "service=chrony",
    "--requested-by", "alice", "--reason", "chrony lost its sources after the change",
    "--start", START.isoformat(),
]  # fmt: skip
VALID_ID = re.compile(r"CHG-[0-9]{4,9}")


def _with(option: str, value: str) -> list[str]:
    args = list(NEW)
    args[args.index(option) + 1] = value
    return args


def _not_a_time(text: str) -> bool:
    """Not an aware ISO 8601 time ('' means "not given": now)."""
    if not text:
        return False
    try:
        return dt.datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return True


cli_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40).filter(
    lambda t: "\x00" not in t  # an OS argument cannot hold NUL
)
BAD_ARGS = st.one_of(
    cli_text.filter(lambda t: not VALID_ID.fullmatch(t)).map(
        lambda t: ["change", "validate", "--", t]
    ),
    cli_text.filter(lambda t: not VALID_ID.fullmatch(t)).map(lambda t: ["decide", "--", t]),
    cli_text.filter(lambda t: not VALID_ID.fullmatch(t)).map(lambda t: ["change", "show", "--", t]),
    cli_text.filter(lambda t: not re.fullmatch(r"[0-9]{1,6}[mhd]", t)).map(
        lambda t: [*_with("--start", START.isoformat()), "--duration", t]
    ),
    cli_text.filter(_not_a_time)
    .filter(lambda t: not t.startswith("-"))
    .map(lambda t: _with("--start", t)),
    cli_text.filter(lambda t: re.search(r"[^A-Za-z0-9_.*?!&:,-]", t) is not None)
    .filter(lambda t: not t.startswith("-"))
    .map(lambda t: _with("--targets", t)),
    st.tuples(
        cli_text.filter(lambda k: not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", k)), cli_text
    )
    .filter(lambda kv: not kv[0].startswith("-"))
    .map(lambda kv: _with("--param", f"{kv[0]}={kv[1]}")),
    cli_text.filter(lambda t: not re.fullmatch(r"[0-9]{1,4}[dw]|[0-9]{4}-(Q[1-4]|[0-9]{2})", t))
    .filter(lambda t: not t.startswith("-"))
    .map(lambda t: ["report", "--period", t]),
)


@settings(max_examples=80)
@given(args=BAD_ARGS)
def test_generated_bad_arguments_exit_2(repo_once, args):
    project, _ = repo_once
    before = tree_state(project.root)
    assert_refused(run(project.root, args))
    assert tree_state(project.root) == before


# --- incidents (#17): free text is bounded, and what is written reads back as it was ---------

INCIDENT = {
    "id": "INC-0001",
    "title": "PostgreSQL down on lab-db1",
    "detected_at": "2026-11-30T08:00:00+00:00",
    "source": "user_report",
    "environment": "lab",
    "hosts": ["lab-db1"],
    "services": ["postgresql"],
    "class": "software",
    "impact": "high",
    "urgency": "medium",
    "priority": "P2",
    "assignee": None,
    "status": "open",
    "timeline": [{"at": "2026-11-30T08:00:00+00:00", "by": "alice", "action": "opened"}],
}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _written(tmp_path_factory, data: dict) -> tuple[str | None, list[str]]:
    """incident_text of `data`: (the text, []) or (None, the problem lines)."""
    from opsledger.errors import OpsledgerError
    from opsledger.faults.store import Incident, incident_text

    path = tmp_path_factory.getbasetemp() / "incidents" / "INC-0001" / "incident.yml"
    try:
        return incident_text(Incident("INC-0001", path, data)), []
    except OpsledgerError as exc:
        return None, [str(p) for p in exc.problems]


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=4100) | st.text(alphabet="ab \n", min_size=3990, max_size=4010),
    field=st.sampled_from(["note", "text", "reason", "summary", "cause", "root_cause"]),
)
def test_timeline_text_is_refused_past_its_limit_or_reads_back_unchanged(
    tmp_path_factory, text, field
):
    from opsledger.yamlio import MAX_BYTES, parse_yaml

    step = {"at": "2026-11-30T09:00:00+00:00", "by": "bob", "action": "note", field: text}
    data = {**INCIDENT, "timeline": [*INCIDENT["timeline"], step]}
    written, problems = _written(tmp_path_factory, data)
    if len(text) > 4000:
        assert written is None and len(problems) == 1, problems
        assert f"timeline[1].{field}: {len(text)} characters; at most 4000" in problems[0]
    else:
        assert written is not None, problems
        assert len(written.encode()) <= MAX_BYTES
        assert parse_yaml(written, source="incident.yml") == data
    assert all("\n" not in p for p in problems)


@settings(max_examples=150, deadline=None)
@given(title=st.text(max_size=200))
def test_an_incident_title_is_one_line_of_5_to_160_characters(tmp_path_factory, title):
    written, problems = _written(tmp_path_factory, {**INCIDENT, "title": title})
    fits = 5 <= len(title) <= 160 and not CONTROL.search(title)
    assert (written is not None) == fits, (title, problems)
    assert all(p.count("\n") == 0 and "title" in p for p in problems)
