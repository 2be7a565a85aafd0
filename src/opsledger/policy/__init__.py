"""The policy floor: what `policies/*.yml` say, loaded, typed and checked, and how they change.

- `files`: each policy file read with the one YAML loader and checked against its schema;
- `bundle`: people, change rules, windows and freezes, SLA, waivers as typed `Policies`, and
  the bundle hash a decision records;
- `waivers`: the waiver register; `windows`: maintenance windows as concrete intervals;
- `changes`: policy changes (POL-<n>) requested and approved like changes;
- `effect`: whether the policies/ a person reads are the ones in effect.

Modules that own another policy file keep its loader (inspections.yml: inspections, dr.yml:
drill, incidents.yml: faults.policy, notifications.yml: notify, locks.yml: lock);
`opsledger.policycheck`, above all of them, lints every file at once.
"""
