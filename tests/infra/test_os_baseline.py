"""os_baseline verified on real hosts; every expectation comes from the host's inventory."""

from __future__ import annotations

import re
import time

import pytest

SUITE = "os_baseline"
APPLIES_TO = "all"


def _sysctl(t):
    return sorted(
        {**t.expect["os_baseline_sysctl"], **t.expect["os_baseline_sysctl_extra"]}.items()
    )


PARAMS = {
    "package": lambda t: (
        t.expect["os_baseline_packages"]
        + t.expect["os_baseline_group_packages"]
        + t.expect["os_baseline_host_packages"]
    ),
    "absent_package": lambda t: t.expect["os_baseline_packages_absent"],
    "admin": lambda t: [
        u for u in t.expect["os_baseline_admin_users"] if u.get("state", "present") == "present"
    ],
    "removed_user": lambda t: (
        t.expect["os_baseline_removed_users"]
        + [u["name"] for u in t.expect["os_baseline_admin_users"] if u.get("state") == "absent"]
    ),
    "sysctl": _sysctl,
    "sshd_algorithms": lambda t: [
        ("kexalgorithms", t.expect["os_baseline_sshd_kex_algorithms"]),
        ("ciphers", t.expect["os_baseline_sshd_ciphers"]),
        ("macs", t.expect["os_baseline_sshd_macs"]),
        ("hostkeyalgorithms", t.expect["os_baseline_sshd_host_key_algorithms"]),
    ],
    "ntp_server": lambda t: t.expect["os_baseline_ntp_servers"],
    "sensitive_file": lambda t: t.expect["os_baseline_file_permissions"],
    "login_def": lambda t: [
        ("PASS_MAX_DAYS", str(t.expect["os_baseline_pass_max_days"])),
        ("PASS_MIN_DAYS", str(t.expect["os_baseline_pass_min_days"])),
        ("PASS_WARN_AGE", str(t.expect["os_baseline_pass_warn_age"])),
        ("ENCRYPT_METHOD", "SHA512"),
        ("SHA_CRYPT_MIN_ROUNDS", str(t.expect["os_baseline_sha_crypt_rounds"])),
        ("SHA_CRYPT_MAX_ROUNDS", str(t.expect["os_baseline_sha_crypt_rounds"])),
    ],
    "blacklisted_module": lambda t: t.expect["os_baseline_blacklisted_modules"],
    # A log host expects every other host of the inventory to send to it: inventories set
    # os_baseline_syslog_servers once for all hosts (from the logging group).
    "log_client": lambda t: (
        [h for h in t.expect["groups"]["all"] if h not in t.expect["os_baseline_syslog_servers"]]
        if t.expect["os_baseline_logserver_enabled"]
        and t.name in t.expect["os_baseline_syslog_servers"]
        else []
    ),
}


_NOLOGIN = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")


def _accounts(host) -> list[tuple[str, int, str, str]]:
    """(name, uid, home, shell) of every account in /etc/passwd."""
    rows = []
    for line in host.file("/etc/passwd").content_string.splitlines():
        fields = line.split(":")
        if len(fields) == 7:
            rows.append((fields[0], int(fields[2]), fields[5], fields[6]))
    return rows


@pytest.fixture
def sshd(host):
    """Effective sshd settings (`sshd -T`): what the daemon really applies, not the file."""
    out = host.check_output("/usr/sbin/sshd -T")
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        settings[key] = value if key not in settings else f"{settings[key]} {value}"
    return settings


def test_controller_login_survives_hardening_os_ssh_00(host, target, expect):
    if not target.hostspec.startswith("ssh://"):
        pytest.skip("reached through podman, not SSH: no login to lose")
    # This test logged in over SSH as Ansible's user, with Ansible's key, through the hardened
    # sshd and the firewall; sudo records who that login was.
    assert host.check_output("printenv SUDO_USER") == expect["ansible_user"]


def test_package_installed_os_pkg_01(host, package):
    assert host.package(package).is_installed


def test_insecure_package_absent_os_pkg_02(host, absent_package):
    assert not host.package(absent_package).is_installed


