"""The one loader for every YAML (and JSON) file opsledger reads, hardened against hostile input.

Change requests, approvals, policies, runbooks, reviews and inventories are written by people
and reviewed in pull requests, so what a reviewer reads must be exactly what runs, and no file
may crash, exhaust or trick the tool. Every file therefore goes through `load_yaml`, which:

- refuses files larger than `MAX_BYTES` before reading them, and anything that is not UTF-8;
- refuses duplicate keys (YAML would keep the last one silently: a reviewer sees
  `targets: db` while `targets: all` runs), keys that are not text, tags other than the plain
  data ones, merge keys (`<<`, which hide which value wins just as a duplicate does),
  impossible dates and numbers Python refuses to build;
- bounds nesting (`MAX_DEPTH`) and what aliases may add (`MAX_ALIAS_NODES`), so a 1 KB
  "billion laughs" file cannot exhaust memory, and refuses recursive aliases;
- with `root`, refuses a path that leaves the repository or passes through a symlink there:
  what is approved and run must be what git records, and no error may echo another file.

Every refusal is an `OpsledgerError` with one line per problem naming file, line and field.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    ScalarEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from opsledger.errors import OpsledgerError, Problem, is_utf8, one_line, shown
from opsledger.steady import remembered, steady_memo

MAX_BYTES = 1024 * 1024  # a policy or change file is a few KB; inventories stay far below
MAX_DEPTH = 32  # nested mappings and lists; shipped files nest a handful of levels
MAX_ALIAS_NODES = 10_000  # nodes aliases may add in total; anchors reuse small blocks

# libyaml when PyYAML has it (audits read thousands of files); the checks below are ours.
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
DATA_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")}
_DATE_TAG = f"{_TAG}timestamp"
_MERGE_TAG = f"{_TAG}merge"


def _buildable(loader: Any, node: ScalarNode) -> str | None:
    """Why a date, number, boolean or null cannot be built (`!!bool maybe`, 2026-02-30), if so.

    A 5000-digit int would not build either. The constructor is called directly, not through
    the loader's cache, so the value built for the document later is unaffected.
    """
    implicit = loader.resolve(ScalarNode, node.value, (True, False))
    fits = {implicit} | ({f"{_TAG}float"} if implicit == f"{_TAG}int" else set())
    if node.tag not in fits:  # `!!bool maybe`, `!!null 3`: a tag the value does not fit
        return f"{shown(node.value, 40)} does not fit its tag {node.tag.replace(_TAG, '!!')}"
    try:
        loader.yaml_constructors[node.tag](loader, node)
    except (ValueError, OverflowError, KeyError, TypeError, yaml.YAMLError) as exc:
        return f"cannot read {shown(node.value, 40)}: {one_line(str(exc), 60)}"
    return None


class _Problems:
    """Problems found while reading one file, each on its own line."""

    def __init__(self, source: str):
        self.source = source
        self.found: list[Problem] = []

    def add(self, message: str, mark: Any, path: str, fix: str) -> None:
        where = f"line {mark.line + 1}" if mark is not None else "top level"
        field = f"{where}: {path}" if path else where
        self.found.append(Problem(message, self.source, field, fix))


def _scan(loader: Any, problems: _Problems) -> None:
    """Walk the events once: depth, recursive aliases and alias expansion, before building.

    Building first would be too late: aliases share nodes, so the explosion happens when the
    data is walked (schema validation, hashing), and libyaml composes deep nesting recursively.
    """
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for, once complete
    stack: list[list[Any]] = []  # open collections: [anchor, nodes so far]
    added = 0
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                problems.add(
                    f"nested more than {MAX_DEPTH} levels deep",
                    event.start_mark,
                    "",
                    "flatten the structure",
                )
                return
        elif isinstance(event, CollectionEndEvent):
            anchor, count = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
            if stack:
                stack[-1][1] += count
        elif isinstance(event, ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][1] += 1
        elif isinstance(event, AliasEvent):
            size = sizes.get(event.anchor)
            if size is None:
                problems.add(
                    f"alias *{one_line(event.anchor, 40)} refers to an anchor that is not complete "
                    "(recursive) or not defined",
                    event.start_mark,
                    "",
                    "define the anchor before, outside what refers to it",
                )
                return
            added += size
            if added > MAX_ALIAS_NODES:
                problems.add(
                    f"aliases expand to more than {MAX_ALIAS_NODES} values",
                    event.start_mark,
                    "",
                    "write the values out or use fewer aliases",
                )
                return
            if stack:
                stack[-1][1] += size


def _check_nodes(node: Node, path: str, problems: _Problems, loader: Any) -> None:
    """Every key text and unique, every tag a plain data one, every date and number buildable."""
    if isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:  # keys merged in hide which value wins, like a duplicate
                problems.add(
                    "merge key `<<` is not supported: a key given both here and in the merged "
                    "mapping silently keeps one value",
                    key.start_mark,
                    path,
                    "write the keys out (anchors and aliases of whole values are fine)",
                )
                continue
            if not isinstance(key, ScalarNode) or key.tag != f"{_TAG}str":
                what = (
                    f"key {shown(key.value, 40)}" if isinstance(key, ScalarNode) else "a list key"
                )
                problems.add(
                    f"{what} is not text",
                    key.start_mark,
                    path,
                    "quote the key (YAML reads 1, true, null and dates as other types)",
                )
                continue
            name = key.value
            where = f"{path}.{name}" if path else name
            if name in seen:
                problems.add(
                    f"duplicate key {shown(name, 40)} (first at line {seen[name]})",
                    key.start_mark,
                    where,
                    "keep one: YAML would silently use the last",
                )
            else:
                seen[name] = key.start_mark.line + 1
            _check_nodes(value, where, problems, loader)
    elif isinstance(node, SequenceNode):
        if node.tag != f"{_TAG}seq":
            _bad_tag(node, path, problems)
        for index, item in enumerate(node.value):
            _check_nodes(item, f"{path}[{index}]", problems, loader)
    else:
        if node.tag not in DATA_TAGS | {_DATE_TAG}:
            _bad_tag(node, path, problems)
        elif node.tag != f"{_TAG}str" and (why := _buildable(loader, node)):
            problems.add(
                why,
                node.start_mark,
                path,
                "write a real date (YYYY-MM-DD), number, true/false or null, or quote it as text",
            )
    if isinstance(node, MappingNode) and node.tag != f"{_TAG}map":
        _bad_tag(node, path, problems)


def _bad_tag(node: Node, path: str, problems: _Problems) -> None:
    problems.add(
        f"unsupported tag {one_line(node.tag.replace(_TAG, '!!'), 40)}",
        node.start_mark,
        path,
        "remove the tag: only plain text, numbers, booleans, dates, lists and mappings",
    )


def _syntax_problem(exc: yaml.YAMLError, source: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        return Problem(
            f"unacceptable character #x{code:04x} at character {exc.position}",
            source,
            "text",
            "remove control characters; save the file as UTF-8 text",
        )
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    return Problem(
        f"invalid YAML: {one_line(str(reason), 120)}",
        source,
        f"line {mark.line + 1}" if mark is not None else "YAML",
        "fix the syntax (yamllint shows details)",
    )


def parse_yaml(text: str, *, source: str = "YAML text", dates: bool = True) -> Any:
    """YAML text to plain data (dict, list, str, int, float, bool, None, date), or one error.

    `dates=False` keeps timestamps as the text written (change files speak ISO 8601 strings).

    Example:
        parse_yaml("tags: [postgresql]", source="--param")  # {'tags': ['postgresql']}
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise OpsledgerError(
            Problem(f"larger than {MAX_BYTES} bytes", source, "size", "keep files small")
        )
    if not is_utf8(text):
        raise OpsledgerError(
            Problem("not UTF-8 text", source, "encoding", "save it (or pass the value) as UTF-8")
        )
    problems = _Problems(source)
    walked = not _shallow_without_aliases(text)
    if walked:
        _walk(text, problems, source)
    loader = _BASE(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, "", problems, loader)
        if problems.found:
            raise OpsledgerError(problems.found)
        return _build(node, loader, dates, {})
    except (yaml.YAMLError, ValueError, OverflowError, TypeError, RecursionError) as exc:
        if not walked:  # the walk's refusal comes first, as when it always ran first
            _walk(text, _Problems(source), source)
        if isinstance(exc, yaml.YAMLError):
            raise OpsledgerError(_syntax_problem(exc, source)) from None
        raise OpsledgerError(
            Problem(f"unreadable value: {shown(str(exc), 80)}", source, "YAML", "simplify it")
        ) from None
    finally:
        loader.dispose()


