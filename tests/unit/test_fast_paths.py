"""The audit's fast paths say what the slow ones say (#16.4).

Parsing YAML without the event walk where it provably finds nothing, building the data
without PyYAML's constructor, and accepting valid data without jsonschema's walk: each must
give the very answer of the path it stands in for, on any input, or step aside."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsledger import yamlio
from opsledger.errors import OpsledgerError
from opsledger.schema import (
    _fast_valid,
    _surely_a_schema,
    _validator_class,
    problems,
    schema,
    schema_problems,
)
from opsledger.yamlio import (
    _BASE,
    _check_nodes,
    _Problems,
    _scan,
    _syntax_problem,
    _untime,
    parse_yaml,
)


def _slow_parse(text: str, dates: bool) -> Any:
    """parse_yaml as it was: the event walk always, then PyYAML's constructor."""
    problems = _Problems("YAML text")
    scanner = _BASE(text)
    try:
        _scan(scanner, problems)
    except yaml.YAMLError as exc:
        raise OpsledgerError(_syntax_problem(exc, "YAML text")) from None
    finally:
        scanner.dispose()
    if problems.found:
        raise OpsledgerError(problems.found)
    loader = _BASE(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, "", problems, loader)
        if problems.found:
            raise OpsledgerError(problems.found)
        if not dates:
            _untime(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise OpsledgerError(_syntax_problem(exc, "YAML text")) from None
    finally:
        loader.dispose()


def _outcome(parse: Any, text: str, dates: bool) -> tuple[str, Any]:
    try:
        return "data", parse(text, dates=dates)
    except OpsledgerError as err:
        return "refused", [str(p) for p in err.problems]
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:
        return "unreadable", type(exc).__name__


FRAGMENTS = [
    "a", "b", ":", ": ", "- ", "-", "? ", "[", "]", "{", "}", ",", "\n", "  ", "'x'", '"y"',
    "1", "2026-12-01", "2026-12-01T20:00:00+00:00", "2026-02-30", "true", "null", "~", "&a ",
    "*a", "!!str ", "!!int ", "<<: ", "#c", "1.5", "0x1F", "yes", "---\n", "...\n", "\t",
]  # fmt: skip
STATEMENT = (
    "---\n# opsledger statement\nversion: 1\nchange: CHG-0001\nperson: bob\n"
    "decision: approved\ncontent_sha256: " + "ab" * 32 + "\npolicy_sha256: " + "cd" * 32 + "\n"
    "at: '2026-12-01T20:00:00+00:00'\ncomment: ''\nsignature: ''\ncontent_files: {}\n"
)
CHANGE = (
    "id: CHG-00001\ntitle: Synthetic change number 1\ntype: normal\nrunbook: converge\n"
    "environment: lab\ntargets: db\nparams: {tags: [postgresql]}\nimpact: low\nurgency: low\n"
    "window: {start: '2026-12-01T20:00:00+00:00', end: 2026-12-01T22:00:00+00:00}\n"
    "requested_by: alice\nreason: Synthetic history for the audit benchmark\n"
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.booleans())
@example(["a", "\n", "---\n", ":"], False)  # the walk met the second document's error first
def test_parse_yaml_answers_as_the_full_walk_does(parts, dates):
    text = "".join(parts)
    assert _outcome(parse_yaml, text, dates) == _outcome(_slow_parse, text, dates)


def test_shipped_kinds_of_file_take_the_fast_path_and_read_the_same():
    for text in (STATEMENT, CHANGE):
        assert yamlio._shallow_without_aliases(text)
        for dates in (True, False):
            assert parse_yaml(text, dates=dates) == _slow_parse(text, dates)


def test_deep_nesting_and_aliases_are_still_walked():
    deep = "a: " + "[" * 40 + "]" * 40 + "\n"
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(40)) + "  " * 40 + "v\n"
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    for text in (deep, block, bomb):
        assert not yamlio._shallow_without_aliases(text)
    for text in (deep, block):
        assert _outcome(parse_yaml, text, True)[0] == "refused"
    data = parse_yaml(bomb)
    assert data["c"][0] is data["c"][1] and data["c"] == [[["x", "x"]] * 2] * 2  # aliases


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=8),
    st.sampled_from(["CHG-0001", "lab", "db", "converge", "alice", "low", "normal", "x" * 130]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
VALID = yaml.safe_load(CHANGE.replace("2026-12-01T22:00:00+00:00", "'2026-12-01T22:00:00+00:00'"))


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(st.sampled_from([*VALID, "extra", "risk", "rollback"]), VALUES), st.data())
def test_fast_schema_check_never_passes_what_jsonschema_refuses(fields, data):
    doc = schema("change")
    change = {**VALID, **fields} if data.draw(st.booleans()) else fields
    if _fast_valid(change, doc):
        assert list(_validator_class()(doc).iter_errors(change)) == []


