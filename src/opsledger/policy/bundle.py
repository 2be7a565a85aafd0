"""The policy bundle (people, changes, windows, sla and waivers .yml): typed objects, linted.

`load_policies` reports every problem of these files at once: unknown teams, people or
environments, bad timezones and times, approval rules an earlier rule shadows, change type x
risk x environment combinations no rule covers, and an incomplete SLA matrix (`policycheck`
adds the other policy files). The bundle hash (of these five files, `POLICY_FILES`) is what a
decision records, so a run can be traced to the exact rules it was judged by.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opsledger.errors import OpsledgerError, Problem
from opsledger.layout import policies_folder
from opsledger.policy.files import read_policy
from opsledger.policy.waivers import load_waivers
from opsledger.project import Project

CHANGE_TYPES = ("standard", "normal", "emergency")
RISKS = ("low", "medium", "high")
LEVELS = ("low", "medium", "high")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
POLICY_FILES = ("people.yml", "changes.yml", "windows.yml", "sla.yml", "waivers.yml")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_KEY = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
    r"[A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?"
)


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    email: str
    teams: tuple[str, ...]
    signing_key: str | None


@dataclass(frozen=True)
class Rule:
    name: str
    types: tuple[str, ...]
    risks: tuple[str, ...]
    environments: tuple[str, ...] | None  # None: every environment
    approvals: int
    required_teams: tuple[str, ...]
    any_of_teams: tuple[str, ...]

    def matches(self, change_type: str, risk: str, environment: str) -> bool:
        return (
            change_type in self.types
            and risk in self.risks
            and (self.environments is None or environment in self.environments)
        )


@dataclass(frozen=True)
class PolicyChangeRule:
    """Who approves edits of policies/: owner teams, how many approvals, signed or not."""

    owners: tuple[str, ...]
    approvals: int
    signed: bool


@dataclass(frozen=True)
class Window:
    days: tuple[str, ...]
    start: str
    end: str
    timezone: str


@dataclass(frozen=True)
class Freeze:
    name: str
    environments: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime


@dataclass
class Policies:
    people: dict[str, Person]
    teams: dict[str, str]
    four_eyes: bool
    rules: list[Rule]
    observers: tuple[str, ...]
    runbook_teams: dict[str, tuple[str, ...]]
    signature_environments: tuple[str, ...]
    promotion: dict[str, Any]
    windows: dict[str, list[Window]]
    freezes: list[Freeze]
    emergency: dict[str, Any]
    sla_matrix: dict[str, dict[str, str]]
    priorities: dict[str, dict[str, int]]
    hash: str = ""
    files: dict[str, str] = field(default_factory=dict)
    audit_from: dt.datetime | None = None  # history before this is the pre-adoption baseline
    # None: policy edits are not under change control yet (see base.py, the policy chain)
    policy_changes: PolicyChangeRule | None = None
    records_by: str | None = None  # the person (CI) whose commits of run records are evidence

    def rule_for(self, change_type: str, risk: str, environment: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(change_type, risk, environment)), None)

    def approves_nothing(self, person: str) -> bool:
        """Whether every team of a person is an observer team (e.g. the auditors).

        They read the change log; their approval or rejection must neither count nor veto.
        """
        teams = self.people[person].teams if person in self.people else ()
        return bool(teams) and set(teams) <= set(self.observers)

    def priority(self, impact: str, urgency: str) -> str:
        return self.sla_matrix[impact][urgency]


def policy_hash(project: Project) -> str:
    """sha256 over every policy file (name and bytes): identical rules, identical hash."""
    digest = hashlib.sha256()
    for name in POLICY_FILES:
        path = policies_folder(project.root, name)
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environments(project: Project) -> set[str]:
    return {p.parent.name for p in (project.root / "inventories").glob("*/hosts.yml")}


def _unknown(
    problems: list[Problem], values: Any, allowed: Any, what: str, file: str, where: str
) -> None:
    """One problem for each value not among the allowed ones (teams, environments, ...)."""
    known = list(allowed)
    for value in values or []:
        if value not in known:
            problems.append(
                Problem(
                    f"unknown {what} {value!r}",
                    file,
                    where,
                    f"use one of: {', '.join(map(str, known))}",
                )
            )


def _zone(name: Any, file: str, where: str, problems: list[Problem]) -> None:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(
            Problem(
                f"unknown timezone {name!r}",
                file,
                where,
                "use an IANA name like Europe/Berlin or UTC",
            )
        )


def _aware(value: Any, file: str, where: str, problems: list[Problem]) -> dt.datetime | None:
    try:
        moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        problems.append(
            Problem(
                f"{value!r} is not an ISO 8601 date-time",
                file,
                where,
                "write e.g. 2026-12-21T00:00:00+01:00",
            )
        )
        return None
    if moment.tzinfo is None:
        problems.append(Problem("no timezone offset", file, where, "add one, e.g. +01:00"))
        return None
    return moment


def _people(project: Project, problems: list[Problem]) -> tuple[dict[str, Person], dict[str, str]]:
    file = str(policies_folder(project.root, "people.yml"))
    data, found = read_policy(project, "people", "people file")
    problems += found
    if data is None:
        return {}, {}
    teams = {str(k): str(v) for k, v in (data.get("teams") or {}).items()}
    people: dict[str, Person] = {}
    # A commit or a signature names one person: two people sharing an email (in any case) or a
    # key would let one of them act as both, e.g. request and approve.
    emails: dict[str, str] = {}
    keys: dict[str, str] = {}
    for index, entry in enumerate(data.get("people") or []):
        where = f"people[{index}]"
        pid = str(entry.get("id", ""))
        if not re.fullmatch(r"[a-z][a-z0-9_.-]*", pid):
            problems.append(
                Problem(
                    f"bad or missing id {pid!r}",
                    file,
                    f"{where}.id",
                    "use lowercase letters, digits, dot, dash",
                )
            )
            continue
        if pid in people:
            problems.append(
                Problem(f"duplicate person {pid}", file, f"{where}.id", "ids must be unique")
            )
        for key in ("name", "email"):
            if not entry.get(key):
                problems.append(Problem("missing", file, f"{where}.{key}", f"add {key}"))
        if entry.get("email") and "@" not in str(entry["email"]):
            problems.append(
                Problem(
                    f"{entry['email']!r} is not an email address",
                    file,
                    f"{where}.email",
                    "write name@domain",
                )
            )
        _unknown(problems, entry.get("teams"), teams, "team", file, f"{where}.teams")
        key = entry.get("signing_key")
        if key and not _KEY.fullmatch(str(key)):
            problems.append(
                Problem(
                    "not an SSH public key",
                    file,
                    f"{where}.signing_key",
                    "paste the .pub line, e.g. ssh-ed25519 AAAA...",
                )
            )
        email = str(entry.get("email") or "").strip().casefold()
        if email and emails.setdefault(email, pid) != pid:
            problems.append(
                Problem(
                    f"email {entry['email']!r} is also {emails[email]}'s",
                    file,
                    f"{where}.email",
                    "give each person an email of their own (git identifies people by it)",
                )
            )
        if key and keys.setdefault(" ".join(str(key).split()[:2]), pid) != pid:
            problems.append(
                Problem(
                    f"the signing key is also {keys[' '.join(str(key).split()[:2])]}'s",
                    file,
                    f"{where}.signing_key",
                    "give each person a key of their own (a signature names one person)",
                )
            )
        people[pid] = Person(
            pid,
            str(entry.get("name", "")),
            str(entry.get("email", "")),
            tuple(entry.get("teams") or []),
            key or None,
        )
    return people, teams


def _rules(
    project: Project, teams: dict[str, str], envs: set[str], problems: list[Problem]
) -> dict[str, Any]:
    file = str(policies_folder(project.root, "changes.yml"))
    data, found = read_policy(project, "changes", "change rules")
    problems += found
    if data is None:
        return {
            "audit_from": None,
            "four_eyes": True,
            "rules": [],
            "observers": (),
            "runbook_teams": {},
            "signature_environments": (),
            "promotion": {},
        }
    rules = []
    known_keys = {
        "name",
        "types",
        "risks",
        "environments",
        "approvals",
        "required_teams",
        "any_of_teams",
    }
    for index, entry in enumerate(data.get("rules") or []):
        where = f"rules[{index}]"
        for key in sorted(set(entry) - known_keys):
            problems.append(
                Problem(
                    f"unknown field {key!r}", file, where, f"use: {', '.join(sorted(known_keys))}"
                )
            )
        for key, allowed in (("types", CHANGE_TYPES), ("risks", RISKS)):
            _unknown(problems, entry.get(key), allowed, key[:-1], file, f"{where}.{key}")
        _unknown(
            problems, entry.get("environments"), envs, "environment", file, f"{where}.environments"
        )
        for key in ("required_teams", "any_of_teams"):
            if teams:  # none: people.yml is broken, and says so itself
                _unknown(problems, entry.get(key), teams, "team", file, f"{where}.{key}")
        approvals = entry.get("approvals")
        if not isinstance(approvals, int) or approvals < 0:
            problems.append(
                Problem(
                    f"approvals must be a whole number >= 0, got {approvals!r}",
                    file,
                    f"{where}.approvals",
                    "e.g. approvals: 1",
                )
            )
            approvals = 0
        if len(entry.get("required_teams") or []) > approvals:
            problems.append(
                Problem(
                    "more required teams than approvals",
                    file,
                    f"{where}.required_teams",
                    "raise approvals or require fewer teams",
                )
            )
        rules.append(
            Rule(
                name=str(entry.get("name", where)),
                types=tuple(entry.get("types") or CHANGE_TYPES),
                risks=tuple(entry.get("risks") or RISKS),
                environments=tuple(entry["environments"]) if entry.get("environments") else None,
                approvals=approvals,
                required_teams=tuple(entry.get("required_teams") or []),
                any_of_teams=tuple(entry.get("any_of_teams") or []),
            )
        )
    # A rule every case of which an earlier rule already takes is dead: say so.
    for later_index, later in enumerate(rules):
        cases = [
            (t, r, e)
            for t, r, e in itertools.product(later.types, later.risks, sorted(envs))
            if later.matches(t, r, e)
        ]
        for earlier in rules[:later_index]:
            if cases and all(earlier.matches(*case) for case in cases):
                problems.append(
                    Problem(
                        f"rule {later.name!r} never applies: {earlier.name!r} "
                        "comes first and matches all it does",
                        file,
                        f"rules[{later_index}]",
                        "reorder or narrow the rules",
                    )
                )
                break
    for change_type, risk, env in itertools.product(CHANGE_TYPES, RISKS, sorted(envs)):
        if not any(r.matches(change_type, risk, env) for r in rules):
            problems.append(
                Problem(
                    f"no rule for a {change_type} change of {risk} risk in {env}",
                    file,
                    "rules",
                    "add a rule that covers it",
                )
            )
    runbooks = {p.parent.name for p in (project.root / "runbooks").glob("*/runbook.yml")}
    runbook_teams = {}
    _unknown(
        problems, data.get("runbook_teams"), sorted(runbooks), "runbook", file, "runbook_teams"
    )
    for runbook, owners in (data.get("runbook_teams") or {}).items():
        if teams:
            _unknown(problems, owners, teams, "team", file, f"runbook_teams.{runbook}")
        runbook_teams[runbook] = tuple(owners)
    observers = tuple(data.get("observers") or ())
    if teams:
        _unknown(problems, observers, teams, "team", file, "observers")
    signature_envs = tuple((data.get("signatures") or {}).get("environments") or [])
    _unknown(problems, signature_envs, envs, "environment", file, "signatures.environments")
    promotion = data.get("promotion") or {}
    for key in ("from", "to"):
        if promotion and promotion.get(key) not in envs:
            problems.append(
                Problem(
                    f"unknown environment {promotion.get(key)!r}",
                    file,
                    f"promotion.{key}",
                    f"use: {', '.join(sorted(envs))}",
                )
            )
    if promotion and not isinstance(promotion.get("within_days"), int):
        problems.append(
            Problem(
                "within_days must be a whole number",
                file,
                "promotion.within_days",
                "e.g. within_days: 7",
            )
        )
    policy_changes = None
    spec = data.get("policy_changes")
    if spec is not None:
        where = "policy_changes"
        if not isinstance(spec, dict):
            spec = {}
            problems.append(
                Problem("must be a mapping", file, where, "owners, approvals and signed keys")
            )
        if teams:  # none: people.yml is broken, and says so itself
            _unknown(problems, spec.get("owners"), teams, "team", file, f"{where}.owners")
        count = spec.get("approvals")
        if not spec.get("owners") or not isinstance(count, int) or count < 1:
            problems.append(
                Problem(
                    "needs owners (teams) and approvals >= 1",
                    file,
                    where,
                    "e.g. policy_changes: {owners: [cab], approvals: 1, signed: true}",
                )
            )
        if not isinstance(spec.get("signed"), bool):
            problems.append(
                Problem("must be true or false", file, f"{where}.signed", "e.g. signed: true")
            )
        policy_changes = PolicyChangeRule(
            tuple(spec.get("owners") or ()),
            count if isinstance(count, int) else 1,
            spec.get("signed") is not False,  # anything but an explicit false means signed
        )
    records_by = (data.get("records") or {}).get("committed_by")
    audit = data.get("audit") or {}
    _unknown(problems, sorted(audit), ["from"], "key", file, "audit")
    audit_from = _aware(audit["from"], file, "audit.from", problems) if audit.get("from") else None
    return {
        "audit_from": audit_from,
        "policy_changes": policy_changes,
        "records_by": str(records_by) if records_by else None,
        "four_eyes": bool(data.get("four_eyes", True)),
        "rules": rules,
        "observers": observers,
        "runbook_teams": runbook_teams,
        "signature_environments": signature_envs,
        "promotion": promotion,
    }


def _windows(project: Project, envs: set[str], problems: list[Problem]) -> dict[str, Any]:
    file = str(policies_folder(project.root, "windows.yml"))
    data, found = read_policy(project, "windows", "windows file")
    problems += found
    if data is None:
        return {"windows": {}, "freezes": [], "emergency": {}}
    windows: dict[str, list[Window]] = {}
    _unknown(problems, data.get("environments"), sorted(envs), "environment", file, "environments")
    for env, spec in (data.get("environments") or {}).items():
        windows[env] = []
        for index, entry in enumerate((spec or {}).get("windows") or []):
            where = f"environments.{env}.windows[{index}]"
            days = tuple(entry.get("days") or [])
            bad = [d for d in days if d not in DAYS]
            if not days or bad:
                problems.append(
                    Problem(
                        f"bad days {bad or days!r}",
                        file,
                        f"{where}.days",
                        f"use: {', '.join(DAYS)}",
                    )
                )
            for key in ("start", "end"):
                if not _TIME.fullmatch(str(entry.get(key, ""))):
                    problems.append(
                        Problem(
                            f"{entry.get(key)!r} is not HH:MM",
                            file,
                            f"{where}.{key}",
                            "write e.g. 20:00 (end may be 24:00)",
                        )
                    )
            # end < start is an overnight window (it closes the next day); equal is empty
            if str(entry.get("start", "")) == str(entry.get("end", "")) or (
                str(entry.get("start")) == "24:00"
            ):
                problems.append(
                    Problem(
                        "the window is empty",
                        file,
                        f"{where}.end",
                        "end differs from start (an end earlier than start closes the next day)",
                    )
                )
            _zone(entry.get("timezone"), file, f"{where}.timezone", problems)
            windows[env].append(
                Window(
                    days, str(entry.get("start")), str(entry.get("end")), str(entry.get("timezone"))
                )
            )
    for env in sorted(envs - set(windows)):
        problems.append(
            Problem(
                f"no maintenance windows for {env}",
                file,
                "environments",
                f"add environments.{env}.windows",
            )
        )
    freezes = []
    for index, entry in enumerate(data.get("freezes") or []):
        where = f"freezes[{index}]"
        start = _aware(entry.get("start"), file, f"{where}.start", problems)
        end = _aware(entry.get("end"), file, f"{where}.end", problems)
        if start and end and end <= start:
            problems.append(
                Problem(
                    "the freeze ends before it starts",
                    file,
                    f"{where}.end",
                    "make end later than start",
                )
            )
        _unknown(
            problems, entry.get("environments"), envs, "environment", file, f"{where}.environments"
        )
        if start and end:
            freezes.append(
                Freeze(
                    str(entry.get("name", where)),
                    tuple(entry.get("environments") or []),
                    start,
                    end,
                )
            )
    emergency = data.get("emergency") or {}
    if not isinstance(emergency.get("review_within_hours"), int):
        problems.append(
            Problem(
                "review_within_hours must be a whole number",
                file,
                "emergency.review_within_hours",
                "e.g. 72",
            )
        )
    return {"windows": windows, "freezes": freezes, "emergency": emergency}


def _sla(project: Project, problems: list[Problem]) -> dict[str, Any]:
    file = str(policies_folder(project.root, "sla.yml"))
    data, found = read_policy(project, "sla", "SLA file")
    problems += found
    if data is None:
        return {"sla_matrix": {}, "priorities": {}}
    matrix = data.get("matrix") or {}
    priorities = data.get("priorities") or {}
    for impact, urgency in itertools.product(LEVELS, LEVELS):
        value = (matrix.get(impact) or {}).get(urgency)
        if value is None:
            problems.append(
                Problem(
                    f"no priority for impact {impact}, urgency {urgency}",
                    file,
                    f"matrix.{impact}.{urgency}",
                    "add e.g. P3",
                )
            )
        elif value not in priorities:
            problems.append(
                Problem(
                    f"priority {value!r} is not defined",
                    file,
                    f"matrix.{impact}.{urgency}",
                    f"use: {', '.join(priorities)}",
                )
            )
    for name, terms in priorities.items():
        for key in ("response_minutes", "resolution_hours"):
            if not isinstance((terms or {}).get(key), int):
                problems.append(
                    Problem(
                        "must be a whole number",
                        file,
                        f"priorities.{name}.{key}",
                        f"e.g. {key}: 60",
                    )
                )
    return {"sla_matrix": matrix, "priorities": priorities}


def _staffing(project: Project, policies: Policies, problems: list[Problem]) -> None:
    """Rules nobody can satisfy: a quorum larger than who may approve, a team without members.

    Such a rule blocks every change it covers, or (a required team of nobody) hides a typo in
    people.yml; either way the rules do not say what their authors meant.
    """
    if not policies.people:
        return  # people.yml itself is broken: its own problems say so
    file = str(policies_folder(project.root, "changes.yml"))
    # The CI identity (records.committed_by) signs no statements: it approves nothing.
    approvers = [p for p in policies.people.values() if p.id != policies.records_by]
    members = {t: [p for p in approvers if t in p.teams] for t in policies.teams}
    for index, rule in enumerate(policies.rules):
        where = f"rules[{index}]"
        for key in ("required_teams", "any_of_teams"):
            for team in getattr(rule, key):
                if team in members and not members[team]:
                    problems.append(
                        Problem(
                            f"team {team!r} has no members",
                            file,
                            f"{where}.{key}",
                            "add people to it in people.yml, or name another team",
                        )
                    )
        eligible = [
            p for p in approvers if not rule.any_of_teams or set(p.teams) & set(rule.any_of_teams)
        ]
        if rule.approvals > len(eligible):
            problems.append(
                Problem(
                    f"needs {rule.approvals} approvals but only {len(eligible)} people may approve",
                    file,
                    f"{where}.approvals",
                    "lower the quorum or add people to the teams",
                )
            )
    edits = policies.policy_changes
    if edits is not None:
        owning = [p for p in approvers if set(p.teams) & set(edits.owners)]
        if edits.approvals > len(owning):
            problems.append(
                Problem(
                    f"needs {edits.approvals} approvals but only {len(owning)} policy owners "
                    "may approve",
                    file,
                    "policy_changes.approvals",
                    "lower the quorum or add people to the owner teams",
                )
            )
    for runbook, owners in policies.runbook_teams.items():
        if not any(members.get(team) for team in owners):
            problems.append(
                Problem(
                    f"no team owning {runbook} has members",
                    file,
                    f"runbook_teams.{runbook}",
                    "add people to an owning team in people.yml",
                )
            )


def load_policies(project: Project, *, strict: bool = True) -> tuple[Policies, list[Problem]]:
    """Every policy file, loaded and checked. strict: raise when there is any problem."""
    problems: list[Problem] = []
    envs = _environments(project)
    people, teams = _people(project, problems)
    policies = Policies(
        people=people,
        teams=teams,
        **_rules(project, teams, envs, problems),
        **_windows(project, envs, problems),
        **_sla(project, problems),
        hash=policy_hash(project),
    )
    if people and policies.records_by and policies.records_by not in people:
        problems.append(
            Problem(
                f"{policies.records_by!r} is not in people.yml",
                str(policies_folder(project.root, "changes.yml")),
                "records.committed_by",
                "name the CI identity's person id",
            )
        )
    _staffing(project, policies, problems)
    waivers_file = policies_folder(project.root, "waivers.yml")
    try:
        waivers = load_waivers(waivers_file)
    except OpsledgerError as exc:
        problems += exc.problems
    else:
        for waiver in waivers:
            for role in ("author", "approved_by"):
                if people and getattr(waiver, role) not in people:
                    problems.append(
                        Problem(
                            f"{getattr(waiver, role)!r} is not in people.yml",
                            str(waivers_file),
                            f"{waiver.id}.{role}",
                            "name a person of policies/people.yml",
                        )
                    )
            _unknown(
                problems,
                waiver.environments,
                [*sorted(envs), "molecule"],
                "environment",
                str(waivers_file),
                f"{waiver.id}.environments",
            )
    if strict and problems:
        raise OpsledgerError(problems)
    return policies, problems
