r"""JSON Schema validation of project files, one Problem per violation (file, field, fix).

Two choices make validation strict where Python's defaults are lenient:

- `pattern` is anchored for real: in Python `^[a-z]+$` also accepts "alice\n" (`$` matches
  before a final newline), so an id with a trailing newline would pass. An unescaped `$`
  outside a character class is compiled as `\Z` (end of text, as in JSON Schema's ECMA
  regexes), for the shipped schemas and every runbook's parameter schema alike.
- messages never echo a whole value: a megabyte string or a nested structure is cut.

jsonschema is imported when something is validated (it is most of a short command's start):
inside `passes_remembered(passes)`, data that passed the same schema before (its digest is
in `passes`, which localcache.schema_passes keeps between commands) passes without it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from opsledger.errors import Problem, one_line, shown

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """A published schema shipped with the package (`change`, `runbook`, `policy-<name>`)."""
    return json.loads(schema_text(name))


@functools.cache
def schema_text(name: str) -> str:
    """The text of a published schema, as shipped (what `schema` parses)."""
    return resources.files("opsledger.schemas").joinpath(f"{name}.schema.json").read_text()


def named_problems(data: Any, name: str, file: str, prefix: str = "") -> list[Problem]:
    """`problems(data, schema(name), ...)`, its fast path keyed by the schema's shipped text.

    `problems` fingerprints the schema it is handed on every call (a caller may have changed
    it in place): 45 us of each change request an audit reads, for a schema that is the same
    text every time. Here the fast path judges with its own parse of that text (`fast_schema`,
    kept by the text, never handed out, so nothing changes it); anything it does not pass
    goes to `problems`, which says what is wrong exactly as before.
    """
    if fast_schema(schema_text(name)).valid(data):
        return []
    return problems(data, schema(name), file, prefix)


@dataclass(frozen=True)
class FastSchema:
    """A schema's private copy for `_valid`, and whether `_valid` knows all of its keywords."""

    doc: Any
    supported: bool

    def valid(self, data: Any) -> bool:
        """`_fast_valid` on the copy: True only where jsonschema finds nothing wrong."""
        try:
            return self.supported and _valid(data, self.doc, self.doc)
        except RecursionError:  # data nested past Python's stack: jsonschema says what is wrong
            return False


@functools.lru_cache(maxsize=256)
def fast_schema(fingerprint: str) -> FastSchema:
    """The fast path's parse of a schema's JSON text (`schema_fingerprint`, or a shipped file's).

    Kept by the text itself: another text (an edited runbook's parameters, another release's
    file) is another entry, never the verdict of the old one.
    """
    try:
        copied = json.loads(fingerprint)
    except (ValueError, RecursionError):
        return FastSchema(None, False)
    supported = isinstance(copied, dict) and not _ref_cycle(copied)
    return FastSchema(copied, supported and _supported(copied, copied))


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    """The pattern with every unescaped `$` outside a [class] meaning end of text."""
    out, index, in_class = [], 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return re.compile("".join(out))


def _pattern(
    validator: Any, pattern: str, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    try:
        found = _compiled(pattern).search(instance)
    except (re.error, OverflowError, RecursionError):
        yield ValidationError(f"the schema's pattern {shown(pattern)} is not a valid regex")
        return
    if not found:
        yield ValidationError(f"{shown(instance, 50)} does not match {pattern}")


@functools.cache
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"pattern": _pattern})


_PASSES: ContextVar[set[str] | None] = ContextVar("schema_passes", default=None)


@contextlib.contextmanager
def passes_remembered(passes: set[str]) -> Iterator[set[str]]:
    """Inside, data that passed a schema before (its digest in `passes`) passes unvalidated.

    Each new pass is added to `passes`. Nested: the outer set is used.

    Example:
        with passes_remembered(set()) as passes:
            problems(data, schema("change"), "change.yml")  # [] -> its digest in passes
    """
    if _PASSES.get() is not None:
        yield _PASSES.get()  # type: ignore[misc]
        return
    token = _PASSES.set(passes)
    try:
        yield passes
    finally:
        _PASSES.reset(token)


