"""The adversarial review of change control (#12), one test per way through, on real git
repositories with real SSH keys: a requester tries to run a change nobody approved.

Each class of bypass is tried the way an insider would (a commit, a merge, a symlink, a forged
author); the test asserts that `decide` refuses it and that `audit check` reports what it cannot
prevent.
"""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from click.testing import CliRunner

from opsledger.audit import audit_check
from opsledger.changes import validate_change
from opsledger.cli import cli
from opsledger.content import change_content
from opsledger.decide import decide
from opsledger.errors import EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import git, head
from opsledger.layout import change_folder, stored_file
from opsledger.policycheck import policy_check
from opsledger.records import Record, run_record_path, write_record
from opsledger.signoff import approve_change, propose_policy_change, request_change

from .conftest import START, keypair

INSIDE = START + dt.timedelta(minutes=30)
STAGING_AT = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)  # Tuesday 11:00 Berlin
NAMES = {
    "alice": "Alice Arnold",
    "bob": "Bob Brandt",
    "carol": "Carol Chen",
    "dave": "Dave Diaz",
    "ci": "opsledger CI",
}


def who(person):
    return {"name": NAMES[person], "email": f"{person}@example.org"}


def as_env(author, committer=None):
    committer = committer or author
    return {
        "GIT_AUTHOR_NAME": NAMES[author],
        "GIT_AUTHOR_EMAIL": f"{author}@example.org",
        "GIT_COMMITTER_NAME": NAMES[committer],
        "GIT_COMMITTER_EMAIL": f"{committer}@example.org",
    }


def failed(decision):
    return {c.rule: c.why for c in decision.checks if not c.passed}


def request(project, *, person="alice", key=None, committer=None, **overrides):
    """A change as `change new` writes it (change.yml and the request statement, signed with
    `key`), committed by `committer` (default: the requester)."""
    args = dict(
        title="Tune something",
        runbook="converge",
        requested_by=person,
        reason="Needed for the quarterly baseline",
        targets="app",
        params={"tags": ["os_baseline"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=1),
    )
    args.update(overrides)
    change, _ = request_change(project, signing_key=key, **args)
    git(project.root, "add", "--", str(change.file.parent.relative_to(project.root)))
    git(project.root, "commit", "-q", "-m", f"Request {change.id}", env=as_env(committer or person))
    return change.id


def approve(project, change_id, person, key=None, reject=False, now=None):
    return approve_change(
        project,
        change_id,
        person=person,
        signing_key=key,
        decision="rejected" if reject else "approved",
        now=now,
    )


def statement_files(project, change_id, person):
    folder = change_folder(project.root, change_id) / "approvals"
    return sorted(
        p
        for p in folder.rglob("*.yml")
        if (yaml.safe_load(p.read_text()) or {}).get("person") == person
    )


def content_sha(project, change_id):
    result = validate_change(project, change_id)
    return change_content(project, result.change, result.runbook, result.hosts).sha256


def run_record(project, change_id, *, environment, result="success", started=None, **extra):
    started = started or (STAGING_AT - dt.timedelta(days=1))
    record = Record(
        kind="run",
        change=change_id,
        environment=environment,
        runbook="converge",
        params={"tags": ["os_baseline"]},
        result=result,
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(minutes=5)).isoformat(),
        **extra,
    )
    return write_record(run_record_path(project, change_id, started), record)


def commit_as(project, paths, message, author, committer=None, key=None):
    relative = [str(p.relative_to(project.root)) for p in paths]
    git(project.root, "add", "--", *relative)
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    args = [*sign, "commit", "-q", "-m", message, *(["-S"] if key else []), "--", *relative]
    git(project.root, *args, env=as_env(author, committer))
    return head(project.root)


def rules_of(result):
    return {f.rule for f in result.findings}


# --- 1. Content binding covers everything Ansible can load -------------------------------


