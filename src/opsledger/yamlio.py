"""Reading the project's YAML files with errors a user can act on (file, line, fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import OpsledgerError, Problem

# libyaml's safe loader when PyYAML has it (audits read thousands of files), else Python's.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """YAML text to data with the project's safe loader (libyaml when available)."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data, no objects


def load_yaml(path: Path, *, expect: type = dict, what: str = "file") -> Any:
    """Parse a YAML file; syntax errors name the line, a wrong top-level type says what to write.

    Example:
        load_yaml(Path("changes/CHG-0001/change.yml"))
    """
    if not path.is_file():
        raise OpsledgerError(Problem(f"{what} not found", str(path), fix="check the path"))
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise OpsledgerError(
            Problem(
                f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                str(path),
                where,
                "fix the syntax (yamllint shows details)",
            )
        ) from None
    if data is None and expect is dict:
        data = {}
    if not isinstance(data, expect):
        raise OpsledgerError(
            Problem(
                f"the {what} must be a YAML {expect.__name__}, got {type(data).__name__}",
                str(path),
                "top level",
                f"write the {what} as `key: value` lines",
            )
        )
    return data
