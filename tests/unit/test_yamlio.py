"""The one YAML loader (#14.3): what a reviewer reads is what runs, and no file can crash,
exhaust or trick a command. Each hostile file is refused through the CLI with exit 2, one line
naming file, line and field, and nothing written."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from stat import S_ISREG

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.errors import OpsledgerError
from opsledger.yamlio import MAX_BYTES, load_json, parse_yaml, read_text

from .badinput import assert_refused, run, tree_state
from .conftest import copy_project

VALID = textwrap.dedent(
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


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("yamlio") / "p")


def validate(project, content: bytes | str) -> list[str]:
    """Write CHG-0007's file, run `change validate`, return its error lines (exit 2 asserted)."""
    folder = project.root / "changes" / "CHG-0007"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "change.yml"
    file.write_bytes(content.encode() if isinstance(content, str) else content)
    before = tree_state(project.root)
    lines = assert_refused(run(project.root, ["change", "validate", "CHG-0007"]))
    assert tree_state(project.root) == before
    return lines


def test_the_valid_file_passes(project):
    (project.root / "changes" / "CHG-0007").mkdir(parents=True, exist_ok=True)
    (project.root / "changes" / "CHG-0007" / "change.yml").write_text(VALID)
    result = run(project.root, ["change", "validate", "CHG-0007"])
    assert result.exit_code == 0, result.output


def test_a_duplicate_key_is_refused_not_silently_the_last(project):
    """A reviewer reading the first `targets: app` must not see `targets: all` run."""
    lines = validate(project, VALID + "targets: all\n")
    assert lines == [
        f"error: {project.root}/changes/CHG-0007/change.yml: line 13: targets: duplicate key "
        "'targets' (first at line 6) — keep one: YAML would silently use the last"
    ]


def test_nested_duplicates_and_non_text_keys_name_their_field(project):
    text = VALID.replace("params: {service: chrony}", "params: {service: chrony, service: ssh}")
    assert "line 7: params.service: duplicate key 'service'" in validate(project, text)[0]
    for key in ("1", "true", "null", "2026-01-01", "[a, b]"):
        lines = validate(project, VALID + f"{key}: x\n")
        assert "line 13" in lines[0] and "is not text" in lines[0], lines


def test_a_merge_key_is_refused_not_silently_merged(project):
    """`targets: app` plus `<<: {targets: all}` validated, and one of the two values was
    silently dropped: a merge key hides which value wins just as a duplicate key does."""
    lines = validate(project, VALID + "<<: {targets: all}\n")
    assert lines == [
        f"error: {project.root}/changes/CHG-0007/change.yml: line 13: merge key `<<` is not "
        "supported: a key given both here and in the merged mapping silently keeps one value "
        "— write the keys out (anchors and aliases of whole values are fine)"
    ]
    nested = VALID.replace("params: {service: chrony}", "params: {<<: {service: ssh}}")
    assert "line 7: params: merge key `<<`" in validate(project, nested)[0]
    aliased = VALID.replace("params: {service: chrony}", "params: {service: chrony}\nx: &a {b: 1}")
    assert "merge key" in validate(project, aliased + "y: {<<: *a}\n")[0]
    listed = "x: &a {b: 1}\ny: &c {d: 1}\nz: {<<: [*a, *c]}\n"
    with pytest.raises(OpsledgerError, match="line 3: z: merge key"):
        parse_yaml(listed, source="m.yml")
    assert parse_yaml("'<<': text\n", source="m.yml") == {"<<": "text"}  # a quoted key is text