def test_valid_changes_take_the_fast_schema_path():
    doc = schema("change")
    assert list(_validator_class()(doc).iter_errors(VALID)) == []
    assert _fast_valid(VALID, doc)
    assert not _fast_valid({**VALID, "type": "weekly"}, doc)
    assert not _fast_valid({**VALID, "id": "CHG-1\n"}, doc)  # `$` is the end of the text
    assert not _fast_valid({**VALID, "params": {"tags": [True] * 65}}, doc)  # via $ref
    unknown = {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    assert not _fast_valid({"a": 1}, unknown)  # a keyword it does not know: jsonschema decides


PARAMS = {  # a runbook's parameter schema, as converge's (uniqueItems, enum items)
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tags": {"type": "array", "uniqueItems": True, "items": {"enum": ["a", "b", "c"]}}
    },
}


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["tags", "other"]), VALUES | st.lists(SCALARS)))
def test_fast_check_of_parameters_never_passes_what_jsonschema_refuses(params):
    if _fast_valid(params, PARAMS):
        assert list(_validator_class()(PARAMS).iter_errors(params)) == []


def test_parameters_take_the_fast_path_and_repeated_items_do_not():
    assert _fast_valid({"tags": ["a", "c"]}, PARAMS)
    assert not _fast_valid({"tags": ["a", "a"]}, PARAMS)
    assert not _fast_valid({"tags": [1, True]}, PARAMS)  # jsonschema's equality decides


# -- found by a review that fuzzed the fast paths against the slow ones (each failed before) --

D3 = "http://json-schema.org/draft-03/schema#"
D2020 = "https://json-schema.org/draft/2020-12/schema"
NESTED_D3 = {"$schema": D3, "type": "object", "properties": {"q": {"required": ["z"]}}}


def _slow(data, doc):
    return [e.message for e in _validator_class()(doc).iter_errors(data)]


