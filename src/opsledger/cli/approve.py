"""`opsledger approve`: a signed approval (or rejection) bound to a change's content."""

from __future__ import annotations

from pathlib import Path

import click

from opsledger.cli.options import person_option, signing_key_option
from opsledger.project import find_project


@click.command()
@click.argument("change_id")
@click.option("--reject", is_flag=True, help="Record a rejection instead of an approval.")
@click.option("--comment", default="", help="Why (kept in the approval file).")
@person_option
@signing_key_option
def approve(
    change_id: str, reject: bool, comment: str, person: str, signing_key: Path | None
) -> None:
    """Approve (or reject) a change's current content and commit it as you, signed with --key.

    Writes changes/<block>/<ID>/approvals/<person>/<time>.yml: a statement naming the sha256 of
    every file git tracks but bookkeeping (statements, run records, other changes, records/), signed
    with your SSH key (ssh-keygen -Y sign). Editing any of it later voids the approval; a
    rejection stands until you approve again. Works for policy changes (POL-<n>) too.

    \b
    Example:
        opsledger approve CHG-0001 --as bob --key ~/.ssh/id_ed25519
    """
    from opsledger.signoff import approve_change

    project = find_project()
    result = approve_change(
        project,
        change_id,
        person=person,
        decision="rejected" if reject else "approved",
        comment=comment,
        signing_key=signing_key,
    )
    from opsledger.nextsteps import after_approval

    verb = "rejected" if reject else "approved"
    click.echo(
        f"{change_id} {verb} by {person}: content {result.content_sha256[:12]}, "
        f"commit {result.commit[:10]}"
    )
    if not reject:
        for step in after_approval(project, change_id):
            click.echo(f"next: {step}")
    from opsledger.policy.effect import policy_gap

    gap = policy_gap(project)
    if gap:
        click.echo(f"note: {gap}")