def test_apt_network_waits_bounded_os_pkg_03(host, expect):
    config = host.run("apt-config dump").stdout.splitlines()
    assert f'Acquire::http::Timeout "{expect["os_baseline_apt_timeout"]}";' in config
    assert f'Acquire::Retries "{expect["os_baseline_apt_retries"]}";' in config


def test_admin_user_in_admin_group_with_locked_password_os_usr_01(host, expect, admin):
    user = host.user(admin["name"])
    assert user.exists
    assert expect["os_baseline_admin_group"] in user.groups
    assert user.shell == admin.get("shell", "/bin/bash")
    assert user.password.startswith("!")  # key-only: no password can be used


def test_admin_user_has_exactly_the_listed_keys_os_usr_02(host, admin):
    keys_file = host.file(f"{host.user(admin['name']).home}/.ssh/authorized_keys")
    assert keys_file.exists and keys_file.user == admin["name"] and keys_file.mode == 0o600
    present = {
        " ".join(line.split()[:2])
        for line in keys_file.content_string.splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert present == {" ".join(k.split()[:2]) for k in admin["ssh_keys"]}


def test_removed_user_is_absent_os_usr_03(host, removed_user):
    assert not host.user(removed_user).exists


def test_admin_group_sudo_rule_os_sudo_01(host, expect):
    rule = host.file("/etc/sudoers.d/50-opsledger-admins")
    assert rule.mode == 0o440 and rule.user == "root"
    no_password = expect["os_baseline_sudo_nopasswd"]
    nopasswd = "NOPASSWD: " if no_password else ""  # pragma: allowlist secret
    assert (
        f"%{expect['os_baseline_admin_group']} ALL=(ALL:ALL) {nopasswd}ALL" in rule.content_string
    )
    assert host.run("visudo -c").rc == 0


def test_sshd_running_on_its_port_os_ssh_01(host, expect, sshd):
    assert host.service("ssh").is_running
    assert sshd["port"] == str(expect["os_baseline_sshd_port"])


def test_sshd_no_root_login_os_ssh_01(sshd):
    assert sshd["permitrootlogin"] == "no"


def test_sshd_keys_only_os_ssh_02(sshd):
    assert sshd["passwordauthentication"] == "no"
    assert sshd["kbdinteractiveauthentication"] == "no"
    assert sshd["permitemptypasswords"] == "no"
    assert sshd["authenticationmethods"] == "publickey"


def test_sshd_only_modern_algorithms_os_ssh_03(sshd, sshd_algorithms):
    setting, expected = sshd_algorithms
    assert sshd[setting].split(",") == expected


def test_sshd_session_limits_os_ssh_04(sshd, expect):
    assert sshd["maxauthtries"] == str(expect["os_baseline_sshd_max_auth_tries"])
    assert sshd["x11forwarding"] == "no"
    assert sshd["allowtcpforwarding"] == "no"
    assert sshd["allowagentforwarding"] == "no"
    assert sshd["banner"] == "/etc/issue.net"
    assert sshd.get("allowgroups", "").split() == expect["os_baseline_sshd_allow_groups"]


def test_sysctl_setting_is_written_os_sys_01(host, sysctl):
    key, value = sysctl
    content = host.file("/etc/sysctl.d/90-opsledger-baseline.conf").content_string
    assert f"{key} = {value}" in content.splitlines()


def test_sysctl_setting_is_live_os_sys_02(host, sysctl, skip_if_waived):
    skip_if_waived("OS-SYS-02")
    key, value = sysctl
    assert host.sysctl(key) == value


def test_chrony_running_os_time_01(host):
    assert host.service("chrony").is_running
    assert host.service("chrony").is_enabled


def test_chrony_uses_configured_server_os_time_01(host, ntp_server):
    assert f"server {ntp_server} iburst" in host.file("/etc/chrony/chrony.conf").content_string


def test_chrony_serves_configured_networks_os_time_01(host, expect):
    config = host.file("/etc/chrony/chrony.conf").content_string.splitlines()
    assert [line for line in config if line.startswith("allow ")] == [
        f"allow {n}" for n in expect["os_baseline_chrony_allow"]
    ]


def test_journald_retention_os_log_01(host, expect):
    out = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    effective = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#")
    )
    assert effective["Storage"] == expect["os_baseline_journald_storage"]
    assert effective["SystemMaxUse"] == expect["os_baseline_journald_system_max_use"]
    assert effective["MaxRetentionSec"] == expect["os_baseline_journald_max_retention"]


