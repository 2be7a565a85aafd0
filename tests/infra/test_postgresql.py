"""postgresql verified on real hosts: the live server agrees with the inventory."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex

import pytest

SUITE = "postgresql"
APPLIES_TO = "db"
# pgBackRest's log folder (the role's postgresql__backup_log_path, not an option).
BACKUP_LOG_PATH = "/var/log/pgbackrest"


def _params(t) -> list[tuple[str, object]]:
    merged = {
        **t.expect["postgresql_parameters"],
        **t.expect["postgresql_group_parameters"],
        **t.expect["postgresql_host_parameters"],
    }
    if t.expect["postgresql_backup_enabled"]:
        stanza = t.expect["postgresql_backup_stanza"]
        merged |= {
            "archive_mode": "on",
            "wal_level": "replica",
            "archive_command": f"'pgbackrest --stanza={stanza} archive-push %p'",
            "archive_timeout": t.expect["postgresql_backup_archive_timeout"],
        }
    return sorted(merged.items())


def _hba(t) -> list[dict]:
    entries = (
        t.expect["postgresql_hba_entries"]
        + t.expect["postgresql_group_hba_entries"]
        + t.expect["postgresql_host_hba_entries"]
    )
    if t.expect["postgresql_replication_enabled"]:
        entries += [
            {
                "type": "host",
                "database": "replication",
                "user": t.expect["postgresql_replication_user"],
                "address": source,
                "method": "scram-sha-256",
            }
            for source in t.expect["postgresql_replication_sources"]
        ]
    return entries


PARAMS = {
    "parameter": _params,
    "hba_entry": _hba,
    "db_user": lambda t: [
        u for u in t.expect["postgresql_users"] if u.get("state", "present") == "present"
    ],
    "database": lambda t: [
        d for d in t.expect["postgresql_databases"] if d.get("state", "present") == "present"
    ],
    "timer": lambda t: (
        ["pgbackrest-full.timer", "pgbackrest-diff.timer"]
        if t.expect["postgresql_backup_enabled"]
        and t.expect["postgresql_replication_role"] == "primary"
        else []
    ),
}


@pytest.fixture
def sql(host, expect):
    """Run a query as postgres over the local socket; rows as lists of strings."""
    port = expect["postgresql_port"]

    def run(query: str) -> list[list[str]]:
        out = host.check_output(
            f"runuser -u postgres -- psql -XAt -F '\t' -p {port} -c {shlex.quote(query)}"
        )
        return [line.split("\t") for line in out.splitlines() if line]

    return run


def test_postgresql_installed_and_running_pg_inst_01(host, expect):
    version = expect["postgresql_version"]
    for package in (f"postgresql-{version}", "pgbackrest"):
        assert host.package(package).is_installed
    service = host.service(f"postgresql@{version}-{expect['postgresql_cluster']}")
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://0.0.0.0:{expect['postgresql_port']}").is_listening


def test_server_runs_the_pinned_version_pg_inst_02(host, expect):
    """postgresql_package_version is the desired state a pg-minor-upgrade leaves behind."""
    pinned = expect["postgresql_package_version"]
    if not pinned:
        pytest.skip("no version pinned (postgresql_package_version is empty)")
    version = expect["postgresql_version"]
    for package in (f"postgresql-{version}", f"postgresql-client-{version}"):
        assert host.package(package).version == pinned


def test_parameter_applied_pg_conf_01(sql, parameter):
    name, value = parameter
    rows = sql(
        "SELECT setting, applied, coalesce(error, '') FROM pg_file_settings "
        f"WHERE name = '{name}' AND sourcefile LIKE '%/90-opsledger.conf'"
    )
    assert rows, f"{name} is not in conf.d/90-opsledger.conf"
    setting, applied, error = rows[-1]
    assert setting == str(value).strip("'")
    assert error == "" and applied == "t", f"{name} is written but not in force"


def test_no_restart_pending_pg_conf_01(sql):
    assert sql("SELECT name FROM pg_settings WHERE pending_restart") == []


def test_hba_entry_in_force_pg_hba_01(sql, hba_entry):
    rows = sql(
        "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), "
        "coalesce(address, ''), coalesce(netmask, ''), auth_method "
        "FROM pg_hba_file_rules WHERE error IS NULL"
    )
    live = set()
    for type_, db, user, address, netmask, method in rows:
        prefix = bin(int(ipaddress.ip_address(netmask))).count("1") if netmask else 0
        network = str(ipaddress.ip_network(f"{address}/{prefix}")) if address else ""
        live.add((type_, db, user, network, method))
    address = hba_entry.get("address", "")
    wanted = (
        hba_entry["type"],
        hba_entry["database"],
        hba_entry["user"],
        str(ipaddress.ip_network(address)) if address else "",
        hba_entry["method"],
    )
    assert wanted in live


def test_hba_has_no_rejected_lines_pg_hba_01(sql):
    assert sql("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL") == []


def test_database_role_exists_pg_role_01(sql, db_user):
    rows = sql(
        f"SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid "
        f"WHERE rolname = '{db_user['name']}'"
    )
    assert rows, f"role {db_user['name']} missing"
    can_login, has_password = rows[0]
    flags = {f.strip().upper() for f in db_user.get("role_attr_flags", "").split(",")}
    assert can_login == ("t" if "LOGIN" in flags else "f")
    assert has_password == ("t" if db_user.get("password") else "f")


def test_database_exists_with_owner_pg_db_01(sql, database):
    rows = sql(
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database['name']}'"
    )
    assert rows == [[database.get("owner", "postgres")]]


def test_monitoring_role_has_pg_monitor_pg_mon_01(sql, expect):
    user = expect["postgresql_monitoring_user"]
    assert sql(f"SELECT pg_has_role('{user}', 'pg_monitor', 'member')") == [["t"]]


def test_replication_role_pg_rep_01(sql, expect):
    standby = expect["postgresql_replication_role"] == "standby"
    assert sql("SELECT pg_is_in_recovery()") == [["t" if standby else "f"]]
    user = expect["postgresql_replication_user"]
    assert sql(f"SELECT rolreplication FROM pg_roles WHERE rolname = '{user}'") == [["t"]]


def test_standby_streams_from_its_primary_pg_rep_01(sql, expect):
    if expect["postgresql_replication_role"] != "standby":
        pytest.skip("not a standby")
    rows = sql("SELECT status, conninfo FROM pg_stat_wal_receiver")
    assert rows and rows[0][0] == "streaming"
    assert f"host={expect['postgresql_replication_primary_host']}" in rows[0][1]


def _backup_labels(host, stanza: str) -> set[str]:
    info = json.loads(
        host.check_output(f"runuser -u postgres -- pgbackrest --stanza={stanza} --output=json info")
    )
    return {b["label"] for b in info[0]["backup"]}


def test_lock_folder_shared_by_every_command_pg_br_01(host, expect):
    """Outside /tmp, which the sandboxed backup unit sees privately; made again at every boot."""
    path = expect["postgresql_backup_lock_path"]
    folder = host.file(path)
    assert folder.is_directory and folder.user == "postgres" and folder.mode == 0o750
    # What pgBackRest itself resolves from its configuration, for any command run as postgres.
    help_ = host.check_output(
        f"runuser -u postgres -- pgbackrest --stanza={expect['postgresql_backup_stanza']} "
        "help backup lock-path"
    )
    assert f"current: {path}" in help_, help_
    tmpfiles = host.check_output("systemd-tmpfiles --cat-config")
    assert f"d {path} 0750 postgres postgres -" in tmpfiles.splitlines()


def test_backup_repository_healthy_pg_br_01(host, expect):
    stanza = expect["postgresql_backup_stanza"]
    info = json.loads(
        host.check_output(f"runuser -u postgres -- pgbackrest --stanza={stanza} --output=json info")
    )
    assert info[0]["status"]["message"] == "ok"
    config = host.file("/etc/pgbackrest.conf").content_string
    assert f"repo1-path={expect['postgresql_backup_repo_path']}" in config


def test_wal_archiving_reaches_the_repository_pg_br_02(host, expect, sql):
    assert sql("SELECT current_setting('archive_mode')") == [["on"]]
    if expect["postgresql_replication_role"] != "primary":
        pytest.skip("WAL is archived by the primary")
    check = host.run(
        f"runuser -u postgres -- pgbackrest --stanza={expect['postgresql_backup_stanza']} check"
    )
    assert check.rc == 0, check.stderr
    assert sql(
        "SELECT failed_count = 0 OR last_failed_time < last_archived_time FROM pg_stat_archiver"
    ) == [["t"]]


def test_archive_timeout_holds_after_every_start_pg_br_05(host, expect):
    service = f"postgresql@{expect['postgresql_version']}-{expect['postgresql_cluster']}"
    post = host.check_output(f"systemctl show {service} -p ExecStartPost")
    assert "pg_ctlcluster" in post and "reload" in post, post


def test_wal_archived_continuously_up_to_now_pg_br_06(host, expect):
    # Not "can one segment be pushed" (PG-BR-02) but "is every commit older than
    # archive_timeout + margin in the repository, on the current timeline".
    if expect["postgresql_replication_role"] != "primary":
        pytest.skip("WAL is archived by the primary")
    status = host.run(
        f"cd /tmp && runuser -u postgres -- pg-archive-status "
        f"--stanza={expect['postgresql_backup_stanza']} --port={expect['postgresql_port']} "
        f"--margin={expect['postgresql_backup_archive_margin']}"
    )
    report = json.loads(status.stdout)
    assert status.rc == 0 and report["ok"], report["findings"]


def test_a_full_backup_exists_pg_br_03(host, expect):
    info = json.loads(
        host.check_output(
            f"runuser -u postgres -- pgbackrest --stanza={expect['postgresql_backup_stanza']} "
            "--output=json info"
        )
    )
    assert any(b["type"] == "full" for b in info[0]["backup"])


def test_backup_timer_scheduled_pg_br_04(host, timer):
    unit = host.service(timer)
    assert unit.is_enabled and unit.is_running


def test_a_standby_schedules_no_backups_pg_br_04(host, expect):
    """A former primary (after a switchover) keeps its timer files; they must not run there."""
    if expect["postgresql_replication_role"] != "standby":
        pytest.skip("the primary schedules the backups")
    for timer in ("pgbackrest-full.timer", "pgbackrest-diff.timer"):  # often not there at all
        assert host.run(f"systemctl is-active {timer}").stdout.strip() != "active", timer
        assert host.run(f"systemctl is-enabled {timer}").stdout.strip() != "enabled", timer


def test_backup_unit_sandboxed_pg_br_04(host, expect):
    """`systemd-analyze security` grades the backup unit no worse than the inventory allows."""
    if expect["postgresql_replication_role"] != "primary":
        pytest.skip("the backup unit runs on the primary")
    out = host.check_output("systemd-analyze security --no-pager pgbackrest-backup@full.service")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= float(expect["postgresql_systemd_security_max_exposure"]), out
    props = host.check_output(
        "systemctl show -p NoNewPrivileges -p ProtectSystem -p PrivateTmp "
        "pgbackrest-backup@full.service"
    ).splitlines()
    assert {"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"} <= set(props)


def test_sandboxed_backup_unit_takes_a_backup_pg_br_04(host, expect, target):
    """The sandbox lets a real backup through: the repository, log and lock folder writable.

    Takes one differential backup (a full one if the repository has none), as the diff timer
    would; a `pgbackrest stop` in force fails it, as it would the scheduled backup. Only on
    Molecule's throwaway instances (whose primary has CAP_SYS_ADMIN, so systemd enforces the
    mount sandbox): verifying a real environment after every change must not take backups,
    push scheduled ones out of retention, or load the primary.
    """
    if target.environment != "molecule":
        pytest.skip("takes a backup: runs on Molecule's throwaway instances only")
    if expect["postgresql_replication_role"] != "primary":
        pytest.skip("backups run on the primary")
    stanza = expect["postgresql_backup_stanza"]
    before = _backup_labels(host, stanza)
    started = host.run("systemctl start pgbackrest-backup@diff.service")
    journal = host.run("journalctl -u pgbackrest-backup@diff.service -n 30 --no-pager").stdout
    assert started.rc == 0, started.stderr + journal
    new = _backup_labels(host, stanza) - before
    assert new, f"no new backup in the repository\n{journal}"
    # pgBackRest carries on without its log file when it cannot write it: check it wrote it.
    log = host.file(f"{BACKUP_LOG_PATH}/{stanza}-backup.log").content_string
    assert any(f"new backup label = {label}" in log for label in new), journal
