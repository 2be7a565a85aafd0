"""The waiver register (`policies/waivers.yml`): controls knowingly not enforced somewhere.

A verification test that cannot pass for a known, accepted reason (a container cannot set
kernel parameters) is skipped only when a waiver names its control, the environment and the
host, with a reason, an approver other than its author, and an expiry. An expired waiver no
longer applies, so the test fails again until someone renews or fixes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.policy.files import data_problems
from opsledger.yamlio import load_yaml

REQUIRED = ("id", "controls", "environments", "hosts", "reason", "author", "approved_by", "expires")


@dataclass(frozen=True)
class Waiver:
    id: str
    controls: tuple[str, ...]
    environments: tuple[str, ...]
    hosts: tuple[str, ...]  # host names, group names, or "all"
    reason: str
    author: str
    approved_by: str
    expires: dt.date

    def covers(self, control: str, environment: str, host: str, groups: tuple[str, ...]) -> bool:
        return (
            control in self.controls
            and environment in self.environments
            and ("all" in self.hosts or host in self.hosts or bool(set(groups) & set(self.hosts)))
        )

    def expired(self, today: dt.date) -> bool:
        return today > self.expires


def load_waivers(path: Path) -> list[Waiver]:
    """Read and check the register; every malformed entry is reported with its field."""
    if not path.exists() and not path.is_symlink():
        return []
    data = load_yaml(path, what="waiver register", root=path.parent.parent)
    problems = data_problems(data, "waivers", str(path))
    if problems:  # the checks below read only data of the schema's shape
        raise OpsledgerError(problems)
    waivers = []
    for index, entry in enumerate(data.get("waivers") or []):
        where = f"waivers[{index}]"
        missing = [k for k in REQUIRED if k not in entry]
        for key in missing:
            problems.append(Problem("missing", str(path), f"{where}.{key}", f"add {key}"))
        if missing:
            continue
        expires = entry["expires"]
        if isinstance(expires, str):  # quoted: the schema checked its shape, not the day
            with contextlib.suppress(ValueError):
                expires = dt.date.fromisoformat(expires)
        if not isinstance(expires, dt.date):
            problems.append(
                Problem(
                    f"{shown(expires, 40)} is not a date",
                    str(path),
                    f"{where}.expires",
                    "write it as YYYY-MM-DD",
                )
            )
            continue
        if entry["author"] == entry["approved_by"]:
            problems.append(
                Problem(
                    "a waiver cannot be approved by its author",
                    str(path),
                    f"{where}.approved_by",
                    "ask another person to approve it",
                )
            )
        waivers.append(
            Waiver(
                id=str(entry["id"]),
                controls=tuple(entry["controls"]),
                environments=tuple(entry["environments"]),
                hosts=tuple(entry["hosts"]),
                reason=str(entry["reason"]).strip(),
                author=str(entry["author"]),
                approved_by=str(entry["approved_by"]),
                expires=expires,
            )
        )
    if problems:
        raise OpsledgerError(problems)
    return waivers


def active_waiver(
    waivers: list[Waiver],
    control: str,
    environment: str,
    host: str,
    groups: tuple[str, ...],
    today: dt.date | None = None,
) -> Waiver | None:
    """The unexpired waiver covering this control on this host, if any."""
    today = today or dt.date.today()
    for waiver in waivers:
        if waiver.covers(control, environment, host, groups) and not waiver.expired(today):
            return waiver
    return None