def test_logrotate_defaults_os_log_02(host, expect):
    lines = host.file("/etc/logrotate.conf").content_string.splitlines()
    assert expect["os_baseline_logrotate_frequency"] in lines
    assert f"rotate {expect['os_baseline_logrotate_rotate']}" in lines
    assert ("compress" in lines) == expect["os_baseline_logrotate_compress"]


def test_unattended_security_upgrades_os_upd_01(host, expect):
    assert host.package("unattended-upgrades").is_installed
    dump = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    origins = [
        line.split(" ", 1)[1].strip('";')
        for line in dump.splitlines()
        if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")
    ]
    assert origins == expect["os_baseline_updates_origins"]


def test_no_security_update_left_pending_os_upd_02(host, expect):
    """Where the inventory asks for it, a converge leaves no security update uninstalled."""
    if not expect["os_baseline_updates_install_at_converge"]:
        pytest.skip("security updates wait for the daily run or an os-patch change here")
    out = host.check_output("LC_ALL=C apt-get -s -o Debug::NoLocking=1 upgrade")
    pending = [line for line in out.splitlines() if line.startswith("Inst ") and "ecurity" in line]
    assert pending == []


def test_login_banner_os_ban_01(host, expect):
    for path in ("/etc/issue.net", "/etc/issue"):
        assert host.file(path).content_string == expect["os_baseline_banner_text"]


def test_sensitive_file_permissions_os_perm_01(host, sensitive_file):
    f = host.file(sensitive_file["path"])
    assert (f.user, f.group, oct(f.mode)) == (
        sensitive_file["owner"],
        sensitive_file["group"],
        oct(int(sensitive_file["mode"], 8)),
    )


def test_auditd_running_with_rules_os_aud_01(host, expect, skip_if_waived):
    skip_if_waived("OS-AUD-01")
    assert host.service("auditd").is_running
    loaded = host.check_output("auditctl -l")
    for rule in expect["os_baseline_auditd_rules"]:
        assert rule.split(" -k ")[-1] in loaded


def test_banner_names_no_os_or_kernel_os_ban_01(host):
    for path in ("/etc/issue.net", "/etc/issue"):
        content = host.file(path).content_string
        assert not any(f"\\{escape}" in content for escape in "mrsv"), path


def test_sshd_session_limits_os_ssh_05(sshd, expect):
    assert sshd["maxsessions"] == str(expect["os_baseline_sshd_max_sessions"])
    assert sshd["maxstartups"] == expect["os_baseline_sshd_max_startups"]
    assert sshd["logingracetime"] == str(expect["os_baseline_sshd_login_grace_time"])
    assert sshd["clientaliveinterval"] == str(expect["os_baseline_sshd_client_alive_interval"])
    assert sshd["clientalivecountmax"] == str(expect["os_baseline_sshd_client_alive_count_max"])
    assert sshd["loglevel"] == "VERBOSE"
    assert sshd["compression"] == "no"
    assert sshd["permituserenvironment"] == "no"
    assert sshd["disableforwarding"] == "yes"
    assert sshd["allowstreamlocalforwarding"] == "no"


