"""A long task says it is alive: the opsledger_heartbeat callback, run by real Ansible."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from opsledger.cli.progress import summary

from ..conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def _play(tmp_path: Path, seconds: int, heartbeat: str) -> subprocess.CompletedProcess:
    playbook = tmp_path / "wait.yml"
    playbook.write_text(
        textwrap.dedent(
            f"""\
            - name: A slow step
              hosts: localhost
              connection: local
              gather_facts: false
              vars:
                ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
              tasks:
                - name: Wait for the mirror
                  ansible.builtin.command: sleep {seconds}
                  changed_when: false
            """
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "OPSLEDGER_HEARTBEAT_SECONDS": heartbeat,
        "ANSIBLE_FACT_CACHING_CONNECTION": str(tmp_path / "facts"),
    }
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)],
        cwd=REPO_ROOT,  # ansible.cfg names the lab vault password relative to the project
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_long_task_prints_that_it_is_still_running_and_where(tmp_path):
    proc = _play(tmp_path, 4, "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    beats = [ln for ln in proc.stdout.splitlines() if ln.startswith("... still running")]
    assert len(beats) >= 2, proc.stdout
    assert beats[0].startswith("... still running: Wait for the mirror on localhost (")


def test_heartbeat_off_prints_nothing(tmp_path):
    proc = _play(tmp_path, 2, "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "still running" not in proc.stdout


def test_runner_events_carry_the_heartbeat_to_progress_views():
    line = summary({"event": "verbose", "stdout": "... still running: Install on db1 (30s)\n"})
    assert line == {"event": "heartbeat", "message": "... still running: Install on db1 (30s)"}
    assert summary({"event": "verbose", "stdout": "other noise"}) is None
