"""`opsledger ci ...`: the steps pipelines run, runnable on a laptop too."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from opsledger.cli.options import TIME, output_folder, output_option, wait_duration, write_output
from opsledger.errors import OpsledgerError, Problem
from opsledger.project import Project, find_project


@click.group()
def ci() -> None:
    """Pipeline steps: check a pull request, apply after a merge, generate CODEOWNERS.

    \b
    Example:
        opsledger ci pr --base origin/main --summary "$GITHUB_STEP_SUMMARY"
    """


@ci.command()
@click.option("--base", default="origin/main", show_default=True, help="The PR's target branch.")
@click.option("--no-plan", is_flag=True, help="Validate and decide only (no check-mode run).")
@click.option(
    "--plan-env",
    "plan_envs",
    multiple=True,
    help="Plan only changes of this environment (repeat); the others are deferred to the "
    "protected plan job. Default: every environment.",
)
@click.option("--approved-only", is_flag=True, help="Plan only changes whose approvals are in.")
@click.option(
    "--untrusted",
    is_flag=True,
    help="This job runs the PR's code: refuse (exit 2) while it holds a secret; private SSH "
    "connections.",
)
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also append the markdown summary to this file (e.g. $GITHUB_STEP_SUMMARY).",
)
@click.option(
    "--comment-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the PR comment as parts under GitHub's size limit: DIR/comment-<n>.md.",
)
@click.option("--artifact-url", default="", help="Where the full plan is kept (the comment says).")
@click.option(
    "--comment-key",
    default="plan",
    show_default=True,
    help="Names the sticky comment (its hidden marker): one per job that comments.",
)
@click.option(
    "--outputs",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append protected=<JSON list of environments the protected plan job must plan> "
    "(e.g. $GITHUB_OUTPUT).",
)
@click.option("--at", "at", type=TIME, help="Judge the rules at this time.")
def pr(
    base: str,
    no_plan: bool,
    plan_envs: tuple[str, ...],
    approved_only: bool,
    untrusted: bool,
    summary: Path | None,
    comment_dir: Path | None,
    artifact_url: str,
    comment_key: str,
    outputs: Path | None,
    at: dt.datetime | None,
) -> None:
    """Validate, decide and plan the changes a pull request touches; print markdown.

    Exit 2 when a change is invalid or desired state changes without a change request covering
    it (or, with --untrusted, when the job holds a secret), 3 while a change lacks valid
    approvals (make this a required check), else 0.

    \b
    Example:
        opsledger ci pr --base origin/main --untrusted --plan-env lab --comment-dir plan
    """
    import json

    from opsledger.ci import pr_check
    from opsledger.prcomment import comment_parts

    output_folder(summary, "--summary")
    output_folder(outputs, "--outputs")
    project = find_project()

    def write_comment(text: str) -> None:
        if not comment_dir:
            return
        comment_dir.mkdir(parents=True, exist_ok=True)
        for old in comment_dir.glob("comment-*.md"):
            old.unlink()
        for index, part in enumerate(
            comment_parts(text, artifact_url=artifact_url, key=comment_key), start=1
        ):
            (comment_dir / f"comment-{index}.md").write_text(part)

    try:
        report = pr_check(
            project,
            base=base,
            now=at,
            with_plan=not no_plan,
            plan_environments=set(plan_envs) if plan_envs else None,
            approved_only=approved_only,
            untrusted=untrusted,
        )
    except OpsledgerError as err:
        # The sticky comment still showed the last commit's verdict ("ready to merge") when
        # this one could not be checked at all: it now says so, and why.
        write_comment(_refusal_comment(project, err))
        raise
    text = report.markdown()
    click.echo(text, nl=False)
    if summary:
        write_output(summary, text, "--summary", append=True)
    write_comment(text)
    if outputs:
        line = f"protected={json.dumps(report.protected_plans)}\n"
        write_output(outputs, line, "--outputs", append=True)
    for problem in report.problem_lines():  # the summary above says them too, in the table
        click.secho(f"error: {problem}", fg="red", err=True)
    raise SystemExit(report.exit_code)


def _refusal_comment(project: Project, err: OpsledgerError) -> str:
    """The PR comment of a check that could not run: the commit and each problem."""
    from opsledger.gitrepo import git

    commit = git(project.root, "rev-parse", "HEAD", check=False).stdout.strip() or "unknown"
    lines = ["## opsledger: not checked", "", f"Made from commit `{commit}`.", ""]
    lines += [f"- {p}" for p in err.problems]
    return "\n".join(lines) + "\n"


@ci.command("apply")
@click.option("--env", "environment", help="Only changes of this environment.")
@click.option("--push", "remote", help="Push the run records to this remote (e.g. origin).")
@click.option(
    "--wait",
    default="0s",
    type=wait_duration,
    help="How long to wait for held locks: a duration (30m) or seconds.",
)
@click.option("--at", "at", type=TIME, help="Judge the rules at this time.")
@click.option(
    "--shard",
    "shard_spec",
    metavar="I/N",
    help="Run only shard I of N of each change: one job of the pipeline's shard matrix.",
)
def apply_(
    environment: str | None,
    remote: str | None,
    wait: dt.timedelta,
    at: dt.datetime | None,
    shard_spec: str | None,
) -> None:
    """After a merge: apply every pending change, then push the records back.

    Exit 0 when every applied change succeeded (or nothing was pending), 1 when one did not,
    or when a pending change can never run as it stands ("cannot run": withdraw or amend it).
    With --shard I/N each change's hosts are split over N jobs (README, Scaling out).

    \b
    Example:
        opsledger ci apply --push origin --wait 15m
        opsledger ci apply --env production --push origin --shard "$CI_NODE_INDEX/$CI_NODE_TOTAL"
    """
    from opsledger.ci import ci_apply
    from opsledger.cli.progress import JsonEvents
    from opsledger.shards import Shard

    shard = Shard.parse(shard_spec) if shard_spec is not None else None
    result = ci_apply(
        find_project(),
        remote=remote,
        now=at,
        wait=wait.total_seconds(),
        events=JsonEvents(),
        environment=environment,
        shard=shard,
    )
    for item in result.pending.items:
        click.echo(f"{item.change_id}: {item.action} — {item.why}")
    if not result.pending.items:
        click.echo("nothing pending")
    if result.pushed:
        click.echo(f"run records pushed to {remote}/{result.branch}")
    raise SystemExit(0 if result.pending.ok else 1)


@ci.command("merge")
@click.option("--env", "environment", help="Only changes of this environment.")
@click.option("--push", "remote", help="Pull from and push the merged records to this remote.")
@click.option(
    "--final",
    is_flag=True,
    help="Every shard job has ended: a shard without a final record counts as interrupted.",
)
def merge(environment: str | None, remote: str | None, final: bool) -> None:
    """Merge the shard records of sharded applies into each change's one run record.

    The pipeline's last job, after every `ci apply --shard` job ended (--final). Exit 0 when
    every merged run succeeded (or nothing was left to merge), 1 otherwise.

    \b
    Example:
        opsledger ci merge --env production --push origin --final
    """
    from opsledger.ci import origin_of
    from opsledger.cli.progress import JsonEvents
    from opsledger.sharded import merge_all

    project = find_project()
    if environment is not None:
        project.require_environment(environment)
    result = merge_all(
        project,
        environment=environment,
        final=final,
        origin=origin_of(project, remote),
        events=JsonEvents(),
    )
    for item in result.merges:
        if item.merged:
            click.echo(f"{item.change_id}: set {item.attempt} of {item.count} shards merged: "
                       f"{item.result} ({item.record_path.relative_to(project.root)})")  # fmt: skip
        else:
            click.echo(f"{item.change_id}: set {item.attempt} waits for shard(s) "
                       f"{', '.join(item.waiting)}")  # fmt: skip
    if not result.merges:
        click.echo("nothing to merge")
    raise SystemExit(0 if result.ok else 1)


@ci.command("shards")
@click.option("--env", "environments", multiple=True, help="Environment (repeat); default all.")
@output_option(
    "text",
    "json",
    "github",
    help="github: `ENV=[1, 2, ...]` lines for $GITHUB_OUTPUT (the apply matrix); json: "
    "{ENV: count}.",
)
@click.option(
    "--check-gitlab",
    "check_gitlab",
    type=click.Path(path_type=Path),
    help="Exit 1 when this .gitlab-ci.yml's apply jobs' `parallel:` differ from the policy.",
)
def shards(environments: tuple[str, ...], fmt: str, check_gitlab: Path | None) -> None:
    """How many shards each environment's apply gets (policies/locks.yml, from its host count).

    \b
    Example:
        opsledger ci shards --format github      # the apply workflow's matrix
        opsledger ci shards --check-gitlab .gitlab-ci.yml
    """
    import json

    from opsledger.shards import gitlab_parallel_problems, shard_count

    project = find_project()
    names = list(environments) or sorted(
        p.parent.name for p in project.root.glob("inventories/*/hosts.yml")
    )
    counts = {name: shard_count(project, name) for name in names}
    if check_gitlab is not None:
        problems = gitlab_parallel_problems(check_gitlab, counts)
        for problem in problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1 if problems else 0)
    if fmt == "json":
        click.echo(json.dumps(counts, indent=2))
        return
    if fmt == "github":  # step outputs: one `name=<JSON list of shard indexes>` per line
        for name, count in counts.items():
            click.echo(f"{name}={json.dumps(list(range(1, count + 1)))}")
        return
    for name, count in counts.items():
        click.echo(f"{name}: {count}")


@ci.command("push")
@click.option("--remote", default="origin", show_default=True, help="The remote to push to.")
def push(remote: str) -> None:
    """Push the evidence this clone committed (drift, inspections, drills, incidents).

    Rebases onto the remote when the branch moved, as the evidence identity
    ($OPSLEDGER_COMMITTER_NAME/EMAIL: a fresh CI runner has no git identity), signed with
    $OPSLEDGER_SIGNING_KEY when set. Exit 1 when the remote keeps refusing the push.

    \b
    Example:
        opsledger drift --env production; opsledger ci push --remote origin
    """
    from opsledger.ci import ci_push

    result = ci_push(find_project(), remote=remote)
    click.echo(f"{result.status}: {result.commits} commit(s) to {remote}/{result.branch}")


@ci.command()
@click.option("--check", is_flag=True, help="Exit 1 when the file differs from the policies.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path(".github/CODEOWNERS"),
    show_default=True,
)
def codeowners(check: bool, output: Path) -> None:
    """Write CODEOWNERS from policies/people.yml and policies/changes.yml.

    \b
    Example:
        opsledger ci codeowners --check
    """
    from opsledger.ci import codeowners as generate

    project = find_project()
    path = output if output.is_absolute() else project.root / output
    text = generate(project)
    if check:
        try:
            current = path.read_text() if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            click.echo(f"{output} is stale: run opsledger ci codeowners", err=True)
            raise SystemExit(1)
        click.echo(f"{output} matches the policies")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpsledgerError(
            Problem(f"cannot make its folder: {exc.strerror}", str(path), "--output", "pick a file")
        ) from None
    write_output(path, text, "--output")
    click.echo(f"wrote {output}")