@pytest.mark.parametrize(
    "doc",
    [
        {"type": "object", "properties": {"p": NESTED_D3}},
        {"$defs": {"p": NESTED_D3}, "type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}},
    ],
    ids=["inline", "through-ref"],
)
def test_a_dialect_below_the_root_never_takes_the_fast_path(doc):
    # jsonschema judges that part as draft 3 (a truthy `required` in a property's schema makes
    # the property required): the fast path, which knows 2020-12 only, must hand it over
    assert _slow({"p": {}}, doc) == ["'q' is a required property"]
    assert not _fast_valid({"p": {}}, doc)
    assert problems({"p": {}}, doc, "f.yml")


@pytest.mark.parametrize("key", ["$schema", "$id"])
def test_a_parameter_schema_with_a_dialect_or_id_below_its_root_is_refused(key):
    # below the root, even 2020-12 is judged by jsonschema's stock class: `$` would match
    # before a trailing newline, against this module's end-of-text rule
    value = D2020 if key == "$schema" else "https://example.org/p"
    doc = {"type": "object", "properties": {"p": {key: value, "type": "string"}}}
    found = schema_problems(doc, "runbook.yml", "parameters")
    assert [p.field for p in found] == [f"parameters.properties.p.{key}"]


def test_a_schema_changed_in_place_to_an_equal_comparing_value_is_judged_again():
    doc = {"type": "object", "properties": {"n": {"enum": [1]}}}
    assert _fast_valid({"n": 1}, doc)
    doc["properties"]["n"]["enum"][0] = True  # 1 == True in Python, not in JSON Schema
    assert _slow({"n": 1}, doc) == ["1 is not one of [True]"]
    assert not _fast_valid({"n": 1}, doc)


def test_a_pattern_python_cannot_compile_is_a_problem_not_a_traceback():
    doc = {"type": "object", "properties": {"p": {"type": "string", "pattern": "a{4294967296}"}}}
    found = schema_problems(doc, "runbook.yml", "parameters")
    assert len(found) == 1 and "too large" in found[0].message
    assert problems({"p": "a"}, doc, "change.yml")  # and data is refused, not crashed on


def test_a_ref_that_leads_back_to_itself_is_refused_and_never_recurses():
    doc = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert [p.message for p in schema_problems(doc, "runbook.yml", "parameters")] == [
        "a $ref leads back to itself"
    ]
    assert problems({}, doc, "change.yml")[0].message.startswith("the schema refers to itself")


# -- a runbook's parameter schema checked without jsonschema (a cold `change validate`) --

BOUNDED = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 2.5},
    },
}


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["n", "x"]),
        st.one_of(
            st.integers(-20, 20),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
            st.sampled_from([0, 1, 10, 11, 2.5, 2.4999, 0.0, -0.0, 10**400, 1.0]),
            SCALARS,
        ),
    )
)
@example({"x": 2.5})
@example({"x": 0})
@example({"n": 11})
@example({"x": float("-inf")})
def test_fast_check_of_bounds_never_passes_what_jsonschema_refuses(data):
    if _fast_valid(data, BOUNDED):
        assert _slow(data, BOUNDED) == []


def test_bounded_numbers_take_the_fast_path_and_out_of_bounds_ones_do_not():
    assert _fast_valid({"n": 1, "x": 2.4}, BOUNDED)
    assert _fast_valid({"n": 10}, BOUNDED)
    for data in ({"n": 0}, {"n": 11}, {"x": 0}, {"x": 2.5}, {"x": float("inf")}):
        assert not _fast_valid(data, BOUNDED)
    assert not _fast_valid({"x": float("nan")}, BOUNDED)  # jsonschema says valid: it decides
    assert _slow({"x": float("nan")}, BOUNDED) == []


def test_every_shipped_schema_takes_the_fast_path_unless_it_needs_jsonschema():
    """The change, runbook and every policy (a cold `change validate` and `decide` read them)
    are judged without jsonschema when valid; only `format` (incidents) is left to it."""
    import importlib.resources

    names = sorted(
        f.name.removesuffix(".schema.json")
        for f in importlib.resources.files("opsledger.schemas").iterdir()
        if f.name.endswith(".schema.json")
    )
    slow = {n for n in names if _needs_jsonschema(schema(n))}
    assert slow == {"incident"}  # `format: date-time`


def _needs_jsonschema(doc: Any) -> bool:
    from opsledger.schema import _supported

    return not _supported(doc, doc)


SCHEMA_VALUES = st.one_of(
    st.sampled_from(
        [
            "string", "object", "array", "integer", "number", "boolean", "null", "str", "",
            ["string"], ["string", "null"], ["string", "string"], [], [1], "^[a-z]+$", "[",
            "a{4294967296}", "(?P<x>a)(?P=x)", "\\d+", 0, 1, -1, 2.5, 1.0, True, False, None,
            float("nan"), float("inf"), 10**20, ["a", "a"], ["a", "b"], [1, "a"], {}, {"a": 1},
            "#/$defs/a", "#/$defs/a b", "#/definitions/a", "#", "http://x/y", "a b",
            "https://json-schema.org/draft/2020-12/schema",
            "http://json-schema.org/draft-07/schema#",
        ]
    ),
    st.text(max_size=6),
)  # fmt: skip
KEYWORDS = sorted(
    {
        "type", "enum", "pattern", "minLength", "maxLength", "required", "properties",
        "additionalProperties", "minProperties", "maxProperties", "propertyNames", "items",
        "minItems", "maxItems", "uniqueItems", "$ref", "$defs", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "$schema", "$id", "$comment", "title",
        "description", "default", "oneOf", "format", "const",
    }
)  # fmt: skip
SCHEMAS = st.recursive(
    st.dictionaries(st.sampled_from(KEYWORDS), SCHEMA_VALUES, max_size=4) | st.booleans(),
    lambda inner: st.dictionaries(
        st.sampled_from(KEYWORDS),
        SCHEMA_VALUES
        | inner
        | st.dictionaries(st.sampled_from(["a", "b", "$ref"]), inner, max_size=2)
        | st.lists(inner, max_size=2),
        max_size=5,
    ),
    max_leaves=10,
)


