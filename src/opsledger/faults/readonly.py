"""Which diagnostic commands may run on a host during an incident: only ones that cannot write.

Diagnostics run on hosts that are already in trouble; a collector that restarts a unit, rotates
a journal or truncates a log would change the evidence and the fault. So a command from policy
is parsed, not trusted: it is a pipeline of simple commands, each an allowed program with
arguments that keep it read-only (`systemctl status`, not `systemctl restart`; `journalctl -n`,
not `journalctl --vacuum-size`; `psql -c "SELECT ..."` in a read-only transaction, not a
script). Shell syntax that could write or run something else — redirection, `;`, `&&`,
backgrounding, command substitution, variables — is refused outright, and what is finally sent
to the host is rebuilt from the parsed words (every word quoted), so the host's shell sees
nothing this module did not check. sudo is allowed only as `sudo -n [-u USER] PROGRAM ...`.

This is an allowlist: a program not named here is refused, so a new diagnostic needs a line
here and a test. PostgreSQL queries are limited to SELECT/SHOW in a read-only transaction,
without functions known to act (terminate a backend, switch WAL, write files); that list is
best effort, which is why psql only runs queries a reviewer put in policy.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

# Shell operators shlex reports as separate words; only the pipe may join commands.
_OPERATORS = {";", "&", "&&", "||", ">", ">>", "<", "<<", ">&", "<&", "(", ")", "|&", ";;"}
# Expansion in the host's shell: refused anywhere, quoted or not.
_EXPANSION = re.compile(r"[`$]")

_READ_SQL = re.compile(r"^\s*(select|show|table|with|values)\b", re.I)
_ACTING_SQL = re.compile(
    r"\b(pg_terminate_backend|pg_cancel_backend|pg_switch_wal|pg_reload_conf|pg_rotate_logfile"
    r"|pg_promote|pg_create_\w+|pg_drop_\w+|pg_file_write|pg_file_unlink|pg_file_rename"
    r"|pg_backup_start|pg_backup_stop|pg_start_backup|pg_stop_backup|pg_wal_replay_\w+"
    r"|pg_advisory\w*|pg_replication_origin_\w+|pg_logical_emit_message|pg_log_backend_memory\w*"
    r"|set_config|nextval|setval|lo_\w+|dblink\w*|pg_read_binary_file|pg_stat_reset\w*"
    r"|pg_import_system_collations|txid_current|pg_current_xact_id|pg_notify"
    # one statement that starts with SELECT/WITH can still write through a data-modifying CTE
    r"|insert|update|delete|merge)\b",
    re.I,
)
# What psql is given in front of the query: the transaction refuses writes whatever it says.
READ_ONLY_PG = "PGOPTIONS=-c default_transaction_read_only=on"


@dataclass(frozen=True)
class Checked:
    """A command that passed: its pipeline as words, and the exact line sent to the host."""

    command: str
    segments: tuple[tuple[str, ...], ...]

    @property
    def remote(self) -> str:
        return " | ".join(shlex.join(segment) for segment in self.segments)


class NotReadOnly(ValueError):
    """The command could change a host (or cannot be shown not to)."""


def _options(words: list[str]) -> list[str]:
    return [w for w in words if w.startswith("-")]


def _positionals(words: list[str]) -> list[str]:
    return [w for w in words if not w.startswith("-")]


def _refuse_options(words: list[str], forbidden: tuple[str, ...], program: str) -> None:
    for word in words:
        name = word.split("=", 1)[0]
        if name in forbidden or (
            # short options may be bundled: -fn is -f -n
            len(name) > 1
            and name[0] == "-"
            and name[1] != "-"
            and any(f"-{c}" in forbidden for c in name[1:])
        ):
            raise NotReadOnly(f"{program} {word} can change the host or never ends")


def _plain(program: str) -> Callable[[list[str]], None]:
    """Programs that only read, whatever their arguments."""
    return lambda words: None


def _forbid(program: str, *options: str) -> Callable[[list[str]], None]:
    return lambda words: _refuse_options(words, options, program)


def _verbs(program: str, allowed: set[str], default_ok: bool = True) -> Callable[[list[str]], None]:
    """Programs whose first positional word is a verb: only reading verbs pass."""

    def check(words: list[str]) -> None:
        verbs = _positionals(words)
        if not verbs:
            if default_ok:
                return
            raise NotReadOnly(f"{program} needs one of: {', '.join(sorted(allowed))}")
        if verbs[0] not in allowed:
            raise NotReadOnly(
                f"{program} {verbs[0]} is not read-only (allowed: {', '.join(sorted(allowed))})"
            )

    return check


def _systemctl(words: list[str]) -> None:
    _verbs(
        "systemctl",
        {
            "status",
            "show",
            "cat",
            "list-units",
            "list-unit-files",
            "list-timers",
            "list-sockets",
            "list-dependencies",
            "is-active",
            "is-enabled",
            "is-failed",
            "is-system-running",
        },
    )(words)
    _refuse_options(words, ("--root", "-H", "--host", "-M", "--machine"), "systemctl")


def _journalctl(words: list[str]) -> None:
    forbidden = (
        "-f",
        "--follow",
        "--vacuum-size",
        "--vacuum-time",
        "--vacuum-files",
        "--rotate",
        "--flush",
        "--sync",
        "--relinquish-var",
        "--smart-relinquish-var",
        "--setup-keys",
        "--update-catalog",
        "-D",
        "--directory",
    )
    _refuse_options(words, forbidden, "journalctl")


def _ip(words: list[str]) -> None:
    # ip takes single-dash long options and any unique abbreviation: -ba is -batch, -n -netns
    for word in _options(words):
        option = "-" + word.lstrip("-")
        for full, shortest in (("-batch", 2), ("-force", 3), ("-netns", 2)):
            if len(option) >= shortest and full.startswith(option):
                raise NotReadOnly(f"ip {word} ({full}) can run more than one command")
    acting = {
        "add",
        "del",
        "delete",
        "change",
        "replace",
        "set",
        "flush",
        "save",
        "restore",
        "append",
        "prepend",
        "monitor",
        "exec",
        "attach",
        "detach",
        "update",
        "reset",
    }
    for word in _positionals(words):
        if word in acting:
            raise NotReadOnly(f"ip {word} changes the host")


def _nft(words: list[str]) -> None:
    _refuse_options(words, ("-f", "--file", "-i", "--interactive", "-o", "--optimize"), "nft")
    verbs = _positionals(words)
    if not verbs or verbs[0] != "list":
        raise NotReadOnly("nft may only list (nft list ruleset, nft list counters)")


def _iptables(words: list[str]) -> None:
    allowed = {
        "-L",
        "--list",
        "-S",
        "--list-rules",
        "-n",
        "--numeric",
        "-v",
        "--verbose",
        "-x",
        "--exact",
        "--line-numbers",
        "-t",
        "--table",
    }
    for word in _options(words):
        if word.split("=", 1)[0] not in allowed and not set(word[1:]) <= set("LSnvx"):
            raise NotReadOnly(f"iptables {word} is not a listing option")
    if not any(
        w in ("-L", "--list", "-S", "--list-rules")
        or (w.startswith("-") and not w.startswith("--") and set(w[1:]) & set("LS"))
        for w in words
    ):
        raise NotReadOnly("iptables needs -L or -S (a listing)")


def _date(words: list[str]) -> None:
    _refuse_options(words, ("-s", "--set"), "date")
    for word in _positionals(words):
        if not word.startswith("+"):
            raise NotReadOnly(f"date {word} would set the clock; only +FORMAT is allowed")


def _find(words: list[str]) -> None:
    acting = (
        "-delete",
        "-exec",
        "-execdir",
        "-ok",
        "-okdir",
        "-fprint",
        "-fprint0",
        "-fprintf",
        "-fls",
    )
    for word in words:
        if word in acting:
            raise NotReadOnly(f"find {word} can change the host")


def _uniq(words: list[str]) -> None:
    if len(_positionals(words)) > 1:
        raise NotReadOnly("uniq INPUT OUTPUT writes OUTPUT")


def _top(words: list[str]) -> None:
    if not any(w.startswith("-") and "b" in w for w in words):
        raise NotReadOnly("top needs -b (batch mode), or it never ends")


def _pgbackrest(words: list[str]) -> None:
    _verbs("pgbackrest", {"info", "version", "help"}, default_ok=False)(words)


def _psql(words: list[str]) -> None:
    """psql -XAt[q]c "SELECT ..." [-d DB]: one read-only query, no files, no meta-commands."""
    sql: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word in ("-c", "--command"):
            if index + 1 >= len(words):
                raise NotReadOnly("psql -c needs a query")
            sql.append(words[index + 1])
            index += 2
            continue
        if word.startswith("--command="):
            sql.append(word.split("=", 1)[1])
        elif word in ("-d", "--dbname", "-U", "--username", "-p", "--port"):
            index += 2
            continue
        elif word.startswith(("--dbname=", "--username=", "--port=")) or word in (
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--quiet",
            "--expanded",
        ):
            pass
        elif re.fullmatch(r"-[XAtqx]+c?", word):
            if word.endswith("c"):
                if index + 1 >= len(words):
                    raise NotReadOnly("psql -c needs a query")
                sql.append(words[index + 1])
                index += 2
                continue
        else:
            raise NotReadOnly(f"psql {word} is not allowed (only -XAtqx, -c QUERY, -d DB)")
        index += 1
    if not sql:
        raise NotReadOnly("psql without -c would read commands from its input")
    for query in sql:
        body = query.strip().rstrip(";")
        if not _READ_SQL.match(body) or ";" in body or "\\" in body:
            raise NotReadOnly(f"psql query {query!r} is not a single SELECT or SHOW")
        acting = _ACTING_SQL.search(re.sub(r"'[^']*'", "''", body))
        if acting:
            raise NotReadOnly(f"psql query uses {acting.group(1)}, which can act")


PROGRAMS: dict[str, Callable[[list[str]], None]] = {
    "cat": _plain("cat"),
    "head": _plain("head"),
    "tail": _forbid("tail", "-f", "-F", "--follow", "--retry"),
    "grep": _plain("grep"),
    "egrep": _plain("egrep"),
    "wc": _plain("wc"),
    "sort": _forbid("sort", "-o", "--output", "-T", "--temporary-directory", "--compress-program"),
    "uniq": _uniq,
    "cut": _plain("cut"),
    "ls": _plain("ls"),
    "stat": _plain("stat"),
    "du": _plain("du"),
    "df": _plain("df"),
    "free": _forbid("free", "-s", "--seconds", "-c", "--count"),
    "uptime": _plain("uptime"),
    "uname": _plain("uname"),
    "id": _plain("id"),
    "who": _plain("who"),
    "w": _plain("w"),
    "last": _plain("last"),
    "date": _date,
    "ps": _plain("ps"),
    "top": _top,
    "vmstat": _plain("vmstat"),
    "iostat": _plain("iostat"),
    "lsblk": _plain("lsblk"),
    "findmnt": _forbid("findmnt", "-p", "--poll"),
    "find": _find,
    "ss": _forbid("ss", "-K", "--kill", "-D", "--diag", "-E", "--events"),
    "ip": _ip,
    "nft": _nft,
    "iptables": _iptables,
    "chronyc": _verbs(
        "chronyc", {"tracking", "sources", "sourcestats", "activity", "ntpdata"}, default_ok=False
    ),
    "timedatectl": _verbs("timedatectl", {"status", "show", "timesync-status", "show-timesync"}),
    "systemctl": _systemctl,
    "journalctl": _journalctl,
    "dmesg": _forbid(
        "dmesg",
        "-c",
        "-C",
        "--clear",
        "--read-clear",
        "-n",
        "--console-level",
        "-D",
        "-E",
        "--console-off",
        "--console-on",
        "-w",
        "--follow",
        "-W",
        "--follow-new",
    ),
    "smartctl": _forbid(
        "smartctl",
        "-s",
        "--smart",
        "-o",
        "--offlineauto",
        "-S",
        "--saveauto",
        "-t",
        "--test",
        "-X",
        "--abort",
        "--set",
    ),
    "sensors": _forbid("sensors", "-s", "--set"),
    "pg_lsclusters": _plain("pg_lsclusters"),
    "pgbackrest": _pgbackrest,
    "psql": _psql,
}


def _sudo(words: list[str]) -> tuple[list[str], list[str]]:
    """Split `sudo -n [-u USER] PROGRAM ...` into (sudo words, command words)."""
    prefix = ["sudo"]
    rest = words[1:]
    if not rest or rest[0] != "-n":
        raise NotReadOnly("sudo must be `sudo -n` (never prompt for a password)")
    prefix.append(rest.pop(0))
    if rest[:1] == ["-u"]:
        if len(rest) < 2 or not re.fullmatch(r"[a-z_][a-z0-9_-]*", rest[1]):
            raise NotReadOnly("sudo -u needs a user name")
        prefix += rest[:2]
        rest = rest[2:]
    if not rest or rest[0].startswith("-"):
        raise NotReadOnly("sudo may only be `sudo -n [-u USER] PROGRAM ...`")
    return prefix, rest


def _words(command: str) -> list[list[str]]:
    """The pipeline's simple commands as words; any other shell syntax is refused."""
    if _EXPANSION.search(command):
        raise NotReadOnly("$ and ` expand in the host's shell (variables, command substitution)")
    if "\n" in command or "\\" in command:
        raise NotReadOnly("write the command on one line without backslashes")
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as err:
        raise NotReadOnly(f"cannot parse it: {err}") from None
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            segments.append([])
        elif token in _OPERATORS or (token and set(token) <= set(";&|<>()")):
            raise NotReadOnly(f"{token!r} is shell syntax that can write or run more")
        else:
            segments[-1].append(token)
    if any(not segment for segment in segments):
        raise NotReadOnly("an empty command in the pipeline")
    return segments


def check_command(command: str) -> Checked:
    """Parse a diagnostic command and prove it read-only; raises NotReadOnly saying why not.

    Example:
        check_command("sudo -n journalctl -p err -n 100 --no-pager").remote
        check_command("systemctl restart postgresql")  # NotReadOnly: restart is not read-only
    """
    checked: list[tuple[str, ...]] = []
    for words in _words(command):
        prefix: list[str] = []
        if words[0] == "sudo":
            prefix, words = _sudo(words)
        program = words[0]
        if "/" in program:
            raise NotReadOnly(f"name the program, not a path ({program})")
        if program not in PROGRAMS:
            raise NotReadOnly(f"{program} is not a known read-only program")
        PROGRAMS[program](words[1:])
        if program == "psql":
            # sudo resets the environment: env sets it for psql alone, after sudo
            prefix = [*prefix, "env", READ_ONLY_PG]
        checked.append((*prefix, *words))
    return Checked(command, tuple(checked))