def passes_active() -> bool:
    """Whether a `passes_remembered` scope is open (an inner one would only reuse it)."""
    return _PASSES.get() is not None


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether JSON writes the value as it is (only such data is remembered).

    A tuple would be written as a list and an int key as text; jsonschema tells them apart.
    """
    if depth > 64:
        return False
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)
    return kind in (str, int, float, bool, type(None))


def _digest(data: Any, schema_doc: Any, kind: str = "valid") -> str | None:
    """The digest of data and schema as validated, or None (not plain: not remembered).

    `kind` tells a validation ("valid") from a check of the schema itself ("schema").
    """
    if not (_plain(data) and _plain(schema_doc)):
        return None
    try:
        text = json.dumps([kind, schema_doc, data], sort_keys=True, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _field(error: ValidationError, prefix: str = "") -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return (prefix + path).lstrip(".") or "top level"


def _fix(error: ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"remove it; allowed here: {', '.join(allowed)}" if allowed else "remove it"
    if error.validator == "required":
        return "add it"
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        return f"write a {error.validator_value}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return description or "see the schema"


_KINDS = {
    dict: "a mapping",
    list: "a list",
    str: "text",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _message(error: ValidationError) -> str:
    """What is wrong, naming the value only as far as a line can carry it."""
    value, kind = error.instance, error.validator
    if kind == "additionalProperties" and isinstance(value, dict):
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        return f"unknown field(s) {', '.join(one_line(str(k), 40) for k in extra)}"
    if kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"must be {wanted}, got {_KINDS.get(type(value), type(value).__name__)}"
    if kind in ("maxLength", "minLength") and isinstance(value, str):
        word = "at most" if kind == "maxLength" else "at least"
        return f"{len(value)} characters; {word} {error.validator_value} allowed"
    if kind in ("maxItems", "minItems", "maxProperties", "minProperties"):
        word = "at most" if kind.startswith("max") else "at least"
        return f"{len(value)} entries; {word} {error.validator_value} allowed"
    if kind == "enum":
        return f"{shown(value, 40)} is not allowed"
    return one_line(error.message, 200)


# The keywords `_valid` knows; a schema using any other one is always checked by jsonschema.
_ANNOTATIONS = {"$schema", "$id", "$comment", "$defs", "title", "description", "default"}
_CHECKED = {
    "type", "enum", "pattern", "minLength", "maxLength", "required", "properties",
    "additionalProperties", "minProperties", "maxProperties", "propertyNames", "items",
    "minItems", "maxItems", "uniqueItems", "$ref", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "oneOf",
}  # fmt: skip
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "properties": dict,
    "$defs": dict,
    "required": list,
    "enum": list,
    "pattern": str,
    "type": (str, list),
    "uniqueItems": bool,
}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# Bounds on numbers: runbook and policy schemas bound counts and hours with them.
_BOUNDS: dict[str, Callable[[int | float, int | float], bool]] = {
    "minimum": lambda value, bound: value >= bound,
    "maximum": lambda value, bound: value <= bound,
    "exclusiveMinimum": lambda value, bound: value > bound,
    "exclusiveMaximum": lambda value, bound: value < bound,
}


def _finite_number(value: Any) -> bool:
    """An int, or a float that is neither NaN nor infinite (a bool is not a number here)."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _supported(node: Any, root: dict[str, Any]) -> bool:
    """Whether every keyword of the schema (and of each part it refers to) is one `_valid` knows."""
    if isinstance(node, bool):
        return True
    if not isinstance(node, dict) or set(node) - _ANNOTATIONS - _CHECKED:
        return False
    if node is not root and ("$id" in node or "$schema" in node):
        return False  # a nested base URI or dialect: jsonschema judges that part by other rules
    ref = node.get("$ref")
    if (
        ref is not None
        and not (
            isinstance(ref, str)
            and ref.startswith("#/$defs/")
            and not set(ref[8:]) & set("/~%")  # one plain name, no JSON-pointer escapes
            and isinstance(root.get("$defs"), dict)
            and ref[8:] in root["$defs"]
        )
    ):
        return False
    if any(not isinstance(node[k], kind) for k, kind in _SHAPES.items() if k in node):
        return False
    types = node.get("type", [])
    if any(
        not isinstance(t, str) or t not in _TYPES
        for t in ([types] if isinstance(types, str) else types)
    ):
        return False
    if not all(type(node.get(k, 0)) is int for k in _COUNTS):
        return False
    if not all(_finite_number(node[k]) for k in _BOUNDS if k in node):
        return False
    parts = [*node.get("properties", {}).values(), *node.get("$defs", {}).values()]
    parts += [node[k] for k in ("additionalProperties", "propertyNames", "items") if k in node]
    if "oneOf" in node:
        if type(node["oneOf"]) is not list or not node["oneOf"]:
            return False
        parts += node["oneOf"]
    return all(_supported(part, root) for part in parts)


