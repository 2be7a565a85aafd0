"""SLA breaches reach the team's channels: an incident on git time whose response clock passes
its target is notified once, by the scheduled run after its deadline, to a real HTTP receiver
on 127.0.0.1 through Apprise."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opsledger.faults.incidents import open_incident
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
