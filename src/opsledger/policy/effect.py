"""Whether the policies/ a person reads are the ones that decide, and what to do when not.

decide, approve and the next-step hints follow the policies in effect on the protected branch
(base.py): an edit of policies/ counts only once a policy change (POL-<n>) approves it. Nothing
in the files shows that, so a person who reads `observers: [auditor]` in policies/changes.yml
and then sees an auditor's approval accepted and counted is misled — by the tool, not the
files. `policy check`, `change new` and `approve` say it in one line, with the way to make the
edits count.
"""

from __future__ import annotations

from opsledger.base import Base, resolve_base
from opsledger.errors import OpsledgerError
from opsledger.gitrepo import git, nul_paths
from opsledger.layout import POLICIES, POLICIES_PREFIX, policy_file
from opsledger.policy.bundle import POLICY_FILES
from opsledger.project import Project


def _differing_files(project: Project, base: Base) -> list[str]:
    """The rule files decide reads (people, changes, windows, sla, waivers) that differ here.

    Other files of policies/ (inspections, dr, ...) are read from the working tree by the
    commands that use them, so a difference there misleads nobody.
    """
    commit = base.policy_version.accepted_at or base.policy_version.commit
    listing = git(project.root, "diff", "--name-only", "-z", commit, "--", POLICIES).stdout
    untracked = git(
        project.root, "ls-files", "-z", "--others", "--exclude-standard", "--", POLICIES
    ).stdout
    decided = {policy_file(name) for name in POLICY_FILES}
    return sorted({p for p in nul_paths(listing) + nul_paths(untracked) if p in decided})


def policy_gap(project: Project, ref: str | None = None) -> str:
    """One line when policies/ here is not what decides on the base; "" when it is.

    Also "" without a base (a new repository: the working tree's policies are used then).

    Example:
        policy_gap(find_project())  # "policies/ here is not what decides: ..."
    """
    try:
        base = resolve_base(project, ref)
    except OpsledgerError:
        return ""
    files = _differing_files(project, base)
    if not files:
        return ""
    version = base.policy_version
    shown = ", ".join(f.removeprefix(POLICIES_PREFIX) for f in files)
    line = (
        f"{POLICIES_PREFIX} here is not what decides: {shown} differ from the policies in effect "
        f"on {base.ref} (those of {version.accepted_at[:10]}: {version.why}); decide, approve and "
        "the next-step hints follow those"
    )
    ignored = base.pending()
    if ignored:
        line += (
            f"; {len(ignored)} later edit(s) of policies/ on {base.ref} were never approved and "
            "have no effect (opsledger audit check names them)"
        )
    rule = base.policies.policy_changes
    if rule is None:
        return line + f" — commit the edits to {base.ref} to make them count"
    owners = sorted(
        person for person, who in base.policies.people.items() if set(who.teams) & set(rule.owners)
    )
    return line + (
        " — to make the edits count: opsledger policy propose --title ... --requested-by YOU "
        f"--reason ..., commit it with them, and have {rule.approvals} of "
        f"{', '.join(rule.owners)} ({', '.join(owners) or 'nobody yet'}) approve it "
        "(opsledger approve POL-<n>)"
    )