def _metaschema_says(doc: Any) -> str:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(doc)
    except SchemaError as exc:
        return f"refused: {exc.message}"
    except (OverflowError, RecursionError, ValueError) as exc:
        return f"raised: {type(exc).__name__}"
    return "valid"


@settings(max_examples=1500, deadline=None)
@given(SCHEMAS)
@example({"type": ["string", "string"]})
@example({"required": ["a", "a"]})
@example({"minLength": -1})
@example({"maximum": True})
@example({"pattern": "["})
@example({"properties": {"a": {"type": "str"}}})
@example({"$defs": {"a": {"minItems": 1.5}}})
def test_fast_schema_check_never_passes_what_the_metaschema_refuses(doc):
    if _surely_a_schema(doc):
        assert _metaschema_says(doc) == "valid"


def test_the_repositorys_parameter_schemas_are_checked_without_jsonschema():
    """Every runbook's parameter schema in this repository takes the fast check (and is valid)."""
    from pathlib import Path

    runbooks = sorted((Path(__file__).parents[2] / "runbooks").glob("*/runbook.yml"))
    assert runbooks
    for path in runbooks:
        doc = yaml.safe_load(path.read_text())["parameters"]
        assert _surely_a_schema(doc), path
        assert _metaschema_says(doc) == "valid", path
        assert schema_problems(doc, str(path), "parameters") == []


ONE_OF = [
    {  # policy-incidents' command: text, or a mapping with `run`
        "oneOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["run"],
                "properties": {
                    "run": {"type": "string", "minLength": 1},
                    "groups": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
            },
        ]
    },
    {"type": "object", "oneOf": [{"required": ["url"]}, {"required": ["url_env"]}]},
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},  # 1 and 2.0 match both: invalid
    {"oneOf": [True, {"type": "string"}]},
    {"oneOf": [{"type": "array", "maxItems": 1}, {"type": "array", "minItems": 1}]},
    {"oneOf": [{"required": ["a"]}, {"enum": [{"a": 1}]}]},  # the fast path unsure of one
]


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(ONE_OF),
    VALUES
    | st.sampled_from([1, 2.0, 1.5, "", "x", [], ["a"], ["a", "b"], {"run": "x"}, {"url": 1}])
    | st.dictionaries(st.sampled_from(["run", "groups", "url", "url_env", "x"]), VALUES),
)
@example(ONE_OF[2], 2.0)
@example(ONE_OF[2], 1)
@example(ONE_OF[1], {"url": "a", "url_env": "b"})
@example(ONE_OF[4], ["a"])
@example(ONE_OF[5], {"a": 1})
def test_fast_check_of_one_of_never_passes_what_jsonschema_refuses(doc, data):
    if _fast_valid(data, doc):
        assert _slow(data, doc) == []


def test_one_of_takes_the_fast_path_where_one_branch_surely_is_the_one():
    assert _fast_valid("systemctl restart x", ONE_OF[0])
    assert _fast_valid({"run": "x", "groups": ["db"]}, ONE_OF[0])
    assert _fast_valid({"url": "https://x"}, ONE_OF[1])
    assert _fast_valid(1.5, ONE_OF[2])
    for data, doc in ((2.0, ONE_OF[2]), ({"url": 1, "url_env": 2}, ONE_OF[1]), (["a"], ONE_OF[4])):
        assert not _fast_valid(data, doc) and _slow(data, doc)
