"""Change params reach Ansible as data it never templates (#14.1).

A runbook with a free-form text parameter is the dangerous case: passed as ordinary extra vars,
`"{{ lookup('pipe', ...) }}"` in a param runs on the controller during `plan` (check mode does
not stop lookups), before anyone approved anything. Here it runs for real on a local host.
"""

from __future__ import annotations

import datetime as dt

from opsledger.gitrepo import git
from opsledger.playbook_runs import unsafe_extravars

from .badinput import run
from .conftest import ALICE_ENV, START


def test_a_lookup_in_a_param_does_not_run_during_plan(local_env_repo, tmp_path):
    project = local_env_repo
    marker = tmp_path / "pwned"
    note = f"{{{{ lookup('pipe', 'touch {marker}') }}}}"
    result = run(
        project.root,
        [
            "change", "new", "--title", "Write a note on the local host", "--runbook", "note",
            "--env", "local", "--targets", "db", "--param", f'note="{note}"',
            "--requested-by", "alice", "--reason", "Prove params are data, never templates",
            "--start", START.isoformat(), "--duration", "2h",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    git(project.root, "add", "changes")
    git(project.root, "commit", "-q", "-m", "Request CHG-0001", env=ALICE_ENV)
    at = (START + dt.timedelta(minutes=5)).isoformat()
    result = run(project.root, ["plan", "CHG-0001", "--at", at])
    assert result.exit_code == 3, result.output  # denied (no approvals); predicted anyway
    assert not marker.exists(), "the lookup ran on the controller"
    assert "would change" in result.output  # the playbook did run, in check mode
    assert note in result.output  # the note reached the host's file verbatim, as text


def test_params_keep_their_types_and_no_text_is_trusted_as_a_template(tmp_path):
    """Read the way ansible-playbook reads `-e @file` (trusted as template unless !unsafe)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import is_trusted_as_template

    params = {
        "text": "{{ 7 * 7 }}",
        "{{ key }}": {"list": ["{% if true %}x{% endif %}", 3, None, True]},
        "looks_like_a_number": "5",
        "looks_like_a_boolean": "true",
    }
    path = tmp_path / "extravars.yml"
    path.write_text(unsafe_extravars(params))
    loaded = DataLoader().load_from_file(str(path), trusted_as_template=True)["opsledger_params"]
    assert loaded == params
    texts = [*loaded, loaded["text"], loaded["{{ key }}"]["list"][0]]
    assert not any(is_trusted_as_template(t) for t in texts)
    path.write_text("opsledger_params: {text: '{{ 7 * 7 }}'}\n")  # the control: plain YAML
    plain = DataLoader().load_from_file(str(path), trusted_as_template=True)["opsledger_params"]
    assert is_trusted_as_template(plain["text"])
