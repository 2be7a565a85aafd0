"""Job logs kept with the run record: every task on every host of a real apply (this machine,
ansible_connection=local), compressed, committed, sealed by the record's sha256, and read back
by `change show --log` months later. The Ansible output of a run used to be thrown away."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

from opsledger.gitrepo import commit_paths, git
from opsledger.layout import stored_file
from opsledger.records import read_runs
from opsledger.signoff import approve_change


def _cli(project, *args):
    return subprocess.run(
        [sys.executable, "-c", "from opsledger.cli import main; main()", *args],
        env={**os.environ, "OPSLEDGER_PROJECT": str(project.root), "OPSLEDGER_PERSON": "ci"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_task_of_a_run_is_kept_with_its_record_and_shown(local_repo):
    project, request = local_repo
    change_id = request(params={"steps": 2, "fail": True})
    approve_change(project, change_id, person="bob")
    done = _cli(project, "apply", change_id, "--skip-verify")
    assert done.returncode == 1, done.stdout + done.stderr
    (record,) = read_runs(project).committed
    assert record.log["tasks"] >= 7 and record.log["hosts"] == ["lab-db1"]
    runs = stored_file(project.root, change_id, "runs")
    log = f"{runs}/{record.log['file']}"
    assert record.log["file"].endswith(".log.jsonl.gz")
    # Committed in the same commit as the record.
    files = git(project.root, "show", "--name-only", "--format=", "HEAD").stdout.split()
    assert log in files and f"{runs}/{log.split('/')[-1][:16]}.json" in files

    entries = [json.loads(line) for line in gzip.decompress((project.root / log).read_bytes())
               .decode().splitlines()]  # fmt: skip
    tasks = [e for e in entries if "host" in e]
    steps = [e for e in tasks if e["task"] == "Take the steps" and "item" in e]
    assert [e["item"] for e in steps] == ["1", "2"] and all(e["changed"] for e in steps)
    failed = next(e for e in tasks if e["status"] == "failed")
    assert failed["task"] == "Fail when asked" and failed["message"] == "asked to fail"
    assert all(e["start"] for e in tasks)
    whole = [e for e in tasks if "item" not in e]
    assert all(e["end"] and isinstance(e["duration_s"], float) for e in whole)
    assert any(e.get("phase") == "failed" for e in entries)

    shown = _cli(project, "change", "show", change_id, "--log")
    assert shown.returncode == 0, shown.stderr
    assert "sha256 matches the record" in shown.stdout
    lines = shown.stdout.splitlines()
    assert any(
        "lab-db1" in line and "failed" in line and "Fail when asked" in line for line in lines
    )
    assert any("asked to fail" in line for line in lines)
    as_json = json.loads(_cli(project, "change", "show", change_id, "--log", "--json").stdout)
    assert as_json[0]["verified"] is True and as_json[0]["entries"] == entries

    # An edited log no longer matches the record that seals it.
    (project.root / log).write_bytes(gzip.compress(b'{"host": "lab-db1", "task": "x"}\n'))
    commit_paths(project.root, [project.root / log], "Tidy the log", name="Mallory",
                 email="mallory@example.org")  # fmt: skip
    tampered = _cli(project, "change", "show", change_id, "--log")
    assert "SHA256 DIFFERS FROM THE RECORD" in tampered.stdout


def test_a_change_without_a_logged_run_says_so(local_repo):
    project, request = local_repo
    change_id = request(params={"steps": 1})
    shown = _cli(project, "change", "show", change_id, "--log")
    assert shown.returncode == 2
    assert f"{change_id} has no committed run with a job log" in shown.stderr
    assert "Traceback" not in shown.stderr