def _symlink_dir_into(project, link, target):
    target.mkdir(parents=True, exist_ok=True)
    (target / "main.yml").write_text("---\npostgresql_max_connections: 5000\n")
    link.symlink_to(target, target_is_directory=True)


def test_a_symlinked_directory_leaving_the_repository_is_refused(repo, tmp_path):
    """The link is committed, as a branch would bring it: content is what git tracks (an
    untracked link is not content; apply refuses to run beside it, see test_content.py)."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    link = project.root / "roles/hardware/vars"
    _symlink_dir_into(project, link, tmp_path / "elsewhere")
    commit_as(project, [link], "Share the vars", "alice")
    with pytest.raises(OpsledgerError) as err:
        decide(project, change_id, now=INSIDE)
    assert err.value.exit_code == EXIT_INVALID
    assert "roles/hardware/vars" in str(err.value) and "symlink" in str(err.value)


@pytest.mark.parametrize("link", ["roles/hardware/vars", "inventories/lab/group_vars/db/extra"])
def test_a_symlinked_directory_inside_the_repository_is_hashed(repo, link):
    """Committed, as a branch would bring them: content is what git tracks (test_content.py)."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    _symlink_dir_into(project, project.root / link, project.root / "docs" / "tuning")
    commit_as(project, [project.root / link, project.root / "docs"], "Share the tuning", "alice")
    assert "content changed" in failed(decide(project, change_id, now=INSIDE))["approvals"]