def _walk(text: str, problems: _Problems, source: str) -> None:
    """`_scan` of the text; raise what it refuses (a syntax error, depth, aliases)."""
    scanner = _BASE(text)
    try:
        _scan(scanner, problems)
    except yaml.YAMLError as exc:
        raise OpsledgerError(_syntax_problem(exc, source)) from None
    finally:
        scanner.dispose()
    if problems.found:
        raise OpsledgerError(problems.found)


# What may follow an indicator: a blank, a line break (libyaml's, NEL and LS/PS included), the end.
_BLANKZ = " \t\r\n\x85\u2028\u2029"


def _shallow_without_aliases(text: str) -> bool:
    """Whether `_scan` can find nothing in this text, judged from its characters alone.

    Without `*` there is no alias. Every collection libyaml opens starts at an indicator of
    its own: `[`, `{`, `?`, `-` before a blank (a block entry), or `:` (a block mapping's first
    value: before a blank; any `:` once a flow collection may be open), so when there are at
    most MAX_DEPTH of them, nothing nests deeper. Statements and change requests pass (a
    third of the time parsing them took was that walk); anything else is walked as before.
    """
    if "*" in text:
        return False
    count = text.count("[") + text.count("{") + text.count("?")
    if count > MAX_DEPTH:
        return False
    for indicator in ("-", ":"):
        if indicator == ":" and ("[" in text or "{" in text):
            count += text.count(":")
            continue
        start = text.find(indicator)
        while start != -1 and count <= MAX_DEPTH:
            after = text[start + 1 : start + 2]
            if not after or after in _BLANKZ:
                count += 1
            start = text.find(indicator, start + 1)
    return count <= MAX_DEPTH


