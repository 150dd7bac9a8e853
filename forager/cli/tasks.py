"""`forager tasks ...` (sample, mutate, validate, mine, import) and `forager grade`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from forager.cli import RuntimeChoice, console, docker_engine, fail, make_progress, read_tasks

tasks_app = typer.Typer(help="Work with task files.", no_args_is_help=True)


@tasks_app.command("sample")
def tasks_sample(out: Path = typer.Option(Path("sample-tasks.jsonl"), help="Where to write the tasks.")) -> None:
    """Write the sample repository's planted-bug tasks as JSONL."""
    from forager.images.sample import sample_tasks
    from forager.tasks.store import write_tasks

    tasks = sample_tasks()
    write_tasks(tasks, out)
    console.print(f"wrote {len(tasks)} tasks to {out}")


@tasks_app.command("mutate")
def tasks_mutate(
    image: str = typer.Option(..., help="Image holding the repository (a git work tree) at --workdir."),
    out: Path = typer.Option(..., help="JSONL file to write the tasks to."),
    max_tasks: int = typer.Option(50, "--max", help="Stop after this many valid tasks."),
    workdir: str = typer.Option("/repo", help="Where the repository lives in the image."),
    repo: str | None = typer.Option(None, help="Project name for the tasks and their statements (default: the "
                                               "image's `forager.name` label, the distribution's name)."),
    operators: str | None = typer.Option(None, help="Comma-separated operators (default: all)."),
    seed: int = typer.Option(0, help="Seed for the order candidates are tried in."),
    workers: int = typer.Option(1, help="Containers validating in parallel."),
    max_per_function: int = typer.Option(2, help="At most this many tasks per function."),
    extra_pass_to_pass: int = typer.Option(0, help="Also keep this many non-covering passing tests as PASS_TO_PASS."),
    drop_import_errors: bool = typer.Option(False, help="Drop bugs that stop the package from importing."),
    test_command: str | None = typer.Option(None, help="pytest command (default: the one the image was verified "
                                                       "with, else its `forager.test_command` label)."),
    test_timeout: float = typer.Option(120.0, help="Seconds per validation run."),
) -> None:
    """Generate validated mutate-fix tasks from an image: coverage, AST bugs, covering-test validation."""
    import functools

    from forager.core import DEFAULT_TEST_COMMAND
    from forager.runtime.docker import DockerRuntime, image_exists
    from forager.runtime.limits import missing_image_hint
    from forager.tasks.mutate import OPERATORS
    from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
    from forager.tasks.store import write_tasks

    chosen = tuple(o.strip() for o in operators.split(",")) if operators else OPERATORS
    config = MutateConfig(max_tasks=max_tasks, operators=chosen, seed=seed, workers=workers,
                          max_per_function=max_per_function, extra_pass_to_pass=extra_pass_to_pass,
                          drop_import_errors=drop_import_errors, test_timeout=test_timeout)
    client = docker_engine()
    if not image_exists(client, image):
        fail(f"no image {image!r} in the Docker engine: {missing_image_hint(image)}")
    from forager.images.manifest import Manifest

    labels = client.images.get(image).labels or {}
    name = repo or labels.get("forager.name") or image.split(":")[0].split("/")[-1].removeprefix("repo-")
    built = Manifest().get(image)  # its verified command leaves out test files that do not collect
    test_command = test_command or (built.test_command if built else None) or labels.get("forager.test_command")
    with make_progress() as progress:
        bar = progress.add_task("coverage run", total=max_tasks, detail="")

        def on_event(kind: str, report: Any) -> None:
            tried = sum(s.tried for s in report.stats.values())
            progress.update(bar, description="validating", completed=len(report.tasks),
                            detail=f"{tried}/{report.candidates} candidates tried")

        result = generate_mutate_fix_tasks(
            functools.partial(DockerRuntime, image, workdir, client=client), image=image, repo=name, config=config,
            test_command=test_command or DEFAULT_TEST_COMMAND, on_event=on_event,
        )
    write_tasks(result.tasks, out)
    _operator_table(result)
    console.print(f"wrote [bold]{len(result.tasks)}[/] tasks to {out} ({result.tests_passing}/{result.tests_total} "
                  f"tests pass at baseline; {result.target_functions} target functions; coverage "
                  f"{result.coverage_s:.1f}s, validation {result.validation_s:.1f}s)")
    for error in result.errors:
        console.print(f"[yellow]a worker failed:[/] {error}")