def test_login_defs_password_ageing_and_hashing_os_acc_01(host, login_def):
    key, value = login_def
    settings = [
        line.split()
        for line in host.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [v for k, *v in settings if k == key] == [[value]]


def test_default_umask_os_acc_02(host, expect):
    lines = host.file("/etc/login.defs").content_string.splitlines()
    assert f"UMASK\t{expect['os_baseline_umask']}" in lines
    assert "pam_umask.so" in host.file("/etc/pam.d/common-session").content_string


def test_admin_user_password_never_expires_os_acc_01(host, admin):
    # Key-only admins: an expired password would make PAM refuse even a key login.
    fields = host.check_output(f"getent shadow {admin['name']}").split(":")
    assert fields[4] in ("", "99999")


def test_system_accounts_have_no_login_shell_os_acc_03(host, expect):
    exempt = set(expect["os_baseline_system_accounts_exempt"])
    with_shell = [
        name
        for name, uid, _home, shell in _accounts(host)
        if (uid < expect["os_baseline_uid_min"] or uid == 65534)
        and name not in exempt
        and shell not in _NOLOGIN
    ]
    assert with_shell == []


def test_system_accounts_are_locked_os_acc_03(host, expect):
    exempt = set(expect["os_baseline_system_accounts_exempt"])
    system = {
        name
        for name, uid, _home, _shell in _accounts(host)
        if (uid < expect["os_baseline_uid_min"] or uid == 65534) and name not in exempt
    }
    shadow = dict(line.split(":")[:2] for line in host.check_output("getent shadow").splitlines())
    assert [n for n in sorted(system) if n in shadow and not shadow[n].startswith(("!", "*"))] == []


def test_interactive_homes_closed_to_others_os_acc_04(host, expect):
    loose = []
    for name, uid, home, _shell in _accounts(host):
        if uid < expect["os_baseline_uid_min"] or uid == 65534 or not home.startswith("/"):
            continue
        folder = host.file(home)
        if folder.is_directory and not folder.is_symlink and folder.mode & 0o027:
            loose.append(f"{name}:{home}:{oct(folder.mode)}")
    assert loose == []


def test_pwquality_in_password_stack_os_pam_01(host):
    assert host.package("libpam-pwquality").is_installed
    assert "pam_pwquality.so" in host.file("/etc/pam.d/common-password").content_string


def test_password_quality_rules_os_pam_01(host, expect):
    lines = [
        line.replace(" ", "")
        for line in host.file("/etc/security/pwquality.conf").content_string.splitlines()
    ]
    for key in ("minlen", "minclass", "difok", "maxrepeat", "maxsequence"):
        assert f"{key}={expect[f'os_baseline_pwquality_{key}']}" in lines
    assert "enforce_for_root" in lines


def test_faillock_in_auth_stack_os_pam_02(host, expect):
    auth = host.file("/etc/pam.d/common-auth").content_string
    assert "pam_faillock.so preauth" in auth and "pam_faillock.so authfail" in auth
    assert "pam_faillock.so" in host.file("/etc/pam.d/common-account").content_string
    lines = [
        line.replace(" ", "")
        for line in host.file("/etc/security/faillock.conf").content_string.splitlines()
    ]
    assert f"deny={expect['os_baseline_faillock_deny']}" in lines
    assert f"unlock_time={expect['os_baseline_faillock_unlock_time']}" in lines


def test_per_user_tmp_os_pam_03(host):
    assert host.package("libpam-tmpdir").is_installed
    assert "pam_tmpdir.so" in host.file("/etc/pam.d/common-session").content_string


def test_core_dumps_off_os_krn_01(host):
    limits = host.file("/etc/security/limits.d/90-opsledger-coredump.conf").content_string
    assert ["*", "hard", "core", "0"] in [line.split() for line in limits.splitlines()]
    out = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    effective = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#")
    )
    assert effective["Storage"] == "none"
    assert effective["ProcessSizeMax"] == "0"


def test_module_cannot_load_os_krn_02(host, blacklisted_module):
    lines = host.file("/etc/modprobe.d/90-opsledger-blacklist.conf").content_string.splitlines()
    assert f"install {blacklisted_module} /bin/false" in lines
    assert f"blacklist {blacklisted_module}" in lines


def test_module_not_loaded_os_krn_03(host, blacklisted_module, skip_if_waived):
    skip_if_waived("OS-KRN-03")
    loaded = {line.split()[0] for line in host.file("/proc/modules").content_string.splitlines()}
    assert blacklisted_module.replace("-", "_") not in loaded


def test_rsyslog_forwards_to_log_hosts_over_tcp_os_log_03(host, target, expect):
    assert host.service("rsyslog").is_running
    assert host.run("rsyslogd -N1").rc == 0
    wanted = [s for s in expect["os_baseline_syslog_servers"] if s != target.name]
    forward = host.file("/etc/rsyslog.d/90-opsledger-forward.conf")
    if not wanted:
        assert not forward.exists
        return
    config = forward.content_string
    assert f'global(localHostname="{target.name}")' in config
    forwards = re.findall(r'target="([^"]+)" port="(\d+)" protocol="tcp"', config)
    assert forwards == [(s, str(expect["os_baseline_syslog_port"])) for s in wanted]


