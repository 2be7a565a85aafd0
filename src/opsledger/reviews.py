"""Post-implementation reviews: the obligation an emergency change owes once it has run.

`apply` creates `changes/<block>/<ID>/review.yml` (status `due`, `due_by` = apply time + the
policy's `emergency.review_within_hours`) and commits it with the run record. Completing it
records who reviewed, what happened, why, and the follow-up actions, committed as the reviewer;
audit reads a review done after `due_by`, or never done, as a finding.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml

from opsledger.changes import Change, check_change_id, load_change
from opsledger.commitlock import under_commit_lock
from opsledger.errors import OpsledgerError, Problem
from opsledger.gitrepo import require_history, write_and_commit
from opsledger.layout import REVIEW, change_folder
from opsledger.policy.bundle import load_policies
from opsledger.project import Project
from opsledger.yamlio import load_yaml


@dataclass
class Review:
    change_id: str
    path: Path
    status: str  # due | done
    due_by: dt.datetime
    reviewed_by: str | None
    reviewed_at: dt.datetime | None

    def late(self, now: dt.datetime) -> bool:
        """Done after its due time, or still open past it."""
        if self.reviewed_at is not None:
            return self.reviewed_at > self.due_by
        return now > self.due_by


def review_path(project: Project, change_id: str) -> Path:
    check_change_id(change_id)  # before it becomes a path
    return change_folder(project.root, change_id, REVIEW)


def open_review(project: Project, change: Change, finished: dt.datetime) -> Path | None:
    """Create the review an emergency change owes at its first apply; None when none is owed."""
    path = review_path(project, change.id)
    if change.type != "emergency" or path.exists():
        return None
    policies, _ = load_policies(project)
    hours = int(policies.emergency.get("review_within_hours", 72))
    due = (finished + dt.timedelta(hours=hours)).replace(microsecond=0)
    data = {
        "change": change.id,
        "status": "due",
        "due_by": due.isoformat(),
        "applied_at": finished.replace(microsecond=0).isoformat(),
        "reviewed_by": None,
        "reviewed_at": None,
        "summary": "",
        "cause": "",
        "actions": [],
    }
    path.write_text(
        "---\n# Post-implementation review of an emergency change; complete it with\n"
        f"# `opsledger change review {change.id}` before due_by.\n"
        + yaml.safe_dump(data, sort_keys=False, width=100)
    )
    return path


def load_review(project: Project, change_id: str) -> Review | None:
    """The change's review, or None when none is owed (not an emergency, or never applied)."""
    path = review_path(project, change_id)
    if not path.exists():
        return None
    data = load_yaml(path, what="review", root=project.root)
    try:
        reviewed_at = data.get("reviewed_at")
        return Review(
            change_id,
            path,
            str(data["status"]),
            dt.datetime.fromisoformat(str(data["due_by"])),
            data.get("reviewed_by"),
            dt.datetime.fromisoformat(str(reviewed_at)) if reviewed_at else None,
        )
    except (KeyError, ValueError, TypeError) as err:
        raise OpsledgerError(
            Problem(
                f"malformed review: {err}",
                str(path),
                "status/due_by",
                "keep the fields apply wrote (status, due_by, reviewed_by, reviewed_at)",
            )
        ) from None


@under_commit_lock  # its 'still due' check and its commit, with no other review between
def complete_review(
    project: Project,
    change_id: str,
    *,
    person: str,
    summary: str,
    cause: str,
    actions: list[str],
    signing_key: Path | None = None,
    now: dt.datetime | None = None,
) -> Review:
    """Complete an emergency change's review and commit it as the reviewer.

    Example:
        complete_review(project, "CHG-0007", person="carol", summary="Restart fixed the leak",
                        cause="Connection leak in the reporting job", actions=["Fix the job"])
    """
    require_history(project.root, "change review")
    review = load_review(project, change_id)
    file = str(review_path(project, change_id))
    if review is None:
        raise OpsledgerError(
            Problem(
                "no review is owed",
                file,
                "review",
                "reviews exist for emergency changes that have been applied",
            )
        )
    policies, _ = load_policies(project)
    change = load_change(project, change_id)
    problems = []
    if person not in policies.people:
        problems.append(
            Problem(f"{person!r} is not in policies/people.yml", file, "reviewed_by", "use --as ID")
        )
    elif policies.four_eyes and person == change.requested_by:
        problems.append(
            Problem(
                f"{person} requested the change",
                file,
                "reviewed_by",
                "someone other than the requester reviews it",
            )
        )
    if review.status == "done":
        problems.append(
            Problem(
                f"already reviewed by {review.reviewed_by}",
                file,
                "status",
                "a review is written once",
            )
        )
    if len(summary.strip()) < 10:
        problems.append(
            Problem("summary is too short", file, "summary", "say what happened in a sentence")
        )
    if len(cause.strip()) < 5:
        problems.append(Problem("cause is missing", file, "cause", "say why it was needed"))
    for field, text, limit in (
        ("summary", summary, 2000),
        ("cause", cause, 2000),
        *(("action", action, 500) for action in actions),
    ):
        if len(text) > limit:
            problems.append(
                Problem(f"{len(text)} characters; at most {limit}", file, field, "shorten it")
            )
    if len(actions) > 20:
        problems.append(Problem("more than 20 actions", file, "actions", "group them"))
    if problems:
        raise OpsledgerError(problems)
    moment = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    data = load_yaml(review.path, what="review", root=project.root)
    data.update(
        status="done",
        reviewed_by=person,
        reviewed_at=moment.isoformat(),
        summary=summary.strip(),
        cause=cause.strip(),
        actions=list(actions),
    )
    who = policies.people[person]
    write_and_commit(
        project.root,
        review.path,
        "---\n" + yaml.safe_dump(data, sort_keys=False, width=100),
        f"Review {change_id}",
        name=who.name,
        email=who.email,
        signing_key=signing_key,
    )
    return load_review(project, change_id)  # type: ignore[return-value]
