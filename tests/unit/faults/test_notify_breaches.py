"""SLA breaches and near breaches reach the team's channels: an incident on git time whose
clock passes its target (or its near-breach share) is notified once, by the scheduled run after
that instant, to real receivers on 127.0.0.1 (an HTTP server, an SMTP sink) through Apprise."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opsledger.faults.incidents import acknowledge, open_incident
from opsledger.notify import notify_breaches

from .conftest import T0

POLICY = """\
---
channels:
  hook: {kind: webhook, url_env: OPSLEDGER_NOTIFY_HOOK}
routes:
  - events: [sla_breach]
    environments: [lab]
    channels: [hook]
"""


def test_a_breached_response_clock_is_told_once(fault_repo, monkeypatch):
    project = fault_repo
    (project.root / "policies" / "notifications.yml").write_text(POLICY)
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPSLEDGER_NOTIFY_HOOK", f"json://127.0.0.1:{server.server_address[1]}/")
    try:
        opened = open_incident(
            project,
            title="Orders page times out",
            person="alice",
            klass="software",
            impact="high",
            urgency="high",
            hosts=("lab-app1",),
        )
        incident = opened.incident.id
        period = dt.timedelta(minutes=15)
        early = notify_breaches(project, within=period, now=T0 + dt.timedelta(minutes=5))
        assert early.breaches == [] and received == []
        # The run after the response deadline tells it; the one after that does not again.
        found = []
        for minutes in range(0, 24 * 60, 15):
            moment = T0 + dt.timedelta(minutes=minutes)
            report = notify_breaches(project, environment="lab", within=period, now=moment)
            found += report.breaches
            if report.breaches:
                break
        assert found and found[0][0] == incident and found[0][1] == "response"
        assert len(received) == 1
        assert received[0]["title"].startswith(f"[lab] {incident} (P1) breached its response")
        later = notify_breaches(project, within=period, now=moment + period)
        assert [b for b in later.breaches if b[1] == "response"] == []
        assert len(received) == 1 + len(later.breaches)
    finally:
        server.shutdown()


NEAR_POLICY = """\
---
channels:
  hook: {kind: webhook, url_env: OPSLEDGER_NOTIFY_HOOK}
  mail: {kind: email, url_env: OPSLEDGER_NOTIFY_MAIL}
routes:
  - events: [sla_breach]
    environments: [lab]
    channels: [hook]
  - events: [sla_near_breach]
    channels: [hook, mail]
"""


def test_a_near_breach_is_told_once_per_incident_and_deadline(
    fault_repo, clock, webhook, smtp_sink, monkeypatch
):
    """sla.yml: P2 responds in 60 min and resolves in 8 h (24x7), near breach at 75%. Run
    every 15 minutes as the schedule does, each deadline's warning goes out once, at the run
    after the clock used 75% of its target, to both receivers; a clock met first is never
    warned of, and the breach itself follows at its own deadline."""
    project = fault_repo
    (project.root / "policies" / "notifications.yml").write_text(NEAR_POLICY)
    hook_port, received = webhook
    mail_port, mails = smtp_sink
    monkeypatch.setenv("OPSLEDGER_NOTIFY_HOOK", f"json://127.0.0.1:{hook_port}/opsledger")
    monkeypatch.setenv(
        "OPSLEDGER_NOTIFY_MAIL",
        f"mailto://127.0.0.1:{mail_port}?smtp=127.0.0.1&mode=insecure"
        "&from=ci@example.org&to=ops@example.org",
    )

    def p2(title: str) -> None:
        open_incident(project, title=title, person="alice", klass="software",
                      impact="high", urgency="medium", hosts=("lab-app1",))  # fmt: skip

    steps = {  # minutes after T0: what people commit then (git time is the clocks' time)
        0: lambda: p2("Orders page times out"),  # INC-0001: nobody answers for 70 min
        5: lambda: p2("Reports run slowly"),  # INC-0002: answered after 15 min
        20: lambda: acknowledge(project, "INC-0002", person="bob"),
        70: lambda: acknowledge(project, "INC-0001", person="bob"),
    }
    told = []
    period = dt.timedelta(minutes=15)
    for minute in range(0, 8 * 60 + 1, 5):
        if minute in steps:
            clock.set(T0 + dt.timedelta(minutes=minute))
            steps[minute]()
        if minute % 15:
            continue
        report = notify_breaches(project, within=period, now=T0 + dt.timedelta(minutes=minute))
        told += [(minute, "near", i, c) for i, c, _ in report.near]
        told += [(minute, "breach", i, c) for i, c, _ in report.breaches]
        assert all(d.status == "sent" for r in report.near_results for d in r.deliveries)
    assert told == [
        (45, "near", "INC-0001", "response"),
        (60, "breach", "INC-0001", "response"),
        (360, "near", "INC-0001", "resolution"),
        (375, "near", "INC-0002", "resolution"),  # opened at 5, 75% of 8 h at 6 h 05
        (480, "breach", "INC-0001", "resolution"),
    ]
    near_titles = [
        "[lab] INC-0001 (P2) nears its response SLA (due 2026-11-30T09:00+00:00)",
        "[lab] INC-0001 (P2) nears its resolution SLA (due 2026-11-30T16:00+00:00)",
        "[lab] INC-0002 (P2) nears its resolution SLA (due 2026-11-30T16:05+00:00)",
    ]
    assert [m["title"] for m in received] == [
        near_titles[0],
        "[lab] INC-0001 (P2) breached its response SLA",
        *near_titles[1:],
        "[lab] INC-0001 (P2) breached its resolution SLA",
    ]
    assert [m["type"] for m in received if "nears" in m["title"]] == ["warning"] * 3
    first = received[0]["message"]
    assert first.startswith("INC-0001: Orders page times out\nresponse is due at 2026-11-30T09:00")
    assert len(mails) == 3  # sla_near_breach only is routed to e-mail
    for mail, title in zip(mails, near_titles, strict=True):
        assert f"Subject: {title}" in " ".join(mail.split()) and "To: ops@example.org" in mail