def _valid(data: Any, node: Any, root: dict[str, Any]) -> bool:
    """True only when jsonschema finds nothing wrong (False: let jsonschema say what is wrong).

    Written for the keywords of `_CHECKED` with jsonschema's meaning (each applies only to the
    kinds of value it is about); where a comparison could differ (enum of 1 and 1.0) it says
    False, never True. jsonschema's own walk costs 0.5 ms a change file: most of what an audit
    of thousands of valid changes spent on them.
    """
    if node is True:
        return True
    if node is False:
        return False
    if "$ref" in node and not _valid(data, root["$defs"][node["$ref"][8:]], root):
        return False
    if "oneOf" in node:  # one branch surely valid, every other one surely invalid
        branches = node["oneOf"]
        valid = [i for i, branch in enumerate(branches) if _valid(data, branch, root)]
        if len(valid) != 1 or not all(
            _surely_invalid(data, branch) for i, branch in enumerate(branches) if i != valid[0]
        ):
            return False
    if "type" in node:
        types = node["type"]
        if not any(_TYPES[t](data) for t in ([types] if isinstance(types, str) else types)):
            return False
    if "enum" in node and not (
        isinstance(data, str | int | float | None)  # nested values: jsonschema's own equality
        and any(type(data) is type(e) and data == e for e in node["enum"])
    ):
        return False
    bounds = [(holds, node[k]) for k, holds in _BOUNDS.items() if k in node]
    if (  # NaN and infinities never pass here: jsonschema decides them
        bounds
        and isinstance(data, int | float)
        and not isinstance(data, bool)
        and not (_finite_number(data) and all(holds(data, bound) for holds, bound in bounds))
    ):
        return False
    if isinstance(data, str):
        if len(data) < node.get("minLength", 0) or len(data) > node.get("maxLength", len(data)):
            return False
        if "pattern" in node:
            try:
                if not _compiled(node["pattern"]).search(data):
                    return False
            except (re.error, OverflowError, RecursionError):
                return False
    elif isinstance(data, dict):
        if not node.get("minProperties", 0) <= len(data) <= node.get("maxProperties", len(data)):
            return False
        if any(key not in data for key in node.get("required", ())):
            return False
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        names = node.get("propertyNames", True)
        for key, value in data.items():
            if names is not True and not _valid(key, names, root):
                return False
            if key in properties:
                if not _valid(value, properties[key], root):
                    return False
            elif extra is not True and not _valid(value, extra, root):
                return False
    elif isinstance(data, list):
        if not node.get("minItems", 0) <= len(data) <= node.get("maxItems", len(data)):
            return False
        items = node.get("items", True)
        if items is not True and not all(_valid(item, items, root) for item in data):
            return False
        if node.get("uniqueItems") and not (  # texts only: jsonschema's equality otherwise
            all(isinstance(item, str) for item in data) and len(set(data)) == len(data)
        ):
            return False
    return True


def _json_types(data: Any) -> set[str]:
    """Every JSON Schema type jsonschema says the value is (1.0 is an integer there)."""
    if isinstance(data, bool):
        return {"boolean"}
    if isinstance(data, int):
        return {"integer", "number"}
    if isinstance(data, float):
        return {"number", "integer"} if math.isfinite(data) and data.is_integer() else {"number"}
    kinds = {str: "string", dict: "object", list: "array", type(None): "null"}
    return {name for kind, name in kinds.items() if isinstance(data, kind)}


def _surely_invalid(data: Any, node: Any) -> bool:
    """True only when jsonschema finds the data invalid for this (sub)schema.

    Decided on two keywords alone: a `type` the value is not, a `required` key a mapping
    lacks (a oneOf's branches are told apart by these: a command as text or as a mapping,
    a channel's `url` or `url_env`). Anything else: False, not sure.
    """
    if node is False:
        return True
    if not isinstance(node, dict):
        return False
    if "type" in node:
        types = node["type"]
        if not _json_types(data) & set([types] if isinstance(types, str) else types):
            return True
    return isinstance(data, dict) and any(k not in data for k in node.get("required", ()))


