"""ansible.builtin's routing table parsed by section (ansibleroutes.py) is the whole parse.

Compared on the installed ansible-core's file, on generated routing tables, and by what
Ansible's plugin loader resolves with and without it; text it cannot split surely is parsed
whole by Ansible's own function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import opsledger
from opsledger.ansibleroutes import _base_load, sectioned, split_sections, use_sectioned_routing


def _deep(value: Any) -> Any:
    """Every section parsed, as plain dicts."""
    if isinstance(value, Mapping):
        return {k: _deep(v) for k, v in value.items()}
    return value


def _installed() -> str:
    import ansible

    return (Path(ansible.__file__).parent / "config" / "ansible_builtin_runtime.yml").read_text()


def test_the_installed_routing_table_parsed_by_section_is_the_whole_parse():
    text = _installed()
    routing = sectioned(text, _base_load)
    assert routing is not None  # the installed file is split: the cold read pays no 65 ms
    assert isinstance(routing["plugin_routing"], Mapping)
    assert len(routing["plugin_routing"]) > 10  # split by plugin type too
    assert _deep(routing) == yaml.load(text, Loader=yaml.CBaseLoader)


def test_ansibles_hook_gives_the_same_table_and_other_collections_are_untouched():
    from ansible.utils.collection_loader import _collection_finder, _collection_meta

    use_sectioned_routing()
    use_sectioned_routing()  # idempotent
    hook = _collection_finder._meta_yml_to_dict
    raw = _installed().encode()
    builtin = hook(raw, ("ansible.builtin", "runtime.yml"))
    assert not isinstance(builtin, dict)  # sectioned
    assert _deep(builtin) == _collection_meta._meta_yml_to_dict(raw, ("x", "y"))
    other = b"plugin_routing:\n  modules:\n    a: {redirect: b.c.d}\n"
    assert hook(other, ("community.general", "runtime.yml")) == {
        "plugin_routing": {"modules": {"a": {"redirect": "b.c.d"}}}
    }


@pytest.mark.parametrize(
    "text",
    [
        "a: &x {b: c}\nd: *x\n",  # anchors and aliases across sections
        "a:\n\tb: c\n",  # a tab
        "a:\n  b: c\na:\n  d: e\n",  # a key twice
        "junk\na: 1\n",  # text before the first key
        "a: 1\n---\nb: 2\n",  # two documents
        "'a': 1\n",  # a quoted key
        "a: {b: c,\nd: e}\n",  # a flow mapping over two lines
        "plugin_routing:\n  modules:\n    x: {}\n a: b\n",  # indented less than its section
        'a:\n  b: "x\nc:\n  y"\n',  # a quoted scalar whose next line looks like a section
        "a:\n  b: 'x\nc:\n  y'\n",
        'plugin_routing:\n  modules:\n    m: "x\n  lookup:\n    y"\n',
        "a:\n  b: [x,\nc:\n  y]\n",  # a flow sequence, likewise
        "",
    ],
)
def test_text_it_cannot_split_surely_is_parsed_whole(text):
    from ansible.utils.collection_loader import _collection_finder, _collection_meta

    assert sectioned(text, _base_load) is None
    use_sectioned_routing()
    hook = _collection_finder._meta_yml_to_dict
    try:
        whole = _collection_meta._meta_yml_to_dict(text.encode(), ("ansible.builtin", "x"))
    except Exception as exc:  # the same refusal either way
        with pytest.raises(type(exc)):
            hook(text.encode(), ("ansible.builtin", "runtime.yml"))
        return
    assert hook(text.encode(), ("ansible.builtin", "runtime.yml")) == whole


NAMES = st.sampled_from(["modules", "filter", "lookup", "import_redirection", "a_b", "x1"])
LEAVES = st.dictionaries(
    st.sampled_from(["ping", "ec2", "copy", "a.b", "x-y", "# not a comment"]),
    st.dictionaries(
        st.sampled_from(["redirect", "tombstone", "deprecation"]),
        st.sampled_from(["ns.coll.x", "", "2.0", "yes", "'q'", "a: b", "x\ny", "- z", "null"]),
        max_size=2,
    ),
    max_size=3,
)
ROUTING = st.dictionaries(
    NAMES | st.just("plugin_routing"),
    LEAVES | st.dictionaries(NAMES, LEAVES, max_size=3) | st.sampled_from(["", "1.2", None]),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(ROUTING, st.sampled_from(["", "# a comment\n", "\n"]), st.booleans())
def test_generated_routing_tables_parse_by_section_as_they_parse_whole(data, gap, flow):
    """Whatever the dump (block or flow style, comments and blank lines between entries),
    the sectioned table is None or exactly the whole parse."""
    text = yaml.safe_dump(data, default_flow_style=flow if flow else False, sort_keys=False)
    text = text.replace("\n  ", "\n" + gap + "  ") if gap else text
    routing = sectioned(text, _base_load)
    if routing is not None:
        assert _deep(routing) == yaml.load(text, Loader=yaml.CBaseLoader)


def test_the_split_names_each_section_with_its_own_lines():
    text = "# head\nplugin_routing:\n  modules:\n    a: {}\n\n  filter: {}\nother:\n  b: c\n"
    assert split_sections(text, 0) == {
        "plugin_routing": "plugin_routing:\n  modules:\n    a: {}\n\n  filter: {}\n",
        "other": "other:\n  b: c\n",
    }
    body = "  modules:\n    a: {}\n\n  filter:\n    b: {}\n"
    assert list(split_sections(body, 2) or {}) == ["modules", "filter"]
    assert split_sections("a: {}\n", 0) is None  # a value on the key's line: not split


RESOLVE = """
import json, sys
if sys.argv[1] == "sectioned":
    from opsledger.ansibleroutes import use_sectioned_routing
    use_sectioned_routing()
from ansible.plugins.loader import filter_loader, init_plugin_loader, lookup_loader, module_loader
init_plugin_loader()
out = {}
for loader, names in ((module_loader, ["ping", "ansible.builtin.copy", "ec2", "docker_container",
                                       "include", "win_ping", "no_such_module"]),
                      (lookup_loader, ["file", "hashi_vault"]), (filter_loader, ["ipaddr"])):
    for name in names:
        ctx = loader.find_plugin_with_context(name)
        out[f"{loader.type}:{name}"] = [ctx.resolved, ctx.plugin_resolved_name, ctx.redirect_list,
                                        ctx.removal_date, ctx.removal_version]
print(json.dumps(out, default=str))
"""


def test_ansible_resolves_plugins_the_same_with_the_sectioned_table():
    env = {**os.environ, "PYTHONPATH": str(Path(opsledger.__file__).parents[1])}

    def resolve(mode: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", RESOLVE, mode], env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    whole, by_section = resolve("whole"), resolve("sectioned")
    assert by_section == whole
    assert whole["modules:docker_container"][0]  # resolved, through a redirect
    assert whole["modules:docker_container"][2][-1] == "community.docker.docker_container"
