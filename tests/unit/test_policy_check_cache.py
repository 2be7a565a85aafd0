"""A passing policy check kept between commands (policycheck.py): only a pass, keyed by the
content of what it read, and never a reason to judge by rules other than the files'."""

from __future__ import annotations

import json
import subprocess

import pytest

import opsledger.policycheck as policycheck
from opsledger.errors import OpsledgerError
from opsledger.localcache import cache_file

from .test_policy import edit
from .test_policy import project as policy_project  # noqa: F401 - the fixture


@pytest.fixture
def project(policy_project, monkeypatch):  # noqa: F811
    """The shipped policies in a git clone (the cache's key lives in the git directory), and
    the calls of `policy_check`; each _new_command stands for a new process."""
    subprocess.run(["git", "init", "-q", str(policy_project.root)], check=True)
    # Set by the first inventory read of a process (inventory.py): here, before the first.
    monkeypatch.setenv("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error")
    calls: list[int] = []
    real = policycheck.policy_check
    monkeypatch.setattr(policycheck, "policy_check", lambda p: calls.append(1) or real(p))
    return policy_project, calls


def _new_command(project):
    policycheck._PASSED.clear()  # what a new process starts with
    return policycheck.require_policies(project)


def test_a_pass_is_kept_for_the_next_command(project):
    project, calls = project
    first = _new_command(project)
    again = _new_command(project)
    assert calls == [1]
    assert again.hash == first.hash and again.people == first.people


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("sla.yml", lambda d: d["priorities"]["P4"].update(resolution_hours=999)),
        ("people.yml", lambda d: d["people"][0].update(name="Someone Else")),
    ],
)
def test_an_edited_policy_is_checked_again_and_its_rules_are_the_new_ones(project, name, change):
    project, calls = project
    first = _new_command(project)
    edit(project, name, change)
    after = _new_command(project)
    assert calls == [1, 1]
    assert after.hash != first.hash
    kept = _new_command(project)  # the new content's pass is kept too
    assert calls == [1, 1] and kept.hash == after.hash


def test_a_kept_pass_never_covers_a_policy_that_fails_now(project):
    project, calls = project
    _new_command(project)
    edit(project, "windows.yml", lambda d: d["environments"].pop("lab"))
    for _ in range(2):  # a failing check is never kept: refused every time
        with pytest.raises(OpsledgerError, match="policy check fails"):
            _new_command(project)
    assert calls == [1, 1, 1]


def test_an_inventory_edit_or_another_environment_is_checked_again(project, monkeypatch):
    project, calls = project
    _new_command(project)
    hosts = project.root / "inventories" / "lab" / "hosts.yml"
    hosts.write_text(hosts.read_text() + "\n")
    _new_command(project)
    monkeypatch.setenv("OPSLEDGER_TEST_SOMETHING", "1")  # notification URLs come from here
    _new_command(project)
    assert calls == [1, 1, 1]


def test_a_forged_pass_is_ignored(project):
    """An entry written by hand for failing content (the digest it would have) does not
    verify under the clone's key: the check runs and refuses."""
    project, _ = project
    _new_command(project)
    edit(project, "windows.yml", lambda d: d["environments"].pop("lab"))
    stamp = policycheck._inputs_stamp(project)
    digest = policycheck._inputs_digest(project, stamp)
    path = cache_file(project, "policycheck")
    mac, _, body = path.read_bytes().partition(b"\n")
    entries = json.loads(body)
    entries["passed"].append(digest)
    path.write_bytes(mac + b"\n" + json.dumps(entries, separators=(",", ":")).encode())
    with pytest.raises(OpsledgerError, match="policy check fails"):
        _new_command(project)


def test_a_policy_edit_changes_the_decision_with_every_cache_warm(repo, monkeypatch):
    """decide, with the inventory's shape and the policy check's pass kept from earlier
    commands: a committed policy edit denies the change that was allowed (the rules are read
    from the files, and they are part of the content the approval bound), and rules that no
    longer check refuse every decision."""
    import opsledger.inventory as inventory
    from opsledger.decide import decide
    from opsledger.gitrepo import commit_paths
    from opsledger.signoff import approve_change

    from .test_decide import INSIDE, failed

    project, change_id, _ = repo
    approve_change(project, change_id, person="bob")
    monkeypatch.setenv("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error")

    def new_command():
        policycheck._PASSED.clear()
        inventory._CACHE.clear()
        return decide(project, change_id, now=INSIDE)

    assert new_command().allowed
    assert new_command().allowed  # warm: both kept
    kept = {p.name for p in (project.state_dir / "cache").iterdir()}
    assert {"inventory.json", "policycheck.json"} <= kept
    edit(project, "sla.yml", lambda d: d["priorities"]["P4"].update(resolution_hours=999))
    sla = project.root / "policies" / "sla.yml"
    commit_paths(project.root, [sla], "Slower P4", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    decision = new_command()
    assert not decision.allowed
    assert "policies/sla.yml" in failed(decision)["approvals"]
    edit(project, "windows.yml", lambda d: d["environments"].pop("lab"))
    with pytest.raises(OpsledgerError, match="policy check fails"):
        new_command()