@pytest.mark.parametrize(
    "path",
    [
        # group_by in site.yml creates these groups at run time
        "inventories/lab/group_vars/postgresql_primary.yml",
        "inventories/lab/group_vars/postgresql_standby/main.yml",
        # ansible.cfg: collections_path = collections
        "collections/ansible_collections/ansible/posix/plugins/modules/sysctl.py",
        # next to site.yml, which the converge runbook imports
        "library/postgresql_set.py",
        "filter_plugins/evil.py",
        "module_utils/evil.py",
        "group_vars/all.yml",
    ],
)
def test_files_ansible_loads_after_the_approval_void_it(repo, path):
    """The file is committed, as a branch would bring it: content is what git tracks (an
    untracked file is not content; apply refuses to run beside it, see test_content.py)."""
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    file = project.root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("---\n# loaded by Ansible, added after the approval\n")
    commit_as(project, [file], "Add a file", "alice")
    assert "content changed" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_a_role_the_declared_roles_include_is_part_of_the_content(repo):
    project, _, _ = repo
    root = project.root
    common = root / "roles/common/tasks/main.yml"
    common.parent.mkdir(parents=True)
    common.write_text("---\n- name: Say hello\n  ansible.builtin.debug:\n    msg: hello\n")
    backup = root / "roles/postgresql/tasks/main.yml"
    backup.write_text(
        backup.read_text() + "\n- name: Include the common role\n  ansible.builtin.include_role:\n"
        "    name: common\n"
    )
    commit_as(project, [common, backup], "Add a common role", "carol")
    later = START + dt.timedelta(hours=3)  # after CHG-0001's window: no conflict
    change_id = request(
        project,
        runbook="pg-backup",
        targets="db",
        params={},
        window_start=later,
        window_end=later + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob")
    assert decide(project, change_id, now=later).allowed
    common.write_text(common.read_text() + "- name: Something else\n  ansible.builtin.debug:\n")
    why = failed(decide(project, change_id, now=later))["approvals"]
    assert "roles/common/tasks/main.yml" in why


# --- 2. An approval is a statement its approver can prove ---------------------------------


def test_an_approval_committed_by_the_requester_with_the_approvers_author_does_not_count(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    # what `git commit --author bob` by alice leaves: bob authored, alice committed
    git(project.root, "commit", "-q", "--amend", "--no-edit", env=as_env("bob", "alice"))
    assert "0 of 1" in failed(decide(project, change_id, now=INSIDE))["approvals"]
    assert "approval-by-stranger" in rules_of(audit_check(project, now=START))


def test_the_requester_is_who_committed_the_request(repo):
    project, _, _ = repo
    # dave writes a change in alice's name and approves it himself
    change_id = request(project, person="alice", committer="dave")
    approve(project, change_id, "dave")
    assert "requester" in failed(decide(project, change_id, now=INSIDE))


def test_a_signed_approval_made_with_anothers_key_does_not_count(repo):
    project, _, keys = repo
    change_id = request(
        project,
        key=keys["alice"],
        environment="staging",
        targets="all",
        window_start=STAGING_AT,
        window_end=STAGING_AT + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob", key=keys["alice"])
    assert "approvals" in failed(decide(project, change_id, now=STAGING_AT))


@pytest.mark.parametrize("how", ["squash", "rebase"])
def test_signed_approvals_survive_squash_and_rebase_merges(repo, how):
    project, _, keys = repo
    root = project.root
    git(root, "checkout", "-q", "-b", "feature")
    change_id = request(
        project,
        key=keys["alice"],
        environment="staging",
        targets="all",
        window_start=STAGING_AT,
        window_end=STAGING_AT + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob", key=keys["bob"])
    assert decide(project, change_id, now=STAGING_AT).allowed
    git(root, "checkout", "-q", "main")
    carol = as_env("carol")
    if how == "squash":
        git(root, "merge", "-q", "--squash", "feature", env=carol)
        git(root, "commit", "-q", "-m", "Squash-merge feature", env=carol)
    else:
        git(root, "commit", "-q", "--allow-empty", "-m", "main moved on", env=carol)
        git(root, "checkout", "-q", "feature")
        git(root, "rebase", "-q", "main", env=carol)
        git(root, "checkout", "-q", "main")
        git(root, "merge", "-q", "--ff-only", "feature", env=carol)
    decision = decide(project, change_id, now=STAGING_AT)
    assert decision.allowed, failed(decision)


# --- 3. Rejections stand --------------------------------------------------------------------


def _rejected_by_carol(project, change_id):
    approve(project, change_id, "bob", now=START - dt.timedelta(hours=1))
    approve(project, change_id, "carol", reject=True, now=START - dt.timedelta(minutes=30))
    assert "rejected by carol" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_a_rejection_touched_by_the_requester_still_stands(repo):
    project, change_id, _ = repo
    _rejected_by_carol(project, change_id)
    files = statement_files(project, change_id, "carol")
    for path in files:
        path.write_text(path.read_text().replace("rejected", "approved"))
    commit_as(project, files, "Fix a typo", "alice")
    assert "rejected by carol" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_a_deleted_rejection_still_stands(repo):
    project, change_id, _ = repo
    _rejected_by_carol(project, change_id)
    for path in statement_files(project, change_id, "carol"):
        git(project.root, "rm", "-q", str(path.relative_to(project.root)))
    git(project.root, "commit", "-q", "-m", "Clean up", env=as_env("alice"))
    assert "rejected by carol" in failed(decide(project, change_id, now=INSIDE))["approvals"]


def test_merging_a_side_branch_older_than_the_rejection_does_not_hide_it(repo):
    project, change_id, _ = repo
    root = project.root
    folder = stored_file(root, change_id, "approvals")
    git(root, "checkout", "-q", "-b", "side")
    approve(project, change_id, "carol", now=START - dt.timedelta(hours=2))  # older approval
    git(root, "checkout", "-q", "main")
    approve(project, change_id, "carol", reject=True, now=START - dt.timedelta(hours=1))
    git(root, "merge", "-q", "--no-ff", "--no-commit", "side", check=False, env=as_env("alice"))
    # the merge takes the side branch's approvals folder as it was
    git(root, "rm", "-rq", "--cached", folder)
    for path in (root / folder).rglob("*"):
        if path.is_file():
            path.unlink()
    git(root, "checkout", "side", "--", folder)
    git(root, "commit", "-q", "-m", "Merge side", env=as_env("alice"))
    assert "rejected by carol" in failed(decide(project, change_id, now=INSIDE))["approvals"]


# --- 4. Evidence decide trusts is authenticated -------------------------------------------


@pytest.fixture
def production_change(repo):
    """A production converge (promotion: needs a staging success) approved by bob and carol,
    and a staging change of the same runbook and params that exists on main."""
    project, _, keys = repo
    staging = request(
        project,
        key=keys["alice"],
        environment="staging",
        targets="all",
        window_start=STAGING_AT - dt.timedelta(days=1),
        window_end=STAGING_AT - dt.timedelta(days=1) + dt.timedelta(hours=1),
    )
    production = request(project, key=keys["alice"], environment="production", targets="all")
    for person in ("bob", "carol"):
        approve(project, production, person, key=keys[person])
    assert (
        "no successful staging run" in failed(decide(project, production, now=INSIDE))["promotion"]
    )
    return project, staging, production


def _staging_sha(project, staging):
    return {"content_sha256": content_sha(project, staging)}


def test_a_ci_record_on_main_is_evidence(repo, production_change):
    _, _, keys = repo
    project, staging, production = production_change
    path = run_record(project, staging, environment="staging", **_staging_sha(project, staging))
    commit_as(project, [path], f"Run {staging}: success", "ci", key=keys["ci"])
    decision = decide(project, production, now=INSIDE)
    assert decision.allowed, failed(decision)


def test_an_uncommitted_record_is_no_evidence(production_change):
    project, staging, production = production_change
    run_record(project, staging, environment="staging", **_staging_sha(project, staging))
    assert "promotion" in failed(decide(project, production, now=INSIDE))
    assert "evidence-forged" in rules_of(audit_check(project, now=INSIDE))


def test_a_record_committed_by_the_requester_is_no_evidence(production_change):
    project, staging, production = production_change
    path = run_record(project, staging, environment="staging", **_staging_sha(project, staging))
    commit_as(project, [path], f"Run {staging}: success", "alice")
    why = failed(decide(project, production, now=INSIDE))["promotion"]
    # named where it lies (its block), not by its flat-form key
    assert f"{path.relative_to(project.root).as_posix()} is no evidence" in why
    assert "evidence-forged" in rules_of(audit_check(project, now=INSIDE))


def test_a_record_for_a_change_that_does_not_exist_is_no_evidence(production_change):
    project, _, production = production_change
    path = run_record(project, "CHG-0099", environment="staging")
    commit_as(project, [path], "Run CHG-0099: success", "ci")
    assert "promotion" in failed(decide(project, production, now=INSIDE))
    assert "evidence-forged" in rules_of(audit_check(project, now=INSIDE))


def test_a_record_flipped_inside_a_merge_is_no_evidence(production_change):
    project, staging, production = production_change
    root = project.root
    path = run_record(
        project, staging, environment="staging", result="failed", **_staging_sha(project, staging)
    )
    commit_as(project, [path], f"Run {staging}: failed", "ci")
    git(root, "checkout", "-q", "-b", "side")
    (root / "notes.md").write_text("side work\n")
    commit_as(project, [root / "notes.md"], "Side work", "alice")
    git(root, "checkout", "-q", "main")
    git(root, "merge", "-q", "--no-ff", "--no-commit", "side", env=as_env("alice"))
    path.write_text(path.read_text().replace('"failed"', '"success"'))
    git(root, "add", str(path.relative_to(root)))
    git(root, "commit", "-q", "-m", "Merge side", env=as_env("alice"))
    assert "promotion" in failed(decide(project, production, now=INSIDE))
    assert "evidence-edited" in rules_of(audit_check(project, now=INSIDE))


# --- 5. The clock override never reaches apply outside the lab ----------------------------


def test_apply_at_a_chosen_time_is_refused_outside_the_lab(repo):
    project, _, keys = repo
    change_id = request(
        project,
        key=keys["alice"],
        environment="staging",
        targets="all",
        window_start=STAGING_AT,
        window_end=STAGING_AT + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob", key=keys["bob"])
    assert decide(project, change_id, now=STAGING_AT).allowed  # what-if stays possible
    before = head(project.root)
    result = CliRunner().invoke(
        cli,
        ["apply", change_id, "--at", STAGING_AT.isoformat()],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == EXIT_INVALID, result.output
    assert "--at" in result.output
    assert head(project.root) == before
    assert not (change_folder(project.root, change_id) / "runs").exists()


# --- 6. Policies change only through approved policy changes ------------------------------


def _edit_policy(project, name, edit):
    path = project.root / "policies" / name
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _quorum_zero(data):
    for rule in data["rules"]:
        rule["approvals"] = 0
        rule.pop("required_teams", None)


def test_lowering_a_quorum_without_approval_has_no_effect_and_is_reported(repo):
    project, change_id, _ = repo
    path = _edit_policy(project, "changes.yml", _quorum_zero)
    sha = commit_as(project, [path], "Relax the rules", "alice")
    assert "0 of 1" in failed(decide(project, change_id, now=INSIDE))["approvals"]
    findings = [f for f in audit_check(project, now=INSIDE).findings if f.commits == (sha,)]
    assert [f.rule for f in findings] == ["policy-change-unapproved"]


def test_a_swapped_signing_key_has_no_effect(repo, tmp_path):
    project, _, keys = repo
    own = keypair(tmp_path, "alices-second-key")

    def swap(data):
        for person in data["people"]:
            if person["id"] == "bob":
                person["signing_key"] = own.with_suffix(".pub").read_text().strip()

    path = _edit_policy(project, "people.yml", swap)
    commit_as(project, [path], "Rotate bob's key", "alice")
    change_id = request(
        project,
        key=keys["alice"],
        environment="staging",
        targets="all",
        window_start=STAGING_AT,
        window_end=STAGING_AT + dt.timedelta(hours=1),
    )
    approve(project, change_id, "bob", key=own)
    assert "approvals" in failed(decide(project, change_id, now=STAGING_AT))


def test_a_pull_request_is_judged_under_the_base_policy(repo):
    from opsledger.ci import pr_check

    project, _, _ = repo
    git(project.root, "checkout", "-q", "-b", "feature")
    path = _edit_policy(project, "changes.yml", _quorum_zero)
    commit_as(project, [path], "Relax the rules", "alice")
    change_id = request(project)
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.exit_code != 0
    (item,) = [i for i in report.items if i.change_id == change_id]
    assert "approvals" in failed(item.decision)


# --- 7. Appending a statement is not editing evidence -------------------------------------


def test_re_approving_after_an_edit_and_rejecting_after_approving_are_no_findings(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob", now=START - dt.timedelta(hours=2))
    file = change_folder(project.root, change_id) / "change.yml"
    file.write_text(file.read_text().replace("nightly", "every night"))
    commit_as(project, [file], "Amend", "alice")
    approve(project, change_id, "bob", now=START - dt.timedelta(hours=1))
    approve(project, change_id, "carol", now=START - dt.timedelta(hours=1))
    approve(project, change_id, "carol", reject=True, now=START - dt.timedelta(minutes=30))
    assert "evidence-edited" not in rules_of(audit_check(project, now=INSIDE))


def test_rewriting_an_old_statement_is_evidence_edited(repo):
    project, change_id, _ = repo
    approve(project, change_id, "bob")
    (path,) = statement_files(project, change_id, "bob")
    path.write_text(path.read_text().replace("approved", "rejected"))
    sha = commit_as(project, [path], "Edit", "bob")
    found = [f for f in audit_check(project, now=INSIDE).findings if f.rule == "evidence-edited"]
    assert [f.commits for f in found] == [(sha,)]


# --- 8. A symlink where a statement belongs is invalid input ------------------------------


@pytest.mark.parametrize("name", ["bob.yml", "bob/20261201T190000Z.yml"])
def test_an_approval_file_that_is_a_symlink_exits_2(repo, tmp_path, name):
    project, change_id, _ = repo
    elsewhere = tmp_path / "statement.yml"
    elsewhere.write_text(yaml.safe_dump({"change": change_id, "person": "bob"}))
    link = change_folder(project.root, change_id) / "approvals" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    commit_as(project, [link], "Approve", "bob")
    result = CliRunner().invoke(
        cli,
        ["decide", change_id, "--at", INSIDE.isoformat()],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == EXIT_INVALID, result.output
    assert "symlink" in result.output and "Traceback" not in result.output


# --- 9. Overnight maintenance windows -----------------------------------------------------

FRIDAY_23 = dt.datetime(2026, 12, 4, 22, 0, tzinfo=dt.UTC)  # Fri 23:00 Berlin


def _lab_windows(*windows):
    def edit(data):
        data["environments"]["lab"]["windows"] = [
            {"days": [day], "start": start, "end": end, "timezone": "Europe/Berlin"}
            for day, start, end in windows
        ]

    return edit


def _adopt(project, name, edit):
    """Change a policy the way the team must: alice proposes it, carol (CAB) approves it."""
    path = _edit_policy(project, name, edit)
    proposal, _ = propose_policy_change(
        project, title="Adopt the policy", requested_by="alice", reason="Overnight maintenance"
    )
    commit_as(project, [path, proposal.file.parent], f"Propose {proposal.id}", "alice")
    approve(project, proposal.id, "carol")


def _overnight_change(project):
    return request(project, window_start=FRIDAY_23, window_end=FRIDAY_23 + dt.timedelta(minutes=90))


def test_two_adjacent_windows_cover_a_change_across_midnight(repo):
    project, _, _ = repo
    _adopt(
        project, "windows.yml", _lab_windows(("fri", "22:00", "24:00"), ("sat", "00:00", "02:00"))
    )
    change_id = _overnight_change(project)
    approve(project, change_id, "bob")
    decision = decide(project, change_id, now=FRIDAY_23 + dt.timedelta(minutes=10))
    assert decision.allowed, failed(decision)


def test_one_window_may_run_across_midnight(repo):
    project, _, _ = repo
    _adopt(project, "windows.yml", _lab_windows(("fri", "22:00", "02:00")))
    assert policy_check(project).problems == []
    change_id = _overnight_change(project)
    approve(project, change_id, "bob")
    after_midnight = FRIDAY_23 + dt.timedelta(minutes=75)
    decision = decide(project, change_id, now=after_midnight)
    assert decision.allowed, failed(decision)
    gap = request(
        project,
        window_start=FRIDAY_23 + dt.timedelta(hours=2),
        window_end=FRIDAY_23 + dt.timedelta(hours=4),
    )
    assert "maintenance window" in failed(decide(project, gap, now=after_midnight))


def test_a_run_after_midnight_inside_an_overnight_window_is_no_finding(repo):
    project, _, _ = repo
    _adopt(project, "windows.yml", _lab_windows(("fri", "22:00", "02:00")))
    change_id = _overnight_change(project)
    approve(project, change_id, "bob")
    started = FRIDAY_23 + dt.timedelta(minutes=75)  # Saturday 00:15 Berlin
    path = run_record(
        project,
        change_id,
        environment="lab",
        started=started,
        content_sha256=content_sha(project, change_id),
        decision={"allowed": True, "approvers": ["bob"], "risk": "medium"},
    )
    commit_as(project, [path], f"Run {change_id}: success", "ci")
    assert "applied-outside-window" not in rules_of(audit_check(project, now=started))
