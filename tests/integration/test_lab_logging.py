"""Central logging and the hardening controls that span hosts, on the converged lab.

A message logged on an app host arrives on the lab's central log host (group `logging`) under
the sender's inventory name; fail2ban on a host never bans the controller; a file changed by
hand is what the next daily AIDE check reports.
"""

from __future__ import annotations

import time
import uuid

import pytest

from opsledger.inventory import load_inventory
from opsledger.lab.service import load_spec, run_on_host

pytestmark = pytest.mark.lab


def _log_hosts(project) -> list[str]:
    inventory = load_inventory(project.root / "inventories" / "lab")
    return [h.name for h in inventory.hosts.values() if "logging" in h.groups]


def test_a_message_from_every_host_reaches_the_central_log_host(converged_lab):
    log_hosts = _log_hosts(converged_lab)
    if not log_hosts:
        pytest.skip("the lab inventory has no host in group logging")
    senders = [h.name for h in load_spec(converged_lab).hosts if h.name not in log_hosts]
    marker = f"opsledger-logtest-{uuid.uuid4().hex[:12]}"
    for sender in senders:
        sent = run_on_host(converged_lab, sender, f"logger -t opsledger-logtest {marker}-{sender}")
        assert sent.returncode == 0, sent.stderr
    for log_host in log_hosts:
        missing = list(senders)
        deadline = time.monotonic() + 60
        while missing and time.monotonic() < deadline:
            missing = [
                s
                for s in missing
                if run_on_host(
                    converged_lab,
                    log_host,
                    f"sudo grep -qF {marker}-{s} /var/log/remote/{s}/opsledger-logtest.log",
                ).returncode
                != 0
            ]
            time.sleep(2)
        assert missing == [], f"{log_host} received nothing from {missing}"


def test_the_daily_aide_check_names_a_file_changed_by_hand(converged_lab):
    host = load_spec(converged_lab).hosts[0].name
    path = "/etc/opsledger-aide-probe"
    try:
        made = run_on_host(converged_lab, host, f"echo probe | sudo tee {path} >/dev/null")
        assert made.returncode == 0, made.stderr
        ran = run_on_host(converged_lab, host, "sudo systemctl start opsledger-aide-check.service")
        assert ran.returncode == 0, ran.stderr
        code = run_on_host(converged_lab, host, "sudo cat /var/lib/aide/opsledger-check.rc")
        assert int(code.stdout.strip()) & 1  # AIDE's exit code: bit 1 = entries added
        report = run_on_host(converged_lab, host, "sudo cat /var/log/aide/opsledger-check.log")
        assert f": {path}" in report.stdout
    finally:
        run_on_host(converged_lab, host, f"sudo rm -f {path}")
        # A new baseline (removing the probe changed /etc itself) and a clean check, so later
        # tests and inspections do not report this test's probe.
        run_on_host(
            converged_lab,
            host,
            "sudo sh -c 'aide --config /etc/aide/opsledger.conf --init >/dev/null; "
            "mv /var/lib/aide/opsledger.db.new /var/lib/aide/opsledger.db' && "
            "sudo systemctl start opsledger-aide-check.service",
        )
