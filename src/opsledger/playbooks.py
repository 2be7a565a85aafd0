"""What a runbook's playbook says about how it runs: its plays, their batches and failure limits.

`serial` and `max_fail_percentage` are declared twice — in runbook.yml, which reviewers,
`runbook show` and the records read, and in each play, which is what Ansible obeys. This
module reads the plays as written (import_playbook followed, Ansible's YAML tags tolerated),
so runbooks.py can prove the two agree.

A play that only sorts or checks hosts (group_by, assert, set_fact, debug, fail, meta) changes
nothing, so how it is batched does not matter — and such plays must see every host at once
(a group_by in batches of one would sort only the first batch): they are not rollout plays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsledger.errors import OpsledgerError, Problem

# Modules that cannot change a host: a play made only of them is preparation, not rollout.
_PREPARATION = {
    f"{prefix}{name}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name in ("group_by", "assert", "set_fact", "debug", "fail", "meta", "add_host")
}
# Task keywords (everything on a task that is not its module).
_TASK_KEYWORDS = {
    "name", "when", "tags", "register", "loop", "loop_control", "vars", "become", "become_user",
    "become_method", "run_once", "delegate_to", "delegate_facts", "changed_when", "failed_when",
    "ignore_errors", "ignore_unreachable", "check_mode", "diff", "no_log", "notify", "until",
    "retries", "delay", "environment", "args", "listen", "any_errors_fatal", "timeout",
    "throttle", "collections", "connection", "debugger", "module_defaults", "async", "poll",
    "block", "rescue", "always",
}  # fmt: skip
_IMPORTS = ("import_playbook", "ansible.builtin.import_playbook", "ansible.legacy.import_playbook")


@dataclass(frozen=True)
class Play:
    """One play as written: where it is, its name, and what it says about batches."""

    file: Path
    index: int  # position in its file, from 0
    name: str
    serial: Any  # None when the play does not say (Ansible: every host in one batch)
    max_fail_percentage: Any  # None when the play does not say (Ansible: no limit)
    rollout: bool  # False for a play that only sorts or checks hosts

    @property
    def where(self) -> str:
        return f"plays[{self.index}] ({self.name or 'unnamed'})"


class _Loader(yaml.SafeLoader):
    """Plain YAML with Ansible's tags (!unsafe, !vault) read as the plain value they tag."""


def _tagged(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


_Loader.add_multi_constructor("!", _tagged)


def _load(path: Path) -> list[Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OpsledgerError(
            Problem(
                f"cannot read the playbook: {exc}".splitlines()[0],
                str(path),
                "playbook",
                "fix its YAML (ansible-playbook --syntax-check says where)",
            )
        ) from None
    if not isinstance(data, list):
        raise OpsledgerError(
            Problem(
                "a playbook must be a list of plays", str(path), "playbook", "start with - name:"
            )
        )
    return data


def _changes_hosts(tasks: Any) -> bool:
    """Whether any task of a task list may change a host (blocks looked into)."""
    for task in tasks or []:
        if not isinstance(task, dict):
            return True
        for key in ("block", "rescue", "always"):
            if key in task and _changes_hosts(task[key]):
                return True
        if any(k not in _TASK_KEYWORDS and k not in _PREPARATION for k in task):
            return True
    return False


def plays_of(playbook: Path, _seen: set[Path] | None = None) -> list[Play]:
    """Every play the playbook runs, in order, imported playbooks included.

    Example:
        [(p.name, p.serial) for p in plays_of(Path("runbooks/os-patch/playbook.yml"))]
    """
    seen = _seen if _seen is not None else set()
    seen.add(playbook.resolve())
    plays: list[Play] = []
    for index, entry in enumerate(_load(playbook)):
        if not isinstance(entry, dict):
            raise OpsledgerError(
                Problem("a play must be a mapping", str(playbook), f"plays[{index}]", "fix it")
            )
        imported = next((entry[k] for k in _IMPORTS if k in entry), None)
        if imported is not None:
            target = (playbook.parent / str(imported)).resolve()
            if "{{" in str(imported) or not target.is_file():
                raise OpsledgerError(
                    Problem(
                        f"imported playbook {imported!r} not found",
                        str(playbook),
                        f"plays[{index}]",
                        "import a playbook file by its path, relative to this one",
                    )
                )
            if target not in seen:
                plays += plays_of(target, seen)
            continue
        rollout = bool(entry.get("roles")) or any(
            _changes_hosts(entry.get(part))
            for part in ("pre_tasks", "tasks", "post_tasks", "handlers")
        )
        plays.append(
            Play(
                file=playbook,
                index=index,
                name=str(entry.get("name", "")),
                serial=entry.get("serial"),
                max_fail_percentage=entry.get("max_fail_percentage"),
                rollout=rollout,
            )
        )
    return plays


_NUMBER = re.compile(r"^\s*[0-9]+\s*$")


def batch_size(value: Any) -> Any:
    """A serial value as Ansible reads it: None (not said) is one batch of every host."""
    if value is None:
        return "100%"
    if isinstance(value, str) and _NUMBER.match(value):
        return int(value)
    if isinstance(value, list):
        return [batch_size(v) for v in value]
    return value


def fail_limit(value: Any) -> Any:
    """A max_fail_percentage as Ansible reads it.

    None means no limit: a failed host drops out, the others go on.
    """
    if isinstance(value, str) and _NUMBER.match(value):
        return int(value)
    return value
