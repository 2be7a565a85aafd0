"""Fault handling as code: incidents, problems, SLA clocks and detection, every step a commit.

- `store`: incidents/<ID>/incident.yml and problems/<ID>/problem.yml, validated on read and write;
- `ledger`: each timeline step committed as the person who took it, and dated by git;
- `policy`, `clock`, `sla`: sla.yml and incidents.yml; counted time and deadlines; the two
  clocks (response, resolution) of an incident;
- `incidents`: open, acknowledge, assign, note, pause, resume; `resolution`: recovery test,
  resolve (with a verified run or a recovery test), close; `queries`: show and list;
- `detect`: incidents opened and resolved by inspections, drift, change runs, drills and alerts;
- `alertmanager`, `alerts`: Alertmanager's API read and checked; `alerts sync` records what it
  lists and proves resolutions;
- `diagnostics`, `readonly`: read-only diagnostic commands over SSH (Fabric), kept as evidence;
- `problems`: recurring incidents grouped under a root cause, known error and permanent fix;
- `kpis`, `findings`: numbers for the service report; SLA and ledger findings for audit check.
"""
