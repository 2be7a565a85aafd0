"""Schema validations remembered between commands (schema.passes_remembered,
localcache.schema_passes): only passes, keyed by the exact data and schema, never forged."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from opsledger.changes import validate_change
from opsledger.layout import change_folder
from opsledger.localcache import cache_file
from opsledger.schema import _digest, passes_remembered, problems, schema, schema_problems

from .test_cli import modules_of_a_run

# `multipleOf` is left to jsonschema by the fast path: passes of this schema are remembered
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$"},
        "size": {"type": "integer", "multipleOf": 1},
    },
    "additionalProperties": False,
}
FAST = {**SCHEMA, "properties": {**SCHEMA["properties"], "size": {"type": "integer"}}}


def test_a_pass_is_remembered_and_only_a_pass():
    with passes_remembered(set()) as passes:
        assert problems({"name": "alice", "size": 1}, SCHEMA, "f.yml") == []
        assert len(passes) == 1
        assert problems({"name": "alice\n", "size": 1}, SCHEMA, "f.yml")  # `$` is end of text
        assert problems({"name": "alice", "size": "1"}, SCHEMA, "f.yml")
        assert problems({"name": "alice", "extra": 1}, SCHEMA, "f.yml")
        assert len(passes) == 1
        assert schema_problems({"type": "object"}, "r.yml", "params") == []
        assert schema_problems({"type": 5}, "r.yml", "params")
        assert len(passes) == 2


def test_a_pass_of_the_fast_path_is_not_remembered():
    """The fast path decides a pass for sure, for less than the digest that would remember it
    (an audit validates thousands of changes); what it leaves to jsonschema is remembered."""
    with passes_remembered(set()) as passes:
        assert problems({"name": "alice", "size": 1}, FAST, "f.yml") == []
        assert problems({"name": "alice", "size": "1"}, FAST, "f.yml")
        assert passes == set()


def test_a_remembered_pass_covers_that_data_and_schema_only():
    with passes_remembered(set()) as passes:
        problems({"name": "alice", "size": 1}, SCHEMA, "f.yml")
        strict = {**SCHEMA, "required": ["missing"]}
        assert problems({"name": "alice", "size": 1}, strict, "f.yml")  # another schema
        assert problems({"name": "alice", "size": 1.5}, SCHEMA, "f.yml")  # 1 vs 1.5
        assert problems({"name": "alice", "size": True}, SCHEMA, "f.yml")  # bool is not 1
        assert len(passes) == 1


@pytest.mark.parametrize("data", [{1: "a"}, {"name": ("a",)}, {"when": __import__("datetime")}])
def test_data_json_would_rewrite_is_never_remembered(data):
    """An int key would be written as text and a tuple as a list: jsonschema tells them apart
    from what JSON writes, so such data is validated every time."""
    assert _digest(data, SCHEMA) is None


def _change_file(project, change_id):
    return change_folder(project.root, change_id) / "change.yml"


def test_an_edit_after_a_pass_is_validated_again(repo):
    project, change_id, _ = repo
    assert validate_change(project, change_id).ok
    assert cache_file(project, "schema-passes").is_file()
    path = _change_file(project, change_id)
    data = yaml.safe_load(path.read_text())
    data["surprise"] = 1
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = validate_change(project, change_id)
    assert not result.ok
    assert any("surprise" in p.message for p in result.problems)


def test_a_forged_pass_is_ignored(repo):
    """A digest written by hand for invalid data does not verify under the clone's key."""
    project, change_id, _ = repo
    assert validate_change(project, change_id).ok
    path = _change_file(project, change_id)
    data = yaml.safe_load(path.read_text())
    data["surprise"] = 1
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    kept = cache_file(project, "schema-passes")
    mac, _, body = kept.read_bytes().partition(b"\n")
    entries = json.loads(body)
    entries["passes"].append(_digest(json.loads(json.dumps(data)), schema("change")))
    kept.write_bytes(mac + b"\n" + json.dumps(entries).encode())
    assert not validate_change(project, change_id).ok


def test_a_warm_change_validate_imports_neither_jsonschema_nor_ansible(repo):
    """Cold (a fresh clone), the change, runbook (with its parameter schema) and policies take
    the fast schema paths (jsonschema only ever says what is wrong) and the lab's inventory is
    plain (plainshape.py); warm, what was kept answers."""
    project, change_id, _ = repo
    shutil.rmtree(project.root / ".opsledger" / "cache", ignore_errors=True)
    runs = [modules_of_a_run(project, "change", "validate", change_id) for _ in range(2)]
    for run, _ in runs:
        assert run.returncode == 0, run.stderr
        assert f"{change_id}: valid" in run.stdout
    cold, warm = (loaded for _, loaded in runs)
    assert not {m for m in cold if m.split(".")[0] in ("jsonschema", "ansible")}
    assert "opsledger.plainshape" in cold and "opsledger.plainshape" not in warm
    assert not {m for m in warm if m.split(".")[0] in ("jsonschema", "ansible")}


def test_an_inner_use_neither_loads_nor_saves_the_passes(repo, monkeypatch):
    """An audit validates every change inside one `schema_passes`: each inner use (one per
    change) loading and saving the cache again cost seconds at 5,000 changes (#16.4)."""
    import opsledger.localcache as localcache

    project, change_id, _ = repo
    calls = []
    for name in ("load_cache", "save_cache"):
        real = getattr(localcache, name)
        monkeypatch.setattr(
            localcache, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    with localcache.schema_passes(project):
        for _ in range(3):
            assert validate_change(project, change_id).ok
    assert calls.count("load_cache") == 1
    assert calls.count("save_cache") <= 1