def schema_fingerprint(schema_doc: Any) -> str | None:
    """The schema as JSON with its types kept (1, 1.0 and true differ), or None."""
    try:
        return json.dumps(schema_doc, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _fast_valid(data: Any, schema_doc: Any) -> bool:
    """`_valid`, for a schema all of whose keywords it knows (else False: jsonschema decides).

    Judged with the fast path's copy kept by the schema's JSON fingerprint (types kept:
    `1 == True` in Python, not in JSON Schema), taken on every call, so a schema changed in
    place is looked at again rather than judged by what it used to say; one that is not
    plain JSON never takes the fast path.
    """
    fingerprint = schema_fingerprint(schema_doc)
    return fingerprint is not None and fast_schema(fingerprint).valid(data)


def problems(data: Any, schema_doc: dict[str, Any], file: str, prefix: str = "") -> list[Problem]:
    """Every way data breaks the schema, sorted by where it is."""
    # Valid for sure: jsonschema would only say what is wrong. Asked first: it costs less
    # than the digest that remembers a pass (an audit validates thousands of changes).
    if _fast_valid(data, schema_doc):
        return []
    passes = _PASSES.get()
    digest = _digest(data, schema_doc) if passes is not None else None
    if digest is not None and digest in passes:  # type: ignore[operator]
        return []
    validator = _validator_class()(schema_doc)
    found = []
    try:
        errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))
    except RecursionError:
        return [
            Problem(
                "the schema refers to itself without end ($ref)",
                file,
                prefix or "(document)",
                "make every $ref reach a schema that does not lead back to it",
            )
        ]
    for error in errors:
        found.append(Problem(_message(error), file, _field(error, prefix), _fix(error)))
    if not found and digest is not None:
        passes.add(digest)  # type: ignore[union-attr]
    return found


def schema_problems(schema_doc: Any, file: str, field: str) -> list[Problem]:
    """Problems with a schema itself (e.g. a runbook's parameter schema)."""
    passes = _PASSES.get()
    digest = _digest(None, schema_doc, "schema") if passes is not None else None
    if digest is not None and digest in passes:  # type: ignore[operator]
        return []
    if not _surely_a_schema(schema_doc):  # else jsonschema's metaschema would find nothing
        return _checked_schema_problems(schema_doc, file, field, digest, passes)
    return _found_unsafe(schema_doc, file, field, digest, passes)


