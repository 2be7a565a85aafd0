"""Pipeline steps on real git repos: what a PR touches, its verdict and summary; the workflow
files against their schemas; the secret scan; CODEOWNERS from policies."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsledger.ci import codeowners, pr_check
from opsledger.cli import cli
from opsledger.errors import EXIT_DENIED, EXIT_INVALID
from opsledger.gitrepo import commit_paths, git
from opsledger.layout import change_folder
from opsledger.signoff import approve_change, request_change

from ..conftest import REPO_ROOT
from .conftest import START

BIN = Path(sys.executable).parent
INSIDE = START + dt.timedelta(minutes=30)
ALICE = {"name": "Alice Arnold", "email": "alice@example.org"}


def _branch(project):
    git(project.root, "checkout", "-q", "-b", "feature")


def _edit_work_mem(project):
    path = project.root / "inventories/lab/group_vars/db/postgresql.yml"
    path.write_text(path.read_text().replace("work_mem: 8MB", "work_mem: 16MB"))
    return path


def _request(project, files=()):
    change, _ = request_change(
        project,
        title="Raise work_mem",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(project.root, [*files, change.file.parent], f"Request {change.id}", **ALICE)
    return change.id


def test_pr_with_its_change_needs_approvals_then_is_ready(repo):
    project, _, _ = repo
    _branch(project)
    change_id = _request(project, [_edit_work_mem(project)])
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.scope.changes == [change_id]
    assert report.scope.desired_state == ["inventories/lab/group_vars/db/postgresql.yml"]
    assert report.uncovered == [] and report.exit_code == EXIT_DENIED
    assert "needs approvals" in report.markdown() and "❌" in report.markdown()
    approve_change(project, change_id, person="bob", now=START)
    ready = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert ready.exit_code == 0 and "ready to merge" in ready.markdown()


def test_desired_state_edit_without_a_change_is_invalid(repo):
    project, _, _ = repo
    _branch(project)
    path = _edit_work_mem(project)
    commit_paths(project.root, [path], "Quick fix", **ALICE)
    report = pr_check(project, base="main", with_plan=False)
    assert report.uncovered == ["inventories/lab/group_vars/db/postgresql.yml"]
    assert report.exit_code == EXIT_INVALID
    assert "without a change covering it" in report.markdown()


def test_desired_state_files_git_would_quote_are_not_missed(repo):
    """#14.8: `git diff --name-only` quotes non-ASCII names and spaces split on whitespace, so
    these uncovered edits once passed as "ready to merge"."""
    project, _, _ = repo
    _branch(project)
    folder = project.root / "inventories/production/group_vars/all"
    names = ["zé.yml", "with space.yml", 'quote"d.yml', "tab\tname.yml"]
    for name in names:
        (folder / name).write_text("---\nowner: nobody\n")
    git(project.root, "add", "-A")
    commit_paths(project.root, [folder / n for n in names], "Sneak in", **ALICE)
    report = pr_check(project, base="main", with_plan=False)
    assert sorted(report.uncovered) == sorted(
        f"inventories/production/group_vars/all/{n}" for n in names
    )
    result = CliRunner().invoke(
        cli,
        ["ci", "pr", "--base", "main", "--no-plan"],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == EXIT_INVALID and "zé.yml" in result.stdout
    # and on stderr, one error line per problem, as every command says bad input
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(names), result.stderr
    assert "error: inventories/production/group_vars/all/zé.yml: a desired-state edit" in (
        result.stderr
    )


def test_edit_outside_the_changes_content_is_uncovered(repo):
    project, _, _ = repo
    _branch(project)
    other = project.root / "inventories/production/group_vars/app/main.yml"
    other.write_text(other.read_text() + "# another environment: not this change's content\n")
    _request(project, [_edit_work_mem(project), other])
    report = pr_check(project, base="main", now=INSIDE, with_plan=False)
    assert report.uncovered == ["inventories/production/group_vars/app/main.yml"]


def test_invalid_change_in_a_pr_exits_2_via_the_cli(repo, tmp_path):
    project, _, _ = repo
    _branch(project)
    change_id = _request(project)
    file = change_folder(project.root, change_id, "change.yml")
    file.write_text(file.read_text().replace("runbook: converge", "runbook: nope"))
    commit_paths(project.root, [file], "Break", **ALICE)
    summary = tmp_path / "summary.md"
    result = CliRunner().invoke(
        cli,
        ["ci", "pr", "--base", "main", "--no-plan", "--summary", str(summary)],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )
    assert result.exit_code == EXIT_INVALID, result.output
    assert f"### {change_id}: invalid" in summary.read_text()
    assert "no runbook named 'nope'" in result.output


def test_codeowners_follow_the_policies_and_are_committed_current(repo):
    project, _, _ = repo
    text = codeowners(project)
    assert "/runbooks/pg-backup/ bob@example.org carol@example.org" in text
    assert "/policies/ carol@example.org" in text and "/src/ carol@example.org" in text
    assert (REPO_ROOT / ".github" / "CODEOWNERS").read_text() == codeowners(
        type(project)(REPO_ROOT)
    )
    assert (REPO_ROOT / ".gitlab" / "CODEOWNERS").read_text() == codeowners(
        type(project)(REPO_ROOT)
    )


def _owners(text: str, path: str) -> set[str]:
    """Who CODEOWNERS asks to review `path` (last matching line wins; directory prefixes)."""
    owners: set[str] = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        pattern, *who = line.split()
        prefix = pattern.lstrip("/")
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            owners = set(who)
    return owners


def test_codeowners_ask_exactly_whom_the_policy_needs(repo):
    """`* carol` made the CAB (one person) review every PR, standard changes (0 approvals) and
    emergencies (one on-call) included."""
    project, _, _ = repo
    text = codeowners(project)
    assert not any(line.startswith("* ") for line in text.splitlines())
    # A standard change (0 approvals), an emergency (one on-call or CAB), desired state.
    for path in (
        "changes/CHG-0042/change.yml",
        "changes/CHG-0042/approvals/dave.yml",
        "roles/postgresql/defaults/main.yml",
        "inventories/production/group_vars/db/postgresql.yml",
        "site.yml",
        "runbooks/converge/runbook.yml",
    ):
        assert _owners(text, path) == set(), path
    assert _owners(text, "runbooks/pg-backup/playbook.yml") == {
        "bob@example.org",
        "carol@example.org",
    }
    for judge in ("policies/changes.yml", "src/opsledger/decide.py", ".github/workflows/apply.yml",
                  "tests/infra/test_postgresql.py", "ansible.cfg", ".gitlab-ci.yml"):  # fmt: skip
        assert _owners(text, judge) == {"carol@example.org"}, judge


@pytest.mark.parametrize(
    ("schema", "files"),
    [
        ("vendor.github-workflows", sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))),
        ("vendor.gitlab-ci", [REPO_ROOT / ".gitlab-ci.yml"]),
    ],
    ids=["github", "gitlab"],
)
def test_pipelines_match_their_schemas(schema, files):
    assert files
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_workflow_is_caught(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text('"on": push\njobs:\n  x:\n    runs-on: linux\n    steps: "not a list"\n')
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1


def test_secret_scan_passes_the_tree_and_fails_on_a_planted_secret(tmp_path):
    files = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    hook = [str(BIN / "detect-secrets-hook"), "--baseline", ".secrets.baseline"]
    clean = subprocess.run([*hook, *files], cwd=REPO_ROOT, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    planted = tmp_path / "zz_planted_secret.yml"
    planted.write_text(
        "---\npostgresql_replication_password: 'hunter2-Zq8#k2LmP0vX'\n"
        "aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    )
    caught = subprocess.run([*hook, str(planted)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert caught.returncode == 1, caught.stdout
    assert "zz_planted_secret.yml" in caught.stdout


def test_pre_commit_config_is_valid():
    proc = subprocess.run(
        [str(BIN / "pre-commit"), "validate-config", ".pre-commit-config.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ci", "pr", "--base", "origin/nowhere", "--no-plan"], "unknown base 'origin/nowhere'"),
        (["ci", "apply", "--env", "moon"], "no inventory for environment 'moon'"),
        (["apply", "--pending", "--env", "moon"], "no inventory for environment 'moon'"),
        (["drift", "--env", "moon"], "no inventory for environment 'moon'"),
        (["inspect", "--schedule", "daily", "--env", "moon"], "no inventory for environment"),
        (["inspect", "--schedule", "hourly"], "no schedule 'hourly'"),
        (["verify", "--env", "moon"], "no inventory for environment 'moon'"),
        (["drill", "postgres", "--env", "moon"], "no inventory for environment 'moon'"),
        (["drill", "mysql"], "no DR service named 'mysql'"),
        (["drill"], "give SERVICE or --due"),
    ],
)
def test_bad_input_exits_2_naming_what_to_fix(repo, args, message):
    project, _, _ = repo
    before = git(project.root, "rev-parse", "HEAD").stdout
    result = CliRunner().invoke(cli, args, env={"OPSLEDGER_PROJECT": str(project.root)})
    assert result.exit_code == EXIT_INVALID, result.output
    assert message in result.output and "—" in result.output  # the problem, then the fix
    assert git(project.root, "rev-parse", "HEAD").stdout == before  # nothing committed
    assert not (project.root / "records").exists()


def test_records_rebased_before_the_push_are_still_ci_evidence(repo, tmp_path, monkeypatch):
    """CI's push is rejected because main moved: the rebase re-commits the record, and it must
    do so as the CI identity, or the record stops being evidence."""
    from opsledger.base import resolve_base
    from opsledger.evidence import run_evidence
    from opsledger.identity import commit_evidence
    from opsledger.origin_records import OriginRecords
    from opsledger.records import Record, run_record_path, write_record
    from opsledger.signoff import subject

    project, change_id, _ = repo
    root = project.root
    approve_change(project, change_id, person="bob", now=START)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(root, "push", "-q", str(origin), "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(origin), str(other))
    (other / "notes.md").write_text("meanwhile\n")
    commit_paths(other, [other / "notes.md"], "Meanwhile", **ALICE)
    git(other, "push", "-q", "origin", "main")

    git(root, "config", "user.name", "Runner Host")  # the machine's git identity is not CI's
    git(root, "config", "user.email", "runner@example.org")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_NAME", "opsledger CI")
    monkeypatch.setenv("OPSLEDGER_COMMITTER_EMAIL", "ci@example.org")
    record = Record(
        kind="run",
        environment="lab",
        result="success",
        started_at=INSIDE.isoformat(),
        finished_at=INSIDE.isoformat(),
        change=change_id,
        runbook="converge",
        params={"tags": ["postgresql"]},
        content_sha256=subject(project, change_id)[1].sha256,
    )
    path = write_record(run_record_path(project, change_id, INSIDE), record)
    commit_evidence(project, [path], f"Run {change_id}: success")

    git(root, "remote", "add", "ci-origin", str(origin))
    assert OriginRecords.of(project, "ci-origin").publish()
    who = git(root, "log", "-1", "--format=%ae %ce").stdout.split()
    assert who == ["ci@example.org", "ci@example.org"]
    (evidence,) = run_evidence(project, resolve_base(project, "HEAD"))
    assert evidence.trusted, evidence.reasons


@pytest.mark.parametrize(
    ("stray", "why"),
    [
        ("changes/2026/CHG-0001/change.yml", "not inside a change folder"),  # no reader knows
        ("changes/junk/notes.yml", "not inside a change folder"),
        ("changes/approvals.yml", "not inside a change folder"),
        (
            "changes/CHG-05xx/CHG-0123/change.yml",  # the wrong block: no reader finds it
            "CHG-0123 belongs in changes/CHG-01xx/CHG-0123, not in block CHG-05xx",
        ),
        ("changes/CHG-00xx/notes.yml", "notes.yml in block CHG-00xx is not a change id"),
        ("changes/CHG-00xx/junk/x.yml", "junk in block CHG-00xx is not a change id"),
    ],
)
def test_a_file_under_changes_outside_any_change_folder_is_refused(repo, stray, why):
    """No reader sees a file in no change folder, so nothing would judge it: the PR check
    refuses it (exit 2, one line naming it) instead of calling the PR ready."""
    project, _, _ = repo
    _branch(project)
    path = project.root / stray
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\ntitle: sneaked in\n")
    commit_paths(project.root, [path], "Sneak in", **ALICE)
    report = pr_check(project, base="main", with_plan=False)
    assert report.scope.stray == [stray] and report.scope.changes == []
    assert report.exit_code == EXIT_INVALID
    assert report.problem_lines() == [
        f"{stray}: {why}; a change's files live in changes/CHG-<block>/CHG-<n>/ "
        "(opsledger change new; legacy: changes/CHG-<n>/), a policy change's in "
        "changes/POL-<block>/POL-<n>/"
    ]
    assert f"`{stray}`" in report.markdown()


def test_the_changes_readme_is_not_a_stray_file(repo):
    project, _, _ = repo
    _branch(project)
    readme = project.root / "changes/README.md"
    readme.write_text("# Change requests\n\nOne folder per change request.\n")
    commit_paths(project.root, [readme], "Document", **ALICE)
    report = pr_check(project, base="main", with_plan=False)
    assert report.scope.stray == [] and report.exit_code == 0
