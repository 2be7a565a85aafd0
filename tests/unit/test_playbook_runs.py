"""run_playbook keeps the project's Ansible settings that ansible-runner would override."""

from __future__ import annotations

from opsledger.playbook_runs import run_playbook

from .conftest import copy_project

PLAYBOOK = """\
- name: Report the settings in force
  hosts: all
  gather_facts: false
  tasks:
    - name: Settings
      ansible.builtin.debug:
        msg: >-
          {{ lookup('ansible.builtin.config', 'HOST_KEY_CHECKING') }}
          {{ lookup('ansible.builtin.config', 'CACHE_PLUGIN_CONNECTION') }}
          {{ opsledger_params.word }}
"""


def test_host_key_checking_and_fact_cache_come_from_ansible_cfg(tmp_path):
    said, run = _local_run(tmp_path, PLAYBOOK, LOCAL_HOSTS, limit="here", params={"word": "hello"})
    assert run.hosts["here"].ok == 1
    checking, cache, word = said
    assert checking == "True"  # ansible-runner alone would say False
    assert cache == ".opsledger/facts"  # not ansible-runner's per-run artifacts folder
    assert word == "hello"


def test_set_stats_data_is_handed_back(tmp_path):
    """Drills hand their timeline back this way; the events passed on stay untouched."""
    project = copy_project(tmp_path / "p")
    playbook = project.root / "stats.yml"
    playbook.write_text(
        "- name: Hand data back\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Stats\n      ansible.builtin.set_stats:\n"
        "        data: {opsledger_drill: {down_at: 12.5, restored: [[1, 2]]}}\n"
    )
    inventory = project.root / "local.yml"
    inventory.write_text("all:\n  hosts:\n    here: {ansible_connection: local}\n")
    stats = []
    run = run_playbook(
        project,
        playbook=playbook,
        inventory=inventory,
        limit="here",
        params={},
        event_handler=lambda e: stats.append(e) if e.get("event") == "playbook_on_stats" else None,
    )
    assert run.data == {"opsledger_drill": {"down_at": 12.5, "restored": [[1, 2]]}}
    assert "opsledger_drill" not in stats[0]["event_data"]


def test_the_vault_password_ci_writes_for_an_environment_reaches_ansible(tmp_path):
    """CI writes staging's and production's vault passwords to `vault-passwords/<env>`, but
    ansible.cfg names only the lab's: nothing handed the file to Ansible, and the first
    encrypted staging variable stopped the run with "no vault secrets found"."""
    import subprocess
    import sys
    from pathlib import Path

    from opsledger.inventory import vault_ids

    from .conftest import LOCAL_CONNECTION

    project = copy_project(tmp_path / "p")
    staging = project.root / "inventories" / "staging"
    (staging / "group_vars" / "all" / "connection.yml").write_text(LOCAL_CONNECTION)
    password = project.root / "vault-passwords" / "staging"
    password.write_text("s3cret-staging\n")
    vault = Path(sys.executable).parent / "ansible-vault"
    encrypted = subprocess.run(
        [str(vault), "encrypt_string", "--vault-id", f"staging@{password}",
         "--encrypt-vault-id", "staging",
         "the-db-password", "--name", "db_password"],
        capture_output=True, text=True, check=True, cwd=project.root,
    ).stdout  # fmt: skip
    (staging / "group_vars" / "all" / "secret.yml").write_text("---\n" + encrypted)
    playbook = tmp_path / "secret.yml"
    playbook.write_text(
        "---\n- name: Use the staging secret\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: The secret decrypts\n      ansible.builtin.assert:\n"
        "        that: db_password == 'the-db-password'\n"  # pragma: allowlist secret
    )
    host = "stg-db1.example.invalid"
    assert vault_ids(staging / "hosts.yml")[-1] == f"staging@{password}"
    run = run_playbook(
        project, playbook=playbook, inventory=staging / "hosts.yml", limit=host, params={}
    )
    assert run.status == "successful" and run.hosts[host].ok == 1, run.host_stats()
    # A symlink is not a password file: never followed to wherever it points.
    password.unlink()
    password.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("s3cret-staging\n")
    assert not any(i.startswith("staging@") for i in vault_ids(staging / "hosts.yml"))


SETTINGS_PLAYBOOK = """\
- name: Report how Ansible runs
  hosts: all
  gather_facts: false
  tasks:
    - name: Settings
      ansible.builtin.debug:
        msg: >-
          {{ lookup('ansible.builtin.config', 'DEFAULT_FORKS') }}
          {{ lookup('ansible.builtin.config', 'DEFAULT_STRATEGY') }}
          {{ ansible_diff_mode }}
"""