def test_log_host_listens_on_tcp_os_log_04(host, expect):
    if not expect["os_baseline_logserver_enabled"]:
        pytest.skip("not a central log host")
    assert host.socket(f"tcp://0.0.0.0:{expect['os_baseline_syslog_port']}").is_listening


def test_log_host_receives_the_host_logs_os_log_04(host, expect, log_client):
    """Each sender's messages arrive in its own folder (they may need a retry interval)."""
    folder = f"{expect['os_baseline_logserver_dir']}/{log_client}"
    deadline = time.monotonic() + 3 * expect["os_baseline_syslog_retry_seconds"] + 30
    while host.run(f"ls {folder}/*.log").rc != 0 and time.monotonic() < deadline:
        time.sleep(2)
    assert host.run(f"ls {folder}/*.log").rc == 0, f"nothing received from {log_client}"


def test_log_host_keeps_logs_for_retention_os_log_05(host, expect):
    if not expect["os_baseline_logserver_enabled"]:
        pytest.skip("not a central log host")
    rotate = host.file("/etc/logrotate.d/opsledger-remote").content_string.split()
    days = str(expect["os_baseline_logserver_retention_days"])
    assert f"{expect['os_baseline_logserver_dir']}/*/*.log" in rotate
    assert rotate[rotate.index("rotate") + 1] == days and "daily" in rotate
    assert host.run("logrotate --debug /etc/logrotate.d/opsledger-remote").rc == 0


def test_process_accounting_enabled_os_act_01(host):
    assert host.package("acct").is_installed
    assert host.service("acct").is_enabled


def test_process_accounting_running_os_act_02(host, skip_if_waived):
    skip_if_waived("OS-ACT-02")
    assert host.service("acct").is_running


def test_sysstat_collecting_os_act_03(host):
    assert 'ENABLED="true"' in host.file("/etc/default/sysstat").content_string.splitlines()
    assert host.service("sysstat-collect.timer").is_enabled
    assert host.service("sysstat-collect.timer").is_running


def test_integrity_tools_installed_os_int_01(host):
    for package in ("debsums", "needrestart", "apt-show-versions"):
        assert host.package(package).is_installed, package
    # Every packaged file that is not configuration still matches its package's checksum.
    # Documentation a minimal image leaves out (dpkg path-exclude) is "missing", not changed.
    check = host.run("debsums --silent")
    problems = [
        line
        for line in (check.stdout + check.stderr).splitlines()
        if line.strip() and "missing file /usr/share/" not in line
    ]
    assert problems == []


def test_needrestart_only_lists_os_int_02(host):
    assert host.run("needrestart -b -r l").rc == 0
    conf = host.file("/etc/needrestart/conf.d/90-opsledger.conf").content_string
    assert "$nrconf{restart} = 'l';" in conf


def test_fail2ban_guards_sshd_os_ips_01(host, expect):
    assert host.service("fail2ban").is_running
    status = host.check_output("fail2ban-client status sshd")
    assert "Currently banned" in status
    ignored = host.check_output("fail2ban-client get sshd ignoreip")
    for address in expect["os_baseline_fail2ban_ignoreip"]:
        assert address in ignored


def test_aide_baseline_taken_over_the_listed_paths_os_aide_01(host, expect):
    """The baseline and its rules are in place. Comparing the files with it is the daily
    check's and the file_integrity inspection's job, not a change's verification: a hand edit
    since the last baseline (even one undone) is a security finding of its own, and must not
    fail, and so roll back, an unrelated change."""
    assert host.file("/var/lib/aide/opsledger.db").exists
    config = host.file("/etc/aide/opsledger.conf").content_string.splitlines()
    for path in expect["os_baseline_aide_paths"]:
        assert f"{path} OpsledgerRule" in config


def test_aide_checks_daily_os_aide_02(host):
    assert host.service("opsledger-aide-check.timer").is_enabled
    assert host.service("opsledger-aide-check.timer").is_running
    assert host.file("/var/lib/aide/opsledger-check.rc").content_string.strip() == "0"


def test_aide_check_unit_sandboxed_os_aide_02(host, expect):
    out = host.check_output("systemd-analyze security --no-pager opsledger-aide-check.service")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= float(expect["os_baseline_systemd_security_max_exposure"]), out