def _build(node: Node, loader: Any, dates: bool, built: dict[int, Any]) -> Any:
    """The data of a tree `_check_nodes` passed: keys are text, tags plain, values buildable.

    PyYAML's constructor, for what these files hold, in a fraction of its time (it was half
    of what parsing cost); an alias is the same object, as PyYAML builds it. `dates=False`
    keeps timestamps as the text written.
    """
    if id(node) in built:
        return built[id(node)]
    if isinstance(node, MappingNode):
        mapping: dict[str, Any] = {}
        built[id(node)] = mapping
        for key, value in node.value:  # keys once: an audit holds thousands of mappings
            mapping[sys.intern(key.value)] = _build(value, loader, dates, built)
        return mapping
    if isinstance(node, SequenceNode):
        items: list[Any] = []
        built[id(node)] = items
        items.extend(_build(item, loader, dates, built) for item in node.value)
        return items
    if node.tag == f"{_TAG}str" or (not dates and node.tag == _DATE_TAG):
        value = node.value
    else:
        value = loader.construct_object(node, deep=True)
    built[id(node)] = value
    return value


def parse_yaml_fields(
    text: str, keys: tuple[str, ...], *, source: str = "YAML text", dates: bool = True
) -> dict[str, Any] | None:
    """`keys` of `parse_yaml(text)` (None when not a mapping), once per text in a steady scope.

    The values are shared: never change them. An audit checks four fields of each committed
    change request against its runs; keeping the whole parse for that was ≈ 2 KB a change.
    `load_yaml(..., fields=keys)` leaves them here when it reads the same text from the
    working tree, so the committed blob is not parsed again. Failures are not kept, so each
    caller's error names its own source.
    """
    return remembered(
        _fields_key(text, keys, dates),
        lambda: _picked(parse_yaml(text, source=source, dates=dates), keys),
    )


def _fields_key(text: str, keys: tuple[str, ...], dates: bool) -> tuple[object, ...]:
    # a digest of the text, not the text: the memo would keep every request's text
    return (
        "yaml-fields",
        hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(),
        keys,
        dates,
    )


