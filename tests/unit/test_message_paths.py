"""Every path under changes/ a common command prints is one a person can open (issue 16 layout).

A change lives in its block (`changes/CHG-00xx/CHG-0001/`), while hashes, statements and
audits name its files by the flat-form key (`changes/CHG-0001/...`). A message that tells a
person which file to edit, or what to `git add`, must name the stored path: the key names a
folder that does not exist.
"""

from __future__ import annotations

import datetime as dt
import json
import re

from click.testing import CliRunner

from opsledger.cli import cli
from opsledger.gitrepo import git
from opsledger.layout import REQUEST, block_file, change_folder, stored_file

from .conftest import START

_PATH = re.compile(r"changes/[^\s:,;)('\"`]+")


def _paths(text: str) -> list[str]:
    return [p.rstrip(".") for p in _PATH.findall(text)]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_every_path_a_command_prints_exists(repo, monkeypatch):
    project, change_id, _ = repo
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    assert stored_file(project.root, change_id, REQUEST).count("/") == 3  # in its block
    late = (START + dt.timedelta(hours=3)).isoformat()
    outputs = {
        "decide (denied)": _run(["decide", change_id, "--at", late]),
        "approve (by the requester)": _run(["approve", change_id, "--as", "alice"]),
        "change show": _run(["change", "show", change_id]),
        "approve (bob)": _run(["approve", change_id, "--as", "bob"]),
    }
    request = change_folder(project.root, change_id, REQUEST)
    request.write_text(request.read_text().replace("targets: db", "targets: all"))
    git(project.root, "commit", "-qam", "Widen the targets")  # bob's approval is void now
    outputs["decide (approval void)"] = _run(["decide", change_id, "--at", late])
    outputs["change show (approval void)"] = _run(["change", "show", change_id])
    junk = change_folder(project.root, change_id, "approvals", "bob", "junk.yml")
    junk.write_text("not: a statement\n")
    git(project.root, "add", "--", str(junk))
    git(project.root, "commit", "-qm", "A file that is no statement")
    outputs["change show (no statement)"] = _run(["change", "show", change_id])
    request.write_text(request.read_text().replace("runbook: converge", "runbook: 7"))
    outputs["change validate (broken)"] = _run(["change", "validate", change_id])
    # plan refuses the broken request before any check run (no Ansible, no host reached)
    outputs["plan (broken)"] = _run(["plan", change_id, "--at", late])
    outputs["change new"] = _run(
        [
            "change", "new", "--title", "Restart chrony on the app hosts", "--runbook",
            "service-restart", "--type", "standard", "--targets", "app", "--param",
            "service=chrony", "--requested-by", "alice", "--reason", "chrony lost its sources",
            "--start", START.isoformat(),
        ]
    )  # fmt: skip
    named = {(c, p) for c, out in outputs.items() for p in _paths(out)}
    # the lines that named the flat-form key before the fix (the test would prove nothing else)
    assert {
        "decide (denied)",
        "approve (by the requester)",
        "decide (approval void)",
        "change show (approval void)",
        "change show (no statement)",
    } <= {c for c, _ in named}
    missing = sorted((c, p) for c, p in named if not (project.root / p).exists())
    assert not missing


def test_a_pr_check_names_an_invalid_change_by_its_folder(repo):
    from opsledger.ci import pr_check

    project, change_id, _ = repo
    request = change_folder(project.root, change_id, REQUEST)
    request.write_text(request.read_text().replace("runbook: converge", "runbook: 7"))
    git(project.root, "commit", "-qam", "Break the request")
    lines = pr_check(project, base="HEAD~2", with_plan=False).problem_lines()
    assert lines and all(line.startswith(stored_file(project.root, change_id)) for line in lines)


def test_the_schema_and_help_say_where_a_new_change_is_written():
    from importlib import resources

    schema = json.loads(
        resources.files("opsledger.schemas").joinpath("change.schema.json").read_text()
    )
    assert block_file("CHG-0001", REQUEST) in schema["title"]
    for args in (["change", "new"], ["approve"], ["change", "withdraw"], ["policy", "propose"]):
        shown = CliRunner().invoke(cli, [*args, "--help"]).output
        assert "changes/<block>/" in shown or "changes/POL-<block>/" in shown, args
