"""Ansible's routing table for `ansible.builtin`, parsed one section at a time.

The first `ansible.*` import that passes ansible-core's collection finder parses
`ansible/config/ansible_builtin_runtime.yml` (376 KB, ~9,700 lines saying where each module
and plugin moved to a collection): about 65 ms of CPU, most of what reading an inventory with
Ansible costs beyond importing it, although the inventory parse looks up only the
`import_redirection` section and the `inventory` plugin type. ansible-core documents
`_meta_yml_to_dict` as the hook to replace that parse ("may be monkeypatched ... content_id
... to allow other implementations to cache the output"). `use_sectioned_routing()` replaces
it, for `ansible.builtin` only, with a mapping that parses each top-level section, and each
plugin type under `plugin_routing`, when first looked up, with the loader Ansible uses
(`CBaseLoader`: every scalar a string). Nothing is cached on disk: each process parses what it
looks up, from the installed file.

The text is split only where the split is sure: keys at the section's indentation written
plainly as `name:`, each once; no tab, carriage return, anchor, alias or tag anywhere, no
quoted scalar or flow collection going on past its line (checking costs ~1 ms); each
piece must parse into exactly its own key (a ValueError when first looked up, where the whole
parse would have refused the file when loaded). Otherwise the whole file is parsed as before.
tests/unit/test_ansibleroutes.py checks the sectioned mapping equals the whole parse for the
installed ansible-core.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):[ ]*(?:#[^\n]*)?")
_UNSURE_CHARACTERS = "\t\r&*!%"  # tabs, CRLF, anchors, aliases, tags, directives
_BUILTIN = "ansible.builtin"
# A line holding a quote or a flow bracket, and what such a line may hold: quoted scalars
# closed on it, then a comment.
_QUOTE_OR_BRACKET = re.compile(r"[\"'\[\]{}]")
_ONE_LINE_QUOTED = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\n]|'')*'")
_COMMENT = re.compile(r"(?:^|[ ])#.*")


class _Sections(Mapping[str, Any]):
    """A YAML block mapping whose values are parsed when first looked up."""

    def __init__(self, chunks: dict[str, str], parse: Callable[[str, str], Any]):
        self._chunks = chunks
        self._parse = parse
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._parse(key, self._chunks[key])  # KeyError: not there
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def __repr__(self) -> str:
        return f"_Sections({sorted(self._chunks)})"


def split_sections(text: str, indent: int) -> dict[str, str] | None:
    """Each key at `indent` spaces with the lines below it (the key line first), or None.

    None when unsure: a line indented less than `indent` (comments and blank lines aside),
    a line at `indent` that is not a plain `name:` key, a key written twice, text before the
    first key, no key at all.
    """
    starts: list[tuple[int, str]] = []
    # Lines anchored on the newline before them: `^` with re.MULTILINE is 5x slower here.
    shallow = re.compile(rf"\n {{0,{indent}}}[^ \n#][^\n]*")
    for line in shallow.finditer("\n" + text):
        found = line.group()[1:]
        key = _KEY_LINE.fullmatch(found[indent:]) if found[:indent] == " " * indent else None
        if key is None or any(name == key[1] for _, name in starts):
            return None
        starts.append((line.start(), key[1]))
    if not starts:
        return None
    head = text[: starts[0][0]]
    if any(line.strip() and not line.lstrip().startswith("#") for line in head.split("\n")):
        return None
    ends = [start for start, _ in starts[1:]] + [len(text)]
    return {name: text[start:end] for (start, name), end in zip(starts, ends, strict=True)}


def sectioned(text: str, load: Callable[[str], Any]) -> Mapping[str, Any] | None:
    """The routing table as a mapping parsed section by section, or None (parse it whole).

    `load` parses one YAML text (Ansible's BaseLoader); `plugin_routing` is split once more,
    by plugin type.
    """
    if any(c in text for c in _UNSURE_CHARACTERS) or text.startswith(("---", "...")):
        return None
    if "\n---" in text or "\n..." in text:  # a second document, or the end of one
        return None
    if re.search(r"\n [^ \n]", text):  # a line indented by one: no section's own line
        return None
    if _spans_lines(text):
        return None
    top = split_sections(text, 0)
    if top is None:
        return None

    def one(key: str, chunk: str) -> Any:
        data = load(chunk)
        if not isinstance(data, dict) or list(data) != [key]:
            raise ValueError(f"routing section {key!r} did not parse on its own")
        return data[key]

    def section(key: str, chunk: str) -> Any:
        if key == "plugin_routing":
            body = chunk.split("\n", 1)[1] if "\n" in chunk else ""
            kinds = split_sections(body, 2)
            if kinds is not None:
                return _Sections(kinds, one)
        return one(key, chunk)

    return _Sections(top, section)


def _spans_lines(text: str) -> bool:
    """Whether a quoted scalar or a flow collection may go on past its line.

    Its next lines could then look like a section's `name:` line: the split would give that
    name a section the whole parse does not have (`b: "x` / `c:` / `  y"` is `b: "x c: y"`).
    """
    end = -1
    for found in _QUOTE_OR_BRACKET.finditer(text):  # a few lines: a search over each line
        if found.start() < end:  # is quadratic in its length, 80 ms for this file
            continue
        start = text.rfind("\n", 0, found.start()) + 1
        end = text.find("\n", found.start())
        end = len(text) if end < 0 else end
        rest = _COMMENT.sub("", _ONE_LINE_QUOTED.sub("", text[start:end]))
        if _QUOTE_OR_BRACKET.search(rest):
            return True
    return False


def use_sectioned_routing() -> None:
    """Have ansible-core parse `ansible.builtin`'s routing table section by section.

    Call before the collection finder loads `ansible.builtin` (init_plugin_loader and the
    first inventory parse); other collections' runtime.yml, and a table it cannot split
    surely, are parsed whole by Ansible's own function. Idempotent.
    """
    from ansible.utils.collection_loader import _collection_finder

    original = _collection_finder._meta_yml_to_dict
    if original is None or getattr(original, "_opsledger_sectioned", False):
        return

    def meta_yml_to_dict(yaml_string_data: bytes | str, content_id: Any) -> Any:
        if content_id == (_BUILTIN, "runtime.yml"):
            text = (
                yaml_string_data.decode("utf-8", "strict")
                if isinstance(yaml_string_data, bytes)
                else yaml_string_data
            )
            routing = sectioned(text, _base_load)
            if routing is not None:
                return routing
        return original(yaml_string_data, content_id)

    meta_yml_to_dict._opsledger_sectioned = True  # type: ignore[attr-defined]
    _collection_finder._meta_yml_to_dict = meta_yml_to_dict


def _base_load(text: str) -> Any:
    """YAML as ansible-core reads collection metadata: BaseLoader, libyaml's when present."""
    import yaml

    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    return yaml.load(text, Loader=loader)  # BaseLoader builds strings only
