"""What an audit keeps while it checks thousands of change requests is keyed by what it depends on.

Each memo here is asked twice with inputs that differ in what its key must hold (another schema
text, an edited runbook, another host pattern or inventory): a key that left that out would
answer the second question with the first one's verdict, and these tests would fail.
"""

import dataclasses
import json
import shutil

import pytest
import yaml

from opsledger import schema as schema_module
from opsledger.errors import OpsledgerError
from opsledger.inventory import load_inventory
from opsledger.project import Project
from opsledger.runbooks import load_runbook
from opsledger.steady import steady_tree

from ..conftest import REPO_ROOT
from .test_inventory import HOSTS  # the three-host inventory of its tests


def _texts(monkeypatch, text: str) -> None:
    """Make the published schema `probe` this text (as another release would ship it)."""
    monkeypatch.setattr(schema_module, "schema_text", lambda name: text)
    monkeypatch.setattr(schema_module, "schema", lambda name: json.loads(text))


def _probe(max_length: int) -> str:
    doc = {"type": "object", "properties": {"title": {"type": "string", "maxLength": max_length}}}
    return json.dumps(doc)


def test_a_schemas_fast_path_is_kept_by_its_text_not_by_its_name(monkeypatch):
    data = {"title": "Raise work_mem"}
    _texts(monkeypatch, _probe(120))
    assert schema_module.named_problems(data, "probe", "c.yml") == []
    _texts(monkeypatch, _probe(5))  # same name, another text: judged by the new text
    (problem,) = schema_module.named_problems(data, "probe", "c.yml")
    assert problem.field == "title" and "at most 5" in problem.message
    _texts(monkeypatch, _probe(120))
    assert schema_module.named_problems(data, "probe", "c.yml") == []


def _runbooks(tmp_path) -> Project:
    root = tmp_path / "p"
    for folder in ("runbooks", "roles", "tests/infra"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    shutil.copy(REPO_ROOT / "site.yml", root / "site.yml")
    (root / "ansible.cfg").write_text("[defaults]\n")
    (root / "inventories").mkdir()
    return Project(root)


def test_an_edited_runbooks_parameter_schema_judges_the_params_again(tmp_path):
    project = _runbooks(tmp_path)
    params = {"tags": ["postgresql"]}
    assert load_runbook(project, "converge").param_problems(params, "c.yml") == []
    path = project.root / "runbooks" / "converge" / "runbook.yml"
    data = yaml.safe_load(path.read_text())
    data["parameters"]["properties"]["tags"]["items"]["enum"].remove("postgresql")
    path.write_text(yaml.safe_dump(data))
    (problem,) = load_runbook(project, "converge").param_problems(params, "c.yml")
    assert problem.field == "params.tags[0]"


def test_an_inventory_matches_each_pattern_for_itself(make_project):
    project = make_project(HOSTS)
    with steady_tree():  # as an audit: the inventory loads once, its matches are kept
        inv = load_inventory(project.inventory_file())
        assert [h.name for h in inv.match("db")] == ["db1", "db2"]
        assert [h.name for h in inv.match("app")] == ["app1"]
        assert [h.name for h in inv.match("all:!db")] == ["app1"]
        for _ in range(2):  # a refusal is kept as a refusal, raised each time
            with pytest.raises(OpsledgerError, match="nope"):
                inv.match("nope")
        assert [h.name for h in inv.match("db")] == ["db1", "db2"]


def test_an_inventory_copied_with_other_hosts_matches_by_them(make_project):
    inv = load_inventory(make_project(HOSTS, name="one").inventory_file())
    other = load_inventory(make_project(HOSTS.replace("db2", "db9"), name="two").inventory_file())
    assert [h.name for h in inv.match("db")] == ["db1", "db2"]
    copied = dataclasses.replace(inv, hosts=other.hosts, shape=other.shape)
    assert [h.name for h in copied.match("db")] == ["db1", "db9"]


def test_another_inventory_matches_by_its_own_hosts(make_project):
    first = make_project(HOSTS, name="one")
    second = make_project(HOSTS.replace("db2", "db9"), name="two")
    with steady_tree():
        assert [h.name for h in load_inventory(first.inventory_file()).match("db")] == [
            "db1",
            "db2",
        ]
        assert [h.name for h in load_inventory(second.inventory_file()).match("db")] == [
            "db1",
            "db9",
        ]