def test_billion_laughs_is_refused_fast_with_little_memory(project):
    laughs = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for name, prev in zip("bcdefghij", "abcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    text = VALID + "\n".join(laughs) + "\n"
    assert len(text) < 2048
    lines = validate(project, text)
    # Refused at the first alias that takes the count past 10,000 values, `e`'s first *d
    # (a..d add 9*10 + 9*91 + 9*820 = 8,289, then 7,381 more): the scan stopped there, before
    # anything was built or walked. That is the proof it is cheap; a duration was not (it
    # measures the machine, and a loaded runner stretches it).
    line_of_e = VALID.count("\n") + 5
    assert f"line {line_of_e}: aliases expand to more than 10000 values" in lines[0], lines


def test_recursive_aliases_deep_nesting_and_size_are_bounded(project):
    assert (
        "refers to an anchor that is not complete" in validate(project, VALID + "x: &r [*r]\n")[0]
    )
    assert "nested more than" in validate(project, VALID + "x: " + "[" * 5000 + "]" * 5000)[0]
    big = VALID + "x: " + "a" * (MAX_BYTES + 1) + "\n"
    assert "larger than" in validate(project, big)[0]


def test_only_utf8_and_no_control_characters(project):
    latin1 = VALID.replace("chrony lost", "chrony perdu à").encode("latin-1")
    assert "not UTF-8 text (byte 0xe0" in validate(project, latin1)[0]
    assert "unacceptable character #x0000" in validate(project, VALID + "x: a\0b\n")[0]
    assert (
        "not UTF-8 text (byte 0x89"
        in validate(project, b"\x89PNG\r\n\x1a\n" + bytes(range(256)))[0]
    )


def test_impossible_dates_unknown_tags_and_huge_numbers_name_line_and_field(project):
    lines = validate(project, VALID + "x: {when: 2026-02-30}\n")
    assert "line 13: x.when: cannot read '2026-02-30': day is out of range" in lines[0]
    for tag in ("!!python/object:os.system []", "!!binary aGk=", "!!set {a}", "!foo bar"):
        lines = validate(project, VALID + f"x: {tag}\n")
        assert "line 13: x: unsupported tag" in lines[0], lines
    lines = validate(project, VALID + "x: " + "9" * 5000 + "\n")
    assert "x: cannot read" in lines[0] and len(lines[0]) < 400


def test_error_lines_never_echo_a_whole_value_nor_span_lines(project):
    long_value = "LONG-" + "x" * 2000
    text = VALID.replace("title: Restart chrony on the app hosts", f'title: "a\\nb {long_value}"')
    lines = validate(project, text)
    assert long_value not in "\n".join(lines)
    assert all(len(line) < 500 for line in lines)


def test_a_file_outside_the_repository_is_neither_read_nor_shown(project, tmp_path):
    outside = tmp_path / "private.yml"
    outside.write_text("marker: private-content-42\n[broken")
    folder = project.root / "changes" / "CHG-0007"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "change.yml").unlink(missing_ok=True)
    (folder / "change.yml").symlink_to(outside)
    try:
        lines = assert_refused(run(project.root, ["change", "validate", "CHG-0007"]))
    finally:
        (folder / "change.yml").unlink()
    assert "private-content-42" not in "\n".join(lines) and "is a symlink" in lines[0]


def test_json_records_refuse_duplicates_and_depth(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"result": "failed", "result": "success"}')
    with pytest.raises(OpsledgerError, match="duplicate key 'result'"):
        load_json(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(OpsledgerError, match="invalid JSON"):
        load_json(path)


PLAIN = (str, int, float, bool, type(None), dt.date, dt.datetime)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


YAMLISH = st.text(
    alphabet=st.sampled_from([*"ab1:-[]{}&*!?|>'\"#%@`, \n\t.~<=\\", "\x00", "é", "\u2028"]),
    max_size=80,
)


@given(text=YAMLISH | st.text(max_size=80))
def test_any_text_is_plain_data_or_one_line_problems(text):
    """Property: the loader never raises anything but OpsledgerError, never returns objects
    other than plain data, and every problem is one line."""
    try:
        data = parse_yaml(text, source="fuzz.yml")
    except OpsledgerError as exc:
        assert exc.problems and all("\n" not in str(p) for p in exc.problems)
    else:
        assert _plain(data)


@given(
    keys=st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=5),
    at=st.integers(min_value=0, max_value=5),
    depth=st.integers(min_value=0, max_value=3),
)
def test_a_merge_key_anywhere_is_refused(keys, at, depth):
    """Property: a plain `<<` key at any position and depth is refused, never merged."""
    pairs = [f"{k}: 1" for k in dict.fromkeys(keys)]
    pairs.insert(min(at, len(pairs)), "<<: {a: 2}")
    text = "{" + ", ".join(pairs) + "}"
    for n in range(depth):
        text = f"{{k{n}: {text}}}"
    with pytest.raises(OpsledgerError, match="merge key `<<` is not supported"):
        parse_yaml(text, source="m.yml")


def _stat_saying(size: int, monkeypatch) -> None:
    """os.stat answers `size` for files (as if each grew after it was asked)."""
    real = os.stat

    def stat(path, *args, **kwargs):
        found = real(path, *args, **kwargs)
        if not S_ISREG(found.st_mode):
            return found
        return os.stat_result((*found[:6], size, *found[7:]))

    monkeypatch.setattr(os, "stat", stat)


def test_a_file_longer_than_its_stat_said_is_read_whole_and_still_bounded(tmp_path, monkeypatch):
    # read_text reads the size stat gave plus one byte: what was written since is read too,
    # and a file grown past the bound is refused as before
    small, big = tmp_path / "small.yml", tmp_path / "big.yml"
    small.write_text("a: 1\nb: two\n")
    big.write_text("a: " + "x" * MAX_BYTES + "\n")
    _stat_saying(3, monkeypatch)
    assert read_text(small) == "a: 1\nb: two\n"
    with pytest.raises(OpsledgerError, match="larger than"):
        read_text(big)
