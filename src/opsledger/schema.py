r"""JSON Schema validation of project files, one Problem per violation (file, field, fix).

Two choices make validation strict where Python's defaults are lenient:

- `pattern` is anchored for real: in Python `^[a-z]+$` also accepts "alice\n" (`$` matches
  before a final newline), so an id with a trailing newline would pass. An unescaped `$`
  outside a character class is compiled as `\Z` (end of text, as in JSON Schema's ECMA
  regexes), for the shipped schemas and every runbook's parameter schema alike.
- messages never echo a whole value: a megabyte string or a nested structure is cut.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError

from opsledger.errors import Problem, one_line, shown


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """A published schema shipped with the package (`change`, `runbook`, `policy-<name>`)."""
    text = resources.files("opsledger.schemas").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


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
    if not validator.is_type(instance, "string"):
        return
    try:
        found = _compiled(pattern).search(instance)
    except re.error:
        yield ValidationError(f"the schema's pattern {shown(pattern)} is not a valid regex")
        return
    if not found:
        yield ValidationError(f"{shown(instance, 50)} does not match {pattern}")


Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


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


def problems(data: Any, schema_doc: dict[str, Any], file: str, prefix: str = "") -> list[Problem]:
    """Every way data breaks the schema, sorted by where it is."""
    validator = Validator(schema_doc)
    found = []
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))
    for error in errors:
        found.append(Problem(_message(error), file, _field(error, prefix), _fix(error)))
    return found


def schema_problems(schema_doc: Any, file: str, field: str) -> list[Problem]:
    """Problems with a schema itself (e.g. a runbook's parameter schema)."""
    try:
        Draft202012Validator.check_schema(schema_doc)
    except SchemaError as exc:
        return [
            Problem(
                f"not a valid JSON Schema: {one_line(exc.message, 120)}",
                file,
                field,
                "see https://json-schema.org",
            )
        ]
    return []