def _checked_schema_problems(
    schema_doc: Any, file: str, field: str, digest: str | None, passes: set[str] | None
) -> list[Problem]:
    """schema_problems through jsonschema's own check against the 2020-12 metaschema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema_doc)
    except (OverflowError, RecursionError) as exc:  # a regex Python cannot hold, say
        return [
            Problem(
                f"not a valid JSON Schema: {one_line(str(exc), 120)}",
                file,
                field,
                "see https://json-schema.org",
            )
        ]
    except SchemaError as exc:
        return [
            Problem(
                f"not a valid JSON Schema: {one_line(exc.message, 120)}",
                file,
                field,
                "see https://json-schema.org",
            )
        ]
    return _found_unsafe(schema_doc, file, field, digest, passes)


def _found_unsafe(
    schema_doc: Any, file: str, field: str, digest: str | None, passes: set[str] | None
) -> list[Problem]:
    """What `_unsafe` finds in a valid JSON Schema, as problems; a clean one is remembered."""
    found = [Problem(why, file, f"{field}{where}", fix) for where, why, fix in _unsafe(schema_doc)]
    if not found and digest is not None and passes is not None:
        passes.add(digest)
    return found


_D2020 = "https://json-schema.org/draft/2020-12/schema"
_SIMPLE_TYPES = frozenset(_TYPES)
_LOCAL_REF = re.compile(r"#/\$defs/[A-Za-z0-9_-]+\Z")
_SUBSCHEMAS = ("additionalProperties", "propertyNames", "items")


def _surely_a_schema(node: Any, depth: int = 0) -> bool:
    """True only when jsonschema's 2020-12 metaschema check would find nothing wrong.

    Importing jsonschema for `check_schema` was most of a cold `change validate` beyond
    Ansible's parse, for a runbook's few-line parameter schema. This knows the keywords the
    fast path validates with (`_CHECKED`) and the annotations, each value checked as the
    metaschema checks it, `pattern` compiled as its "regex" format does; any other keyword,
    a `$ref` other than `#/$defs/<name>`, a `$schema` other than 2020-12's or an `$id` says
    False and jsonschema decides, as before. Never True where jsonschema would refuse
    (tests/unit/test_fast_paths.py compares the two).
    """
    if type(node) is bool:
        return True
    if type(node) is not dict or depth > 64 or set(node) - _ANNOTATIONS - _CHECKED - {"$id"}:
        return False
    if "$id" in node or node.get("$schema", _D2020) != _D2020:
        return False
    checks: dict[str, Callable[[Any], bool]] = {
        "type": lambda v: (
            v in _SIMPLE_TYPES
            if type(v) is str
            else type(v) is list
            and len(v) >= 1
            and all(type(t) is str and t in _SIMPLE_TYPES for t in v)
            and len(set(v)) == len(v)
        ),
        "enum": lambda v: type(v) is list,
        "pattern": lambda v: type(v) is str and _compiles(v),
        "required": lambda v: (
            type(v) is list and all(type(k) is str for k in v) and len(set(v)) == len(v)
        ),
        "uniqueItems": lambda v: type(v) is bool,
        "$ref": lambda v: type(v) is str and _LOCAL_REF.match(v) is not None,
        "$comment": lambda v: type(v) is str,
        "title": lambda v: type(v) is str,
        "description": lambda v: type(v) is str,
        **{k: (lambda v: type(v) is int and v >= 0) for k in _COUNTS},
        **{k: _finite_number for k in _BOUNDS},
    }
    if not all(check(node[k]) for k, check in checks.items() if k in node):
        return False
    parts = [node[k] for k in _SUBSCHEMAS if k in node]
    if "oneOf" in node:  # the metaschema's schemaArray: a non-empty list of schemas
        if type(node["oneOf"]) is not list or not node["oneOf"]:
            return False
        parts += node["oneOf"]
    for k in ("properties", "$defs"):
        if k in node:
            if type(node[k]) is not dict or not all(type(name) is str for name in node[k]):
                return False
            parts += node[k].values()
    return all(_surely_a_schema(part, depth + 1) for part in parts)


def _compiles(pattern: str) -> bool:
    """Whether Python compiles the pattern (the metaschema's "regex" format in jsonschema)."""
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError):
        return False
    return True


def _unsafe(schema_doc: Any) -> list[tuple[str, str, str]]:
    """What a valid JSON Schema may hold that would judge data by other rules, or never end.

    A `$schema` or `$id` below the root makes jsonschema judge that part by another dialect
    (without this module's end-of-text `$`); a pattern Python cannot compile, or a `$ref`
    that leads back to itself, would stop validation with a traceback.
    """
    found: list[tuple[str, str, str]] = []

    def walk(node: Any, where: str, root: bool) -> None:
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{where}[{index}]", False)
            return
        if not isinstance(node, dict):
            return
        for key in ("$schema", "$id"):
            if key in node and not root:
                found.append((where + f".{key}", f"{key} below the schema's root",
                               "declare the dialect once, at the root"))  # fmt: skip
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            try:
                _compiled(pattern)
            except (re.error, OverflowError, RecursionError) as exc:
                why = f"the pattern does not compile: {one_line(str(exc), 80)}"
                found.append((where + ".pattern", why, "write a regular expression Python accepts"))
        for key, value in node.items():
            if key not in ("enum", "const", "default", "examples"):
                walk(value, f"{where}.{key}", False)

    walk(schema_doc, "", True)
    if isinstance(schema_doc, dict) and _ref_cycle(schema_doc):
        found.append((".$ref", "a $ref leads back to itself",
                      "make every $ref reach a schema that does not lead back to it"))  # fmt: skip
    return found


def _ref_cycle(root: dict[str, Any]) -> bool:
    """Whether following local `$ref`s alone (`#`, `#/$defs/<name>`) ever comes back."""
    defs = root.get("$defs") if isinstance(root.get("$defs"), dict) else {}

    def target(ref: Any) -> Any:
        if ref == "#":
            return root
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return defs.get(ref[8:])
        return None

    starts = [root, *defs.values()]
    for start in starts:
        seen: set[int] = set()
        node = start
        while isinstance(node, dict) and "$ref" in node:
            if id(node) in seen:
                return True
            seen.add(id(node))
            node = target(node["$ref"])
    return False
