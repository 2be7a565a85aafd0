"""Only commands that cannot change a host pass as diagnostics; what is sent is rebuilt from
the checked words, so the host's shell sees nothing unchecked."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.faults.readonly import NotReadOnly, check_command

READ_ONLY = [
    "uptime",
    "df -h",
    "free -m",
    "systemctl list-units --state=failed --no-legend --plain",
    "systemctl status postgresql@15-main --no-pager",
    "sudo -n journalctl -p err -n 100 --no-pager -o short-iso",
    'sudo -n -u postgres psql -XAtc "SELECT status FROM pg_stat_wal_receiver"',
    "ps -eo pid,user,%cpu,cmd --sort=-%cpu | head -n 25",
    "ip -brief address",
    "sudo -n nft list ruleset",
    "chronyc -n tracking",
    'sudo -n find /etc -xdev -type f -newermt "2 days ago"',
    "date -u +%Y-%m-%dT%H:%M:%SZ",
    "sudo -n -u postgres pgbackrest --stanza=main info",
    "iptables -L -n -v",
]
WRITES = [
    ("systemctl restart postgresql", "restart is not read-only"),
    ("sudo -n systemctl stop postgresql@15-main", "stop is not read-only"),
    ("echo hi > /etc/motd", "'>'"),
    ("cat /etc/hosts >> /tmp/copy", "'>>'"),
    ("df -h; rm -rf /tmp/x", "';'"),
    ("df -h && reboot", "'&&'"),
    ("uptime &", "'&'"),
    ("cat $(rm -rf /)", "expand"),
    ("cat `reboot`", "expand"),
    ("cat $HOME/.ssh/id_rsa", "expand"),
    ("rm -f /tmp/x", "not a known read-only program"),
    ("touch /tmp/x", "not a known read-only program"),
    ("tee /etc/motd", "not a known read-only program"),
    ("/usr/bin/cat /etc/hosts", "not a path"),
    ("sudo rm -rf /", "sudo -n"),
    ("sudo -n -s", "sudo may only be"),
    ("sudo -n -i reboot", "sudo may only be"),
    ("journalctl --vacuum-size=1M", "--vacuum-size"),
    ("journalctl --rotate", "--rotate"),
    ("journalctl -f", "never ends"),
    ("tail -f /var/log/syslog", "-f"),
    ("sort -o /etc/passwd /tmp/x", "-o"),
    ("uniq /tmp/a /etc/passwd", "writes"),
    ("find /tmp -name x -delete", "-delete"),
    ("find / -exec rm {} +", "-exec"),
    ("date 010101012020", "set the clock"),
    ("date -s 2020-01-01", "-s"),
    ("ip link set eth0 down", "ip set"),
    ("ip -ba /tmp/cmds", "-batch"),
    ("ip route flush all", "flush"),
    ("nft flush ruleset", "only list"),
    ("nft -f /tmp/rules", "-f"),
    ("iptables -F", "listing"),
    ("ss -K dst 10.0.0.1", "-K"),
    ("dmesg -C", "-C"),
    ("pgbackrest --stanza=main backup", "backup is not read-only"),
    ('psql -XAtc "DELETE FROM orders"', "not a single SELECT"),
    ('psql -c "SELECT 1; DROP TABLE t"', "not a single SELECT"),
    ('psql -c "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d"', "DELETE"),
    ('psql -c "SELECT pg_terminate_backend(42)"', "pg_terminate_backend"),
    ('psql -c "SELECT pg_switch_wal()"', "pg_switch_wal"),
    ("psql -f /tmp/script.sql", "-f"),
    ("psql", "without -c"),
    ('psql -c "\\\\! reboot"', "backslashes"),
    ("top", "-b"),
]


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_pass(command):
    checked = check_command(command)
    assert checked.segments and checked.remote


@pytest.mark.parametrize(("command", "why"), WRITES, ids=[c for c, _ in WRITES])
def test_commands_that_can_write_are_refused_saying_why(command, why):
    with pytest.raises(NotReadOnly) as refused:
        check_command(command)
    assert why in str(refused.value)


def test_psql_runs_in_a_read_only_transaction_whatever_the_query_says():
    checked = check_command('sudo -n -u postgres psql -XAtc "SELECT 1"')
    assert checked.segments[0][:6] == (
        "sudo", "-n", "-u", "postgres", "env", "PGOPTIONS=-c default_transaction_read_only=on",
    )  # fmt: skip


def test_what_is_sent_is_the_checked_words_quoted():
    checked = check_command('sudo -n find /etc -newermt "2 days ago" | head -n 5')
    assert checked.remote == "sudo -n find /etc -newermt '2 days ago' | head -n 5"
    assert [shlex.split(part) for part in checked.remote.split(" | ")] == [
        list(s) for s in checked.segments
    ]


SHELL_OPERATORS = st.sampled_from([";", "&&", "||", "&", ">", ">>", "<", "$(", "`"])


@given(
    left=st.sampled_from(["uptime", "df -h", "cat /etc/hosts", "systemctl status ssh"]),
    operator=SHELL_OPERATORS,
    right=st.text(alphabet="abcdefghijklmnop /-.", min_size=1, max_size=20),
)
def test_any_unquoted_shell_operator_is_refused(left, operator, right):
    with pytest.raises(NotReadOnly):
        check_command(f"{left} {operator} {right}")
