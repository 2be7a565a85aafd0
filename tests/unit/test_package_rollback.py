"""Upgrades reversible (#19.2), end to end without the lab: apply runs a patch that hands its
package difference back (set_stats -> the run record's `maintenance`), the run fails, and the
shipped package-rollback runbook restores the previous versions from the kept .debs — real
ansible-playbook, real dpkg, in a private dpkg root (`opsledger_packages_root`) on this machine,
whose own packages are never touched. The lab proof with a real Debian package is
tests/integration/test_workflow_patch.py."""

from __future__ import annotations

import sys

import pytest
import yaml

from opsledger.apply import apply_change
from opsledger.gitrepo import commit_paths, git
from opsledger.records import read_runs
from opsledger.signoff import approve_change, request_change

from .conftest import ALICE_ENV, copy_project, open_window
from .test_packages_module import build_deb, dpkg, packages, version_file

# A patch of the test's dpkg root, built like os-patch: snapshot and keep, change, snapshot
# again whatever happened, hand the difference back. Its rollback is the shipped runbook.
PATCH_RUNBOOK = """\
---
description: Patch a private dpkg root like os-patch does (tests of the rollback path).
playbook: playbook.yml
parameters:
  type: object
  additionalProperties: false
  properties:
    fail: {type: boolean}
    lose: {type: string}
change_types: [normal]
risk: low
check_mode: false
roles: []
verification: {suites: []}
rollback: package-rollback
serial: 1
max_fail_percentage: 0
timeout: 600
"""
PATCH_PLAYBOOK = """\
---
- name: Patch the private root
  hosts: all
  serial: 1
  max_fail_percentage: 0
  gather_facts: false
  vars:
    run: "{{ lookup('ansible.builtin.env', 'OPSLEDGER_RUN') }}"
  tasks:
    - name: Snapshot and keep the versions about to change
      opsledger_packages:
        action: before
        run: "{{ run }}"
        root: "{{ opsledger_packages_root }}"
        packages: {opsl-demo: "1.0", opsl-gone: "1.0"}
    - name: Update, then snapshot again
      block:
        - name: Install the new versions and remove one package
          ansible.builtin.shell: >-
            dpkg --root {{ opsledger_packages_root }} -i {{ new_debs | join(' ') }}
            && dpkg --root {{ opsledger_packages_root }} --remove opsl-gone
          changed_when: true
      always:
        - name: Snapshot again
          opsledger_packages:
            action: after
            run: "{{ run }}"
            root: "{{ opsledger_packages_root }}"
          register: after
        - name: Hand the difference back
          ansible.builtin.set_stats:
            data:
              opsledger_maintenance:
                packages: "{{ {inventory_hostname: after.diff} }}"
                bogus: not a mapping
    - name: Lose a kept .deb, as a cleaned folder would
      ansible.builtin.file:
        path: >-
          {{ opsledger_packages_root }}/var/lib/opsledger/packages/debs/{{
          opsledger_params.lose }}_1.0_all.deb
        state: absent
      when: opsledger_params.lose is defined
    - name: Fail when asked, as a failed update would
      ansible.builtin.fail: {msg: the update broke the service}
      when: opsledger_params.fail | default(false)
"""