def _local_run(tmp_path, playbook_text, inventory_text, **kwargs):
    """The first debug message's words as the play said them, and the run (successful)."""
    project = copy_project(tmp_path / "p")
    playbook = project.root / "settings.yml"
    playbook.write_text(playbook_text)
    inventory = project.root / "local.yml"
    inventory.write_text(inventory_text)
    seen = []

    def on_event(event):
        if event.get("event") == "runner_on_ok":
            seen.append(event["event_data"]["res"]["msg"])

    kwargs = {"limit": "all", "params": {}, **kwargs}
    run = run_playbook(
        project, playbook=playbook, inventory=inventory, event_handler=on_event, **kwargs
    )
    assert run.status == "successful", run.host_stats()
    return seen[0].split(), run


def _settings_run(tmp_path, inventory_text, **kwargs):
    """forks, strategy and diff mode as the play saw them, and the run."""
    return _local_run(tmp_path, SETTINGS_PLAYBOOK, inventory_text, **kwargs)


LOCAL_HOSTS = "all:\n  hosts:\n    here: {ansible_connection: local}\n"


def test_forks_and_strategy_default_to_the_hosts_and_ansibles_linear(tmp_path, monkeypatch):
    """ansible.cfg's forks (20) and no Mitogen: an environment that says nothing runs stock
    linear, with as many forks as it has hosts."""
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    monkeypatch.delenv("ANSIBLE_FORKS", raising=False)
    (forks, strategy, diff), _ = _settings_run(
        tmp_path,
        "all:\n  hosts:\n    here: {ansible_connection: local}\n"
        "    there: {ansible_connection: local}\n",
    )
    assert (forks, strategy, diff) == ("2", "linear", "False")


def test_forks_and_strategy_come_from_the_environment(tmp_path, monkeypatch):
    """The lab opts into Mitogen in its group_vars; an environment may set its forks."""
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    monkeypatch.delenv("ANSIBLE_FORKS", raising=False)
    inventory = LOCAL_HOSTS + "  vars: {opsledger_forks: 7, opsledger_strategy: mitogen_linear}\n"
    (forks, strategy, _), _ = _settings_run(tmp_path, inventory)
    assert (forks, strategy) == ("7", "mitogen_linear")


def test_this_process_environment_overrides_the_environment_setting(tmp_path, monkeypatch):
    """`ANSIBLE_STRATEGY=linear opsledger apply ...` turns Mitogen off for one run."""
    monkeypatch.setenv("ANSIBLE_STRATEGY", "linear")
    monkeypatch.setenv("ANSIBLE_FORKS", "3")
    inventory = LOCAL_HOSTS + "  vars: {opsledger_forks: 7, opsledger_strategy: mitogen_linear}\n"
    (forks, strategy, _), _ = _settings_run(tmp_path, inventory)
    assert (forks, strategy) == ("3", "linear")


def test_diff_mode_only_when_asked(tmp_path):
    """--diff costs a read of every changed file's old content: only callers that keep the
    diff ask for it (plan, drift, apply's job log)."""
    (_, _, off), _ = _settings_run(tmp_path / "off", LOCAL_HOSTS)
    (_, _, on), _ = _settings_run(tmp_path / "on", LOCAL_HOSTS, diff=True)
    assert (off, on) == ("False", "True")


def test_events_reach_disk_only_in_a_kept_journal(tmp_path):
    """Without a journal nothing is written per event; a kept journal holds what a killed
    run's record and job log are rebuilt from, and nothing else."""
    import json

    from opsledger.joblog import journal_log
    from opsledger.playbook_runs import JOURNALED, replay_journal

    artifacts = tmp_path / "artifacts"
    _settings_run(tmp_path / "plain", LOCAL_HOSTS, artifact_dir=artifacts)
    assert [p.name for p in artifacts.glob("*/job_events/*")] == []

    journal = tmp_path / "journal"
    _, run = _settings_run(tmp_path / "kept", LOCAL_HOSTS, private_dir=journal)
    written = [json.loads(p.read_text()) for p in journal.glob("artifacts/*/job_events/*.json")]
    kinds = {e["event"] for e in written}
    assert kinds <= JOURNALED and {"runner_on_ok", "playbook_on_stats"} <= kinds
    assert "runner_on_start" not in kinds and "playbook_on_start" not in kinds
    replayed = replay_journal(journal)
    assert replayed.hosts["here"].ok == run.hosts["here"].ok == 1
    assert replayed.last_task == "Settings"
    assert [e["task"] for e in journal_log(journal).entries if "task" in e] == ["Settings"]