def _picked(data: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return {k: data[k] for k in keys if k in data} if isinstance(data, dict) else None


def _untime(node: Node) -> None:
    """Turn implicit timestamps into text before building (`dates=False`)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MappingNode):
            stack += [n for pair in current.value for n in pair]
        elif isinstance(current, SequenceNode):
            stack += current.value
        elif current.tag == _DATE_TAG:
            current.tag = f"{_TAG}str"


def outside_problem(path: Path, root: Path) -> Problem | None:
    """Refuse a path outside root or through a symlink below it (checked without following).

    On strings (os.path), not pathlib: an audit asks it of every change request it reads.
    """
    absolute = os.path.abspath(path)
    base = os.path.abspath(root)
    inside = base.rstrip(os.sep) + os.sep
    if absolute != base and not absolute.startswith(inside):
        return Problem("outside the repository", str(path), "path", "name a file of the project")
    current = base
    for part in absolute[len(inside) :].split(os.sep) if absolute != base else ():
        current = os.path.join(current, part)
        if os.path.islink(current):
            return Problem(
                "is a symlink",
                current,
                "path",
                "replace the symlink by the real file: git must record what is approved and run",
            )
    return None


def read_text(path: Path, *, what: str = "file", root: Path | None = None) -> str:
    """A project file's text: bounded, UTF-8, inside `root` and not through a symlink."""
    if root is not None and (refused := outside_problem(path, root)):
        raise OpsledgerError(refused)
    try:
        try:
            found = os.stat(path)  # one stat: is_file() and then stat() were two
        except ValueError:  # a NUL in the name: no such file, as is_file() said
            found = None
        except OSError as exc:  # what is_file() took for "no file"; anything else raises
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
                raise
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            raise OpsledgerError(Problem(f"{what} not found", str(path), fix="check the path"))
        if found.st_size > MAX_BYTES:
            raise OpsledgerError(
                Problem(
                    f"the {what} is larger than {MAX_BYTES} bytes",
                    str(path),
                    "size",
                    "keep it small: split it or remove what is not needed",
                )
            )
        with open(path, "rb") as handle:
            # the size stat gave, and one byte to see a file that grew since: read(MAX_BYTES
            # + 1) allocated (and unmapped) a megabyte for each of the files an audit reads
            raw = handle.read(found.st_size + 1)
            if len(raw) > found.st_size:
                raw += handle.read(MAX_BYTES + 1 - len(raw))
    except OSError as exc:
        raise OpsledgerError(
            Problem(f"cannot read the {what}: {exc.strerror}", str(path), fix="check the path")
        ) from None
    if len(raw) > MAX_BYTES:
        raise OpsledgerError(
            Problem(
                f"the {what} is larger than {MAX_BYTES} bytes", str(path), "size", "keep it small"
            )
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OpsledgerError(
            Problem(
                f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                str(path),
                "encoding",
                "save the file as UTF-8",
            )
        ) from None


def load_yaml(
    path: Path,
    *,
    expect: type = dict,
    what: str = "file",
    root: Path | None = None,
    dates: bool = True,
    fields: tuple[str, ...] = (),
) -> Any:
    """Read a YAML file with every check above; a wrong top-level type says what to write.

    `fields`: these keys of the text's parse are left for `parse_yaml_fields` of the same text
    (inside `steady_tree()`; the caller only reads the result).

    Example:
        load_yaml(Path("changes/CHG-00xx/CHG-0001/change.yml"), what="change", root=project.root)
    """
    text = read_text(path, what=what, root=root)
    data = parse_yaml(text, source=str(path), dates=dates)
    if fields and (memo := steady_memo()) is not None:
        memo.setdefault(_fields_key(text, fields, dates), _picked(data, fields))
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


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object refusing a duplicate key.

    Each key is kept once (sys.intern): json shares keys within one document only, and an
    audit holds thousands of run records.
    """
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {shown(key, 40)}")
        data[sys.intern(key)] = value
    return data


def load_json(path: Path, *, what: str = "record", root: Path | None = None) -> Any:
    """Read a JSON file (run and inspection records) with the same bounds and duplicate check."""
    text = read_text(path, what=what, root=root)
    try:
        return json.loads(text, object_pairs_hook=unique_pairs)
    except (ValueError, RecursionError) as exc:
        raise OpsledgerError(
            Problem(
                f"invalid JSON: {one_line(str(exc), 80)}",
                str(path),
                "JSON",
                "restore the file from git",
            )
        ) from None


def plain(value: Any) -> Any:
    """Dates turned into ISO 8601 text, recursively: data a JSON Schema can judge."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value
