"""Several opsledger processes writing in ONE checkout at the same moment (commitlock.py).

A team runs commands side by side in one clone (an inspection's evidence, an on-call engineer
opening an incident, a colleague noting another). Each test releases real processes at once
with a go-file and checks that every one of them succeeded and that git holds every write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

import opsledger
from opsledger.gitrepo import git, nul_paths

from .conftest import copy_project

RACERS = 6
CI = {
    "GIT_AUTHOR_NAME": "opsledger CI",
    "GIT_AUTHOR_EMAIL": "ci@example.org",
    "GIT_COMMITTER_NAME": "opsledger CI",
    "GIT_COMMITTER_EMAIL": "ci@example.org",
}
NEW = ["--class", "software", "--impact", "low", "--urgency", "low", "--as", "alice"]

# A racer loads opsledger's CLI first, then waits for the go-file, so all start together.
CLI_RACER = """\
import os
import sys, time
from pathlib import Path
import opsledger.cli.root
from opsledger.cli import main
go = Path(sys.argv[1])
sys.argv = ["opsledger", *sys.argv[2:]]
Path(os.environ['RACE_READY'], str(os.getpid())).touch()
while not go.exists():
    time.sleep(0.0005)
main()
"""

EVIDENCE_RACER = """\
import os
import datetime as dt, sys, time
from pathlib import Path
from opsledger.project import Project
from opsledger.records import Record, save_evidence
project, go, name = Project(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
moment = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
record = Record(kind="inspection", environment="lab", result="success",
                started_at=moment.isoformat(), finished_at=moment.isoformat(), hosts=["lab-db1"])
Path(os.environ['RACE_READY'], str(os.getpid())).touch()
while not go.exists():
    time.sleep(0.0005)
print(save_evidence(project, record, started=moment, name=name, message=f"Inspection {name}").path)
"""


def _repo(tmp_path: Path) -> Path:
    project = copy_project(tmp_path / "p")
    (project.root / ".gitignore").write_text(".opsledger/\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-qm", "Initial", env=CI)
    return project.root


def _race(root: Path, go: Path, argvs: list[list[str]], racer: str) -> list[tuple[int, str]]:
    return _race_mixed(root, go, [(argv, racer) for argv in argvs])


def _race_mixed(root: Path, go: Path, racers: list[tuple[list[str], str]]) -> list[tuple[int, str]]:
    """Start each (argv, script) racer, release them all at once; (exit code, output) each.

    Each racer loads what it needs, says so in a file of its own, then waits for `go`.
    """
    ready = go.with_name(go.name + "-ready")
    ready.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(opsledger.__file__).parents[1]),
        "OPSLEDGER_PROJECT": str(root),
        "OPSLEDGER_NO_INCIDENTS": "1",
        **CI,
        "RACE_READY": str(ready),
    }
    env.pop("OPSLEDGER_SIGNING_KEY", None)
    started = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv, script in racers
    ]
    deadline = time.monotonic() + 120
    while len(list(ready.iterdir())) < len(started) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in started):
            break  # a racer died before the start: its output says why
        time.sleep(0.01)
    go.touch()
    return [(p.wait(120), p.stdout.read()) for p in started]  # type: ignore[union-attr]


def _clean(root: Path) -> str:
    return git(root, "status", "--porcelain", "-uall").stdout


def test_incidents_opened_at_once_each_get_their_own_id_and_commit(tmp_path):
    """Two `incident new` at once took the same next id: the second overwrote the first's
    incident.yml (its report lost, its commit then edited by another's) or died on git's
    index lock or with a traceback. Without the fix it failed in 3 of 3 runs on 2 cores, and
    with only gitrepo's lock (no lock around choosing the id) it lost incidents silently."""
    root = _repo(tmp_path)
    titles = []
    for round_ in range(2):
        argvs = []
        for n in range(RACERS):
            title = f"Report {round_}-{n} of a slow page"
            titles.append(title)
            argvs.append(
                [str(tmp_path / f"go-{round_}"), "incident", "new", "--title", title, *NEW]
            )
        said = _race(root, tmp_path / f"go-{round_}", argvs, CLI_RACER)
        assert [code for code, _ in said] == [0] * RACERS, [out for code, out in said if code]
    files = nul_paths(git(root, "ls-tree", "-r", "-z", "--name-only", "HEAD", "incidents").stdout)
    read = {yaml.safe_load(git(root, "show", f"HEAD:{f}").stdout)["title"] for f in files}
    assert read == set(titles) and len(files) == len(titles)
    opened = git(root, "log", "--format=%s", "--", "incidents").stdout.splitlines()
    assert len(opened) == len(titles)  # one commit each, none edits another's incident
    assert _clean(root) == ""


def test_notes_added_to_one_incident_at_once_are_all_in_its_timeline(tmp_path):
    """Each note reads the timeline, appends and commits: two at once wrote over each other's
    entry (a lost note, and a commit that removes a committed entry, which `audit check` reads
    as an edit of the append-only timeline). Without the fix it failed in 3 of 3 runs."""
    root = _repo(tmp_path)
    go = tmp_path / "go-open"
    opened = [str(go), "incident", "new", "--title", "Disk fills on db1", *NEW]
    assert _race(root, go, [opened], CLI_RACER)[0][0] == 0
    go = tmp_path / "go-notes"
    notes = [f"finding number {n}" for n in range(RACERS)]
    argvs = [[str(go), "incident", "note", "INC-0001", "--text", t, "--as", "bob"] for t in notes]
    said = _race(root, go, argvs, CLI_RACER)
    assert [code for code, _ in said] == [0] * RACERS, [out for code, out in said if code]
    data = yaml.safe_load(git(root, "show", "HEAD:incidents/INC-0001/incident.yml").stdout)
    assert sorted(e["text"] for e in data["timeline"] if e["action"] == "note") == notes
    assert _clean(root) == ""


def test_evidence_saved_at_once_is_all_committed(tmp_path):
    """Inspections (and drift checks, drills, run records) commit their evidence through
    gitrepo.commit_paths: at once, all but one died on `.git/index.lock`, or a record another
    had staged dropped out of the index (pathspec did not match any file known to git).
    Without the fix it failed in 3 of 3 runs (6 or 7 of 8 racers died in a first probe)."""
    root = _repo(tmp_path)
    for round_ in range(2):
        go = tmp_path / f"go-{round_}"
        argvs = [[str(root), str(go), f"check-{round_}-{n}"] for n in range(RACERS)]
        said = _race(root, go, argvs, EVIDENCE_RACER)
        assert [code for code, _ in said] == [0] * RACERS, [out for code, out in said if code]
    records = nul_paths(git(root, "ls-tree", "-r", "-z", "--name-only", "HEAD", "records").stdout)
    assert len(records) == 2 * RACERS
    assert _clean(root) == ""


PULL_RACER = """\
import os
import sys, time
from pathlib import Path
from opsledger.gitrepo import commit_paths
from opsledger.origin_records import OriginRecords
from opsledger.project import Project
root, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if name == "pull":
    origin = OriginRecords.of(Project(root), "origin")
else:
    record = root / "records" / f"{name}.json"
    record.parent.mkdir(exist_ok=True)
    record.write_text(name)
Path(os.environ['RACE_READY'], str(os.getpid())).touch()
while not go.exists():
    time.sleep(0.0005)
if name == "pull":
    origin.pull()
else:
    commit_paths(root, [record], f"Record {name}", name="CI", email="ci@example.org")
"""


def _clone_behind_its_origin(tmp_path: Path) -> Path:
    """A clone with 20 commits of its own and an origin one commit ahead: pull rebases."""
    seed, origin, work = tmp_path / "seed", tmp_path / "origin.git", tmp_path / "work"
    seed.mkdir(parents=True)
    git(seed, "init", "-q", "-b", "main")
    (seed / "README").write_text("seed\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-qm", "Seed", env=CI)
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True)
    (seed / "from-origin").write_text("merged meanwhile\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-qm", "Merged on the origin", env=CI)
    git(seed, "push", "-q", str(origin), "main")
    for n in range(20):
        (work / f"local-{n}").write_text(f"{n}\n")
        git(work, "add", "-A")
        git(work, "commit", "-qm", f"Local evidence {n}", env=CI)
    return work


def test_a_pull_rebasing_while_others_commit_in_the_checkout_keeps_every_commit(tmp_path):
    """apply --push pulls the origin (a rebase of this clone's evidence) while another command
    of the checkout commits: the rebase found that command's record staged and refused ("Please
    commit or stash them", exit 1 for the apply). Without the fix it failed in 4 of 4 rounds
    of 1 pull and 4 committers."""
    for round_ in range(2):
        work = _clone_behind_its_origin(tmp_path / f"round-{round_}")
        go = tmp_path / f"go-{round_}"
        names = ["pull", *(f"record-{n}" for n in range(RACERS - 1))]
        said = _race(work, go, [[str(work), str(go), n] for n in names], PULL_RACER)
        assert [code for code, _ in said] == [0] * len(names), [out for code, out in said if code]
        tree = nul_paths(git(work, "ls-tree", "-r", "-z", "--name-only", "HEAD").stdout)
        assert "from-origin" in tree
        assert {f"records/{n}.json" for n in names[1:]} <= set(tree)
        assert git(work, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"
        assert _clean(work) == ""


READER = """\
import sys
from pathlib import Path
from opsledger.errors import OpsledgerError
from opsledger.faults.store import load_incident
from opsledger.project import Project
project, stop = Project(Path(sys.argv[1])), Path(sys.argv[2])
reads, refused = 0, []
while not stop.exists():
    reads += 1
    try:
        load_incident(project, "INC-0001")
    except OpsledgerError as err:
        refused.append(str(err.problems[0]))
print(reads, refused[:1])
sys.exit(1 if refused or reads < 10 else 0)
"""


def test_an_incident_read_while_steps_rewrite_it_is_always_whole(tmp_path):
    """`incident show`, `report` and `audit check` read incident.yml without waiting for the
    commit lock; a step rewrote it in place, and a read between the truncation and the write
    was refused ("'id' is a required property"). Two readers looping while 6 notes commit:
    without the fix they were refused 18 and 26 times in ~3,400 reads each (12 notes) and
    the test failed in 3 of 3 runs."""
    root = _repo(tmp_path)
    go = tmp_path / "go-open"
    opened = [str(go), "incident", "new", "--title", "Disk fills on db1", *NEW]
    assert _race(root, go, [opened], CLI_RACER)[0][0] == 0
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(Path(opsledger.__file__).parents[1])}
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(root), str(stop)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    go = tmp_path / "go-notes"
    argvs = [
        [str(go), "incident", "note", "INC-0001", "--text", f"finding {n}", "--as", "bob"]
        for n in range(RACERS)
    ]
    said = _race(root, go, argvs, CLI_RACER)
    stop.touch()
    read = [(p.wait(60), p.stdout.read()) for p in readers]  # type: ignore[union-attr]
    assert [code for code, _ in said] == [0] * RACERS, [out for code, out in said if code]
    assert [code for code, _ in read] == [0, 0], read


APPLY_RACER = """\
import os
import datetime as dt, sys, time
from pathlib import Path
from opsledger.apply import apply_change
from opsledger.errors import OpsledgerError
from opsledger.project import Project
root, go, change = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
inside = dt.datetime(2026, 12, 1, 20, 30, tzinfo=dt.UTC)  # the change's window
Path(os.environ['RACE_READY'], str(os.getpid())).touch()
while not go.exists():
    time.sleep(0.0005)
try:
    print(apply_change(Project(root), change, now=inside, skip_verify=True).record.result)
except OpsledgerError as err:
    print(err.problems[0])
    sys.exit(err.exit_code)
"""

COLD_CLI_RACER = """\
import os, sys, time
from pathlib import Path
go = Path(sys.argv[1])
Path(os.environ['RACE_READY'], str(os.getpid())).touch()
while not go.exists():
    time.sleep(0.0005)
os.execv(sys.executable, [sys.executable, "-m", "opsledger", *sys.argv[2:]])
"""


def test_a_change_withdrawn_while_it_is_applied_either_runs_or_is_withdrawn_never_both(
    repo, tmp_path
):
    """`change withdraw` checked that no run had started, then committed; apply decided, then
    committed its write-ahead record: interleaved, the change was withdrawn AND ran (its
    withdrawal says it never runs). The withdrawal starts cold (a new `opsledger` process, as
    a person types it) while apply is loaded: that lands its check inside apply's window.
    Without the fix 3 of 6 rounds of a first probe did both, and the test failed in 3 of 4 runs."""
    from .test_apply import _probe

    project, change_id = _probe(repo, "settings.yml")
    root = project.root
    base = git(root, "rev-parse", "HEAD").stdout.strip()
    withdraw = ["change", "withdraw", change_id, "--as", "alice", "--reason", "Superseded now"]
    for round_ in range(12):
        git(root, "reset", "-q", "--hard", base)
        git(root, "clean", "-qfd", "-e", ".opsledger")
        go = tmp_path / f"go-{round_}"
        applying = [str(root), str(go), change_id]
        withdrawing = [str(go), *withdraw, "--key", str(repo[2]["alice"])]
        said = _race_mixed(root, go, [(applying, APPLY_RACER), (withdrawing, COLD_CLI_RACER)])
        log = git(root, "log", "--format=%s", f"{base}..HEAD").stdout.splitlines()
        started = [s for s in log if s.endswith(": started")]
        withdrawn = [s for s in log if s.startswith("Withdraw ")]
        assert len(started) + len(withdrawn) == 1, (log, said)
        assert sorted(code for code, _ in said)[0] == 0, said  # the one that came first
        assert all(code in (0, 3, 4) for code, _ in said), said  # the other: denied or busy


def test_an_owed_review_completed_by_several_at_once_is_written_once(repo, tmp_path):
    """Each `change review` checked the review was still due, then wrote and committed it:
    at once, a later reviewer overwrote the first one's review (both exit 0), or died on
    git's index lock. Without the fix it failed in 3 of 3 runs (and 3 of 3 on main)."""
    from opsledger.reviews import review_path

    from .test_apply import _probe

    project, change_id = _probe(repo, "settings.yml")
    root = project.root
    owed = {  # what apply leaves after an emergency change's first run (reviews.open_review)
        "change": change_id,
        "status": "due",
        "due_by": "2026-12-04T21:00:00+00:00",
        "applied_at": "2026-12-01T21:00:00+00:00",
        "reviewed_by": None,
        "reviewed_at": None,
        "summary": "",
        "cause": "",
        "actions": [],
    }
    review_path(project, change_id).write_text("---\n" + yaml.safe_dump(owed, sort_keys=False))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "Review owed", env=CI)
    base = git(root, "rev-parse", "HEAD").stdout.strip()
    for round_ in range(3):
        git(root, "reset", "-q", "--hard", base)
        go = tmp_path / f"go-{round_}"
        argvs = [
            [str(go), "change", "review", change_id, "--as", person, "--summary",
             f"Restart cleared it ({person})", "--cause", "A leak", "--key", str(repo[2][person])]
            for person in ("bob", "carol", "dave")
        ]  # fmt: skip
        said = _race(root, go, argvs, CLI_RACER)
        assert sorted(code for code, _ in said) == [0, 2, 2], said
        assert all("already reviewed" in out for code, out in said if code), said
        log = git(root, "log", "--format=%s", f"{base}..HEAD").stdout.splitlines()
        assert log == [f"Review {change_id}"]


def test_one_persons_statements_made_at_once_are_each_a_new_file(repo, tmp_path):
    """A statement is named by its second; `approve` took the next free second, then wrote and
    committed. The same person approving twice at once (a retried pipeline step) got the same
    name: the later commits rewrote a committed statement instead of adding one. Without the
    fix it failed in 3 of 3 runs."""
    project, change_id, keys = repo
    root = project.root
    base = git(root, "rev-parse", "HEAD").stdout.strip()
    for round_ in range(2):
        go = tmp_path / f"go-{round_}"
        argvs = [
            [str(go), "approve", change_id, "--as", "bob", "--comment", f"take {n}",
             "--key", str(keys["bob"])]
            for n in range(3)
        ]  # fmt: skip
        said = _race(root, go, argvs, CLI_RACER)
        assert [code for code, _ in said] == [0, 0, 0], said
    added = git(root, "log", "--diff-filter=A", "--name-only", "--format=", f"{base}..HEAD")
    changed = git(root, "log", "--diff-filter=M", "--name-only", "--format=", f"{base}..HEAD")
    assert len(added.stdout.split()) == 6 and changed.stdout.split() == []
