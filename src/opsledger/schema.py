"""JSON Schema validation of project files, one Problem per violation (file, field, fix)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from opsledger.errors import Problem


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """A published schema shipped with the package (`change`, `runbook`)."""
    text = resources.files("opsledger.schemas").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def _field(error: ValidationError, prefix: str = "") -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return (prefix + path).lstrip(".") or "top level"


def _fix(error: ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"remove it; allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        return "add it"
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        return f"write a {error.validator_value}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return description or "see the schema"


def problems(data: Any, schema_doc: dict[str, Any], file: str, prefix: str = "") -> list[Problem]:
    """Every way data breaks the schema, sorted by where it is."""
    validator = Draft202012Validator(schema_doc)
    found = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        message = error.message
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            message = f"unknown field(s) {', '.join(extra)}"
        found.append(Problem(message, file, _field(error, prefix), _fix(error)))
    return found


def schema_problems(schema_doc: Any, file: str, field: str) -> list[Problem]:
    """Problems with a schema itself (e.g. a runbook's parameter schema)."""
    try:
        Draft202012Validator.check_schema(schema_doc)
    except Exception as exc:  # SchemaError
        return [
            Problem(
                f"not a valid JSON Schema: {getattr(exc, 'message', exc)}",
                file,
                field,
                "see https://json-schema.org",
            )
        ]
    return []