def _operator_table(result: Any) -> None:
    from rich.table import Column, Table

    # Narrow columns: the operator names must fit an 80-column terminal whole.
    table = Table(Column("operator", no_wrap=True), "tried", "valid", "yield", "no F2P", "import", "dup", "t/o",
                  caption="import: breaks the import; dup: a near-duplicate of a kept task; t/o: timed out")
    for op, s in sorted(result.stats.items()):
        table.add_row(op, str(s.tried), str(s.valid), f"{s.yield_:.0%}", str(s.no_failing_test),
                      str(s.import_error), str(s.near_duplicate), str(s.timed_out))
    console.print(table)


@tasks_app.command("validate")
def tasks_validate(
    tasks: str = typer.Option(..., help="Task file (JSONL/JSON/Parquet) or dataset."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    instance_id: list[str] | None = typer.Option(None, help="Only these tasks (repeatable)."),
    workers: int = typer.Option(2, help="Tasks graded in parallel."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per task."),
) -> None:
    """Check that each task's reference fix resolves it, the empty patch does not, and its starting state hides
    the fix: no git object outside the base history (a leak), no version of a later commit (metadata)."""
    import functools

    from forager.runtime.registry import open_runtime
    from forager.tasks.validate import check_tasks

    chosen = [t for t in read_tasks(tasks) if not instance_id or t.instance_id in instance_id]
    if not chosen:
        fail("no task matches")
    with make_progress() as progress:
        bar = progress.add_task("validating", total=len(chosen), detail="")
        bad = []

        def done(check: Any) -> None:
            if not check.ok:
                bad.append(check.task.instance_id)
            progress.update(bar, advance=1, detail=f"{len(bad)} bad")

        checks = check_tasks(chosen, functools.partial(open_runtime, kind=runtime.value), workers=workers, on_done=done)
    for check in checks:
        if as_json:
            print(json.dumps({"instance_id": check.task.instance_id, "ok": check.ok, "problem": check.problem,
                              "gold_resolved": bool(check.gold and check.gold.resolved),
                              "empty_resolved": bool(check.empty and check.empty.resolved),
                              "leak": check.leak, "metadata": check.metadata}))
        elif not check.ok:
            console.print(f"[red]bad[/] {check.task.instance_id}: {check.problem}")
    good = sum(c.ok for c in checks)
    console.print(f"{good}/{len(checks)} tasks valid" + ("" if good == len(checks) else f"; {len(checks) - good} bad"))
    if good != len(checks):
        raise typer.Exit(1)


@tasks_app.command("mine")
def tasks_mine(
    repo: Path | None = typer.Argument(None, help="A local git repository whose history to mine (default: the "
                                                  "repository in --image)."),
    out: Path = typer.Option(..., help="JSONL file to write the tasks to."),
    image: str | None = typer.Option(None, help="The project's image: the tests run in its containers, and the "
                                                "tasks name it."),
    runtime: str | None = typer.Option(None, help="docker, local or module:Class (default: docker with --image)."),
    test_command: str | None = typer.Option(None, help="pytest command (default: the image's forager.test_command)."),
    workdir: str | None = typer.Option(None, help="The repository in the image (default: its WORKDIR)."),
    issues: Path | None = typer.Option(None, help="Issue texts: JSON/JSONL by commit, or by issue number "
                                                  '({"number": 387, "title": ..., "body": ...}).'),
    issue_url: str | None = typer.Option(None, help="URL template for linked issues, e.g. "
                                                    "https://api.github.com/repos/OWNER/NAME/issues/{number}"),
    report: Path | None = typer.Option(None, help="Per-commit outcomes as JSONL (default: OUT's stem + "
                                                  ".report.jsonl)."),
    max_tasks: int | None = typer.Option(None, "--max", help="Stop after this many tasks."),
    max_commits: int | None = typer.Option(None, help="Look at this many commits, newest first."),
    test_timeout: float = typer.Option(300.0, help="Seconds per test run."),
) -> None:
    """Mine issue-fix tasks from commits that change both tests and code, running their tests in the image."""
    from collections import Counter

    from forager.tasks.issue_fix import MineConfig, load_issue_texts, mine_repository, resolve_config
    from forager.tasks.store import write_tasks

    config = resolve_config(repo, MineConfig(
        max_tasks=max_tasks, max_commits=max_commits, image=image, runtime=runtime, test_command=test_command,
        workdir=workdir, test_timeout=test_timeout, issue_url=issue_url,
        issues=load_issue_texts(issues) if issues else None))
    outcomes: Counter[str] = Counter()
    with make_progress() as progress:
        bar = progress.add_task("commits", total=max_commits, detail="")

        def on_event(outcome: Any) -> None:
            outcomes[outcome.outcome] += 1
            progress.update(bar, advance=1, detail=f"{outcomes['task']} tasks, {outcome.duration_s:.1f}s last")

        result = mine_repository(repo, config, on_event=on_event)
    write_tasks(result.tasks, out)
    report_path = result.write_jsonl(report or out.with_name(out.stem + ".report.jsonl"))
    _commit_table(result)
    if result.interrupted:
        console.print("[yellow]interrupted: the tasks found so far are written[/]")
    console.print(f"wrote [bold]{len(result.tasks)}[/] tasks to {out} from {result.commits_seen} commits "
                  f"({result.candidates} ran their tests in {result.runtime}); per-commit report: {report_path}")
    if result.tasks:
        n = result.from_commit_messages
        console.print(f"statements: {len(result.tasks) - n} from linked issues, {n} the commit message"
                      + ("" if not n else " (no linked issue text: --issues or --issue-url)"))
    else:
        console.print(f"[yellow]{result.why_no_tasks()}[/]")
    for note in list(dict.fromkeys(result.issue_notes))[:5]:
        console.print(f"[yellow]issue text not used:[/] {note}")


def _commit_table(result: Any, max_rows: int = 60) -> None:
    """The commits whose tests ran, one row each, then the count of every outcome."""
    from collections import Counter

    from rich.table import Table

    ran = [o for o in result.outcomes if o.ran_tests]
    table = Table("commit", "subject", "outcome", "detail", "time")
    for o in ran[:max_rows]:
        colour = "green" if o.outcome == "task" else "red"
        table.add_row(o.commit[:10], o.subject[:48], f"[{colour}]{o.outcome}[/]", o.detail[:90], f"{o.duration_s:.1f}s")
    if len(ran) > max_rows:
        table.add_row("...", f"{len(ran) - max_rows} more in the report", "", "", "")
    if ran:
        console.print(table)
    counts = Table("outcome", "commits", "example")
    for reason, n in Counter(o.outcome for o in result.outcomes).most_common():
        example = next((o.detail for o in result.outcomes if o.outcome == reason and o.detail), "")
        counts.add_row(reason, str(n), example[:100])
    console.print(counts)


@tasks_app.command("import")
def tasks_import(
    source: str = typer.Argument(..., help="A swebench/SWE-smith JSON, JSONL or Parquet file, a dataset directory, "
                                           "or a Hugging Face dataset name (princeton-nlp/SWE-bench_Verified)."),
    out: Path = typer.Option(..., help="Forager JSONL file to write."),
    split: str = typer.Option("test", help="Dataset split."),
    fmt: str = typer.Option("auto", "--format", help="auto, forager, swebench or swe-smith."),
    image: str | None = typer.Option(None, help="Use this image for every task."),
) -> None:
    """Import task instances as they are into Forager's JSONL format."""
    from collections import Counter

    from forager.tasks.store import write_tasks

    loaded = read_tasks(source, split, fmt, image)
    write_tasks(loaded, out)
    kinds = Counter(t.kind for t in loaded)
    console.print(f"wrote {len(loaded)} tasks to {out} ({', '.join(f'{n} {k}' for k, n in kinds.items())})")


def grade(
    tasks: str = typer.Option(..., help="Task file or dataset."),
    instance_id: str = typer.Option(..., help="Which task."),
    patch: str = typer.Option(..., help="The diff to grade: a file, or - for stdin."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print the RewardResult as JSON."),
    reward_unresolved: float = typer.Option(0.0, help="Reward when unresolved (CWM: -1)."),
    partial_credit: bool = typer.Option(False, help="Reward the share of passing tests."),
) -> None:
    """Grade a patch against a task the way SWE-bench does, in a fresh runtime."""
    import functools

    from forager.rewards import RewardConfig, grade_patch
    from forager.runtime.registry import open_runtime

    task = next((t for t in read_tasks(tasks) if t.instance_id == instance_id), None)
    if task is None:
        fail(f"no task {instance_id!r} in {tasks}")
    diff = sys.stdin.read() if patch == "-" else Path(patch).read_text() if Path(patch).is_file() else None
    if diff is None:
        fail(f"no patch file {patch!r} (use - to read the diff from stdin)")
    result = grade_patch(task, diff, functools.partial(open_runtime, kind=runtime.value),
                         RewardConfig(unresolved=reward_unresolved, partial_credit=partial_credit))
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    colour = "green" if result.resolved else "red"
    console.print(f"[bold {colour}]{result.resolution}[/] reward={result.reward:g} resolved={result.resolved} "
                  f"({result.duration_s:.1f}s)")
    for test, status in result.tests_status.items():
        console.print(f"  {status:8s} {test}")
    if result.excluded_files:
        console.print(f"[yellow]left out of the patch (protected):[/] {', '.join(result.excluded_files)}")
    if result.error:
        console.print(f"[red]{result.error}[/]")