@pytest.fixture
def patched(tmp_path):
    """A git repo of the project with a `local` environment whose one host `here` keeps its
    packages in a private dpkg root, and a `fake-patch` runbook rolled back by package-rollback.
    Returns (project, root, request)."""
    root = tmp_path / "root"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/cache/apt/archives"):
        (root / sub).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "var/lib/dpkg/available").touch()
    debs = tmp_path / "debs"
    debs.mkdir()
    olds = [build_deb(debs, n, "1.0") for n in ("opsl-demo", "opsl-gone")]
    for deb in olds:
        (root / "var/cache/apt/archives" / deb.name).write_bytes(deb.read_bytes())
    dpkg(root, "-i", *map(str, olds))
    news = [build_deb(debs, "opsl-demo", "2.0"), build_deb(debs, "opsl-new", "1.0")]

    project = copy_project(tmp_path / "p")
    top = project.root
    inventory = top / "inventories" / "local"
    inventory.mkdir()
    host = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "opsledger_packages_root": str(root),
        "new_debs": [str(d) for d in news],
    }
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"app": {"hosts": {"here": host}}}}})
    )
    windows = top / "policies" / "windows.yml"
    data = yaml.safe_load(windows.read_text())
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    data["environments"]["local"] = {
        "windows": [{"days": every_day, "start": "00:00", "end": "24:00", "timezone": "UTC"}]
    }
    windows.write_text(yaml.safe_dump(data, sort_keys=False))
    (top / "runbooks" / "fake-patch").mkdir()
    (top / "runbooks" / "fake-patch" / "runbook.yml").write_text(PATCH_RUNBOOK)
    (top / "runbooks" / "fake-patch" / "playbook.yml").write_text(PATCH_PLAYBOOK)
    (top / ".gitignore").write_text(".opsledger/\n")
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "Initial state", env=ALICE_ENV)
    git(top, "config", "user.name", "CI")
    git(top, "config", "user.email", "ci@example.org")

    def request(params):
        start, end = open_window()
        change, _ = request_change(
            project,
            title="Patch the private root",
            runbook="fake-patch",
            requested_by="alice",
            reason="Exercise the package rollback path",
            environment="local",
            targets="here",
            params=params,
            window_start=start,
            window_end=end,
        )
        # the requester's unsigned statement counts where no signature is required: committed
        # by the requester as author and committer
        commit_paths(
            top,
            [change.file.parent],
            f"Request {change.id}",
            name="Alice Arnold",
            email="alice@example.org",
        )
        approve_change(project, change.id, person="bob")
        return change.id

    return project, root, request


def test_a_failed_patch_is_rolled_back_to_the_kept_versions_and_recorded(patched):
    project, root, request = patched
    change_id = request({"fail": True})
    result = apply_change(project, change_id, skip_verify=True)
    assert result.result == "rolled_back", result.record.rollback
    (record,) = read_runs(project).committed
    assert record.result == "rolled_back"
    patch = record.maintenance["packages"]["here"]
    assert patch["upgraded"] == [{"name": "opsl-demo", "from": "1.0", "to": "2.0"}]
    assert patch["installed"] == [{"name": "opsl-new", "version": "1.0"}]
    assert patch["removed"] == [{"name": "opsl-gone", "version": "1.0"}]
    assert "bogus" in record.maintenance["note"]  # handed back but not a section of ours
    back = record.rollback
    assert back["runbook"] == "package-rollback" and back["result"] == "success"
    restored = back["maintenance"]["restored"]["here"]
    assert restored["patch_run"] == record.runner["run"]
    assert restored["restored"] == {"opsl-demo": "1.0", "opsl-gone": "1.0"}
    assert restored["removed"] == ["opsl-new"] and restored["failed"] == []
    assert packages.installed(str(root))[0] == {"opsl-demo": "1.0", "opsl-gone": "1.0"}
    assert version_file(root, "opsl-demo") == "1.0"


def test_a_version_that_cannot_be_restored_is_named_and_ends_rollback_failed(patched):
    project, root, request = patched
    change_id = request({"fail": True, "lose": "opsl-gone"})
    result = apply_change(project, change_id, skip_verify=True)
    assert result.result == "rollback_failed"
    (record,) = read_runs(project).committed
    assert record.result == "rollback_failed"
    back = record.rollback
    assert back["result"] == "failed" and back["run_status"] == "failed"
    restored = back["maintenance"]["restored"]["here"]
    (failed,) = restored["failed"]
    assert failed["name"] == "opsl-gone" and failed["version"] == "1.0"
    assert "no .deb of it was kept" in failed["why"]
    assert restored["restored"] == {"opsl-demo": "1.0"}  # the rest is put back all the same
    assert packages.installed(str(root))[0] == {"opsl-demo": "1.0"}
