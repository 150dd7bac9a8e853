"""`forager ...`: thin commands over the library, with readable errors."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.panel import Panel

from forager.core import ForagerError

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(help="Forager: a gym for training and evaluating software-engineering agents.", no_args_is_help=True)
images_app = typer.Typer(help="Build executable repository images (no registry needed).", no_args_is_help=True)
tasks_app = typer.Typer(help="Work with task files.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(tasks_app, name="tasks")
console = Console(soft_wrap=True)  # messages are not cut into lines: logs stay greppable


class RuntimeChoice(str, Enum):
    auto = "auto"
    docker = "docker"
    local = "local"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _docker():
    from forager.runtime.docker import docker_client

    return docker_client()


@images_app.command("bootstrap")
def images_bootstrap(
    from_registry: bool = typer.Option(False, help="Build FROM python:3.11-slim instead of debootstrap."),
    mirror: Optional[str] = typer.Option(None, help="Debian mirror (default: the one this host's apt uses)."),
    force: bool = typer.Option(False, help="Rebuild even if the image exists."),
) -> None:
    """Build the Debian-based Python base image offline (debootstrap + docker import)."""
    from forager.images.bootstrap import bootstrap_base_image

    try:
        tag = bootstrap_base_image(_docker(), mirror=mirror, from_registry=from_registry, force=force,
                                   log=lambda m: console.print(f"[dim]{m}[/]"))
    except ForagerError as err:
        _fail(str(err))
    console.print(f"base image: [bold]{tag}[/] (also forager/base:latest)")


@images_app.command("sample")
def images_sample(from_registry: bool = typer.Option(False, help="Base it on python:3.11-slim from a registry.")) -> None:
    """Build the sample repository's image (and the base image first, if needed)."""
    from forager.images.sample import build_sample_image

    try:
        tag = build_sample_image(_docker(), from_registry=from_registry, log=lambda m: console.print(f"[dim]{m}[/]"))
    except ForagerError as err:
        _fail(str(err))
    console.print(f"sample image: [bold]{tag}[/] (also forager/sample:latest)")


@images_app.command("build")
def images_build(
    sources: list[str] = typer.Argument(..., help="NAME==VERSION (PyPI sdist), a git URL[@COMMIT], or a directory."),
    recipe: Optional[str] = typer.Option(None, help="Recipe file or name in images/recipes (default: NAME.yaml)."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Builds at a time."),
    base: str = typer.Option("forager/base:latest", help="Base image (built by `forager images bootstrap`)."),
    min_pass_share: float = typer.Option(0.8, help="Share of the tests that ran that must pass."),
    test_timeout: float = typer.Option(900.0, help="Seconds the whole suite may take when verifying."),
    online: bool = typer.Option(False, help="Install from the package index inside the image, not the wheelhouse."),
    force: bool = typer.Option(False, help="Rebuild and verify again even when the tags exist."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per source."),
) -> None:
    """Build executable images of Python projects: fetch, detect, wheelhouse, env and repo layers, verify."""
    from forager.images.build import BuildOptions, build_images
    from forager.images.progress import BuildProgress

    options = BuildOptions(recipe=recipe, base=base, online=online, min_pass_share=min_pass_share,
                           test_timeout=test_timeout, force=force)
    _docker().close()
    with BuildProgress(sources, console=console) as progress:
        results = build_images(sources, options, jobs=jobs, on_stage=progress.update)
    for r in results:
        e = r.entry
        if as_json:
            print(json.dumps({"source": r.source, "tag": r.tag, "ok": r.ok, "cached": r.cached,
                              "build_s": round(r.build_s, 2), "log": r.log,
                              "error": {"stage": r.error.stage, "reason": r.error.reason} if r.error else None,
                              "collected": e.collected if e else 0, "passed": e.passed if e else 0}))
        elif r.error:
            console.print(f"[red]failed[/] {r.source} at [bold]{r.error.stage}[/]: {r.error.reason}\n  log: {r.log}")
        else:
            console.print(f"[green]ok[/] {r.source} -> [bold]{r.tag}[/] ({e.passed}/{e.collected} tests pass"
                          f"{', cached' if r.cached else ''}, {r.build_s:.1f}s)" if e else f"built {r.tag}")
    if any(r.error for r in results):
        raise typer.Exit(1)


@images_app.command("list")
def images_list(as_json: bool = typer.Option(False, "--json", help="Print the manifest entries as JSON lines.")) -> None:
    """The images in the manifest: source, commit, tests collected and passing, size, build time."""
    from rich.table import Table

    from forager.images.manifest import Manifest

    entries = Manifest().entries()
    if as_json:
        for e in entries:
            print(e.model_dump_json(exclude={"tests", "baseline"}))
        return
    table = Table("tag", "source", "tests", "passing", "ok", "size", "build")
    table.columns[0].no_wrap = True
    for e in entries:
        table.add_row(e.tag, e.source, str(e.collected), f"{e.passed} ({e.pass_share:.0%})",
                      "[green]yes[/]" if e.executable else "[red]no[/]", f"{e.image_size / 1e6:.0f} MB",
                      f"{e.build_s:.0f}s")
    console.print(table)
    for e in entries:
        if e.failure:
            console.print(f"[red]{e.tag}[/]: {e.failure} (log: {e.log})")


@images_app.command("verify")
def images_verify(
    tag: str = typer.Argument(..., help="An image tag (forager/repo-NAME:HASH)."),
    min_pass_share: Optional[float] = typer.Option(None, help="Share that must pass (default: the entry's)."),
    test_timeout: float = typer.Option(900.0, help="Seconds the whole suite may take."),
) -> None:
    """Collect and run an image's tests again, and update its manifest entry."""
    from forager.images.build import verify_tag

    try:
        entry = verify_tag(tag, min_pass_share, test_timeout, log=lambda m: console.print(f"[dim]{m}[/]"))
    except ForagerError as err:
        _fail(str(err))
    verdict = "[green]executable[/]" if entry.executable else f"[red]not executable[/] ({entry.failure})"
    console.print(f"{tag}: {verdict}; {entry.passed} passed, {entry.failed} failed, {entry.skipped} skipped of "
                  f"{entry.collected} collected in {entry.suite_duration_s:.1f}s")
    if not entry.executable:
        raise typer.Exit(1)


@images_app.command("prune")
def images_prune(
    all_: bool = typer.Option(False, "--all", help="Remove every env and repo image and empty the manifest."),
    dry_run: bool = typer.Option(False, help="Only say what would go."),
) -> None:
    """Remove Forager's env and repo images that no manifest entry uses, and Forager's dangling layers."""
    from forager.images.prune import prune_images

    report = prune_images(everything=all_, dry_run=dry_run, client=_docker())
    for tag in report.removed:
        console.print(f"{'would remove' if dry_run else 'removed'} {tag}")
    console.print(f"{len(report.removed)} image tag(s) {'to remove' if dry_run else 'removed'}, {report.dangling} "
                  f"dangling layer(s), {report.reclaimed_bytes / 1e6:.0f} MB reclaimed; {len(report.kept)} kept; "
                  f"{len(report.stale_entries)} manifest entr{'y' if len(report.stale_entries) == 1 else 'ies'} "
                  "without an image")


@tasks_app.command("sample")
def tasks_sample(out: Path = typer.Option(Path("sample-tasks.jsonl"), help="Where to write the tasks.")) -> None:
    """Write the sample repository's planted-bug tasks as JSONL."""
    from forager.images.sample import sample_tasks

    tasks = sample_tasks()
    out.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    console.print(f"wrote {len(tasks)} tasks to {out}")


def _progress() -> "Progress":
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[detail]}"), console=console)


def _load(path: str, split: str = "test", fmt: str = "auto", image: Optional[str] = None):
    from forager.tasks.store import load_tasks

    try:
        return load_tasks(path, split=split, format=fmt, image=image)  # type: ignore[arg-type]
    except (ForagerError, ValueError, FileNotFoundError) as err:
        _fail(str(err))


@tasks_app.command("mutate")
def tasks_mutate(
    image: str = typer.Option(..., help="Image holding the repository (a git work tree) at --workdir."),
    out: Path = typer.Option(..., help="JSONL file to write the tasks to."),
    max_tasks: int = typer.Option(50, "--max", help="Stop after this many valid tasks."),
    workdir: str = typer.Option("/repo", help="Where the repository lives in the image."),
    repo: Optional[str] = typer.Option(None, help="Repository name for the tasks (default: from the image name)."),
    operators: Optional[str] = typer.Option(None, help="Comma-separated operators (default: all)."),
    seed: int = typer.Option(0, help="Seed for the order candidates are tried in."),
    workers: int = typer.Option(1, help="Containers validating in parallel."),
    max_per_function: int = typer.Option(2, help="At most this many tasks per function."),
    extra_pass_to_pass: int = typer.Option(0, help="Also keep this many non-covering passing tests as PASS_TO_PASS."),
    drop_import_errors: bool = typer.Option(False, help="Drop bugs that stop the package from importing."),
    test_command: str = typer.Option(None, help="pytest command (default: Forager's `python -m pytest -rA ...`)."),
    test_timeout: float = typer.Option(120.0, help="Seconds per validation run."),
) -> None:
    """Generate validated mutate-fix tasks from an image: coverage, AST bugs, covering-test validation."""
    import functools

    from forager.core import DEFAULT_TEST_COMMAND
    from forager.runtime.docker import DockerRuntime
    from forager.tasks.mutate import OPERATORS
    from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
    from forager.tasks.store import write_tasks

    chosen = tuple(o.strip() for o in operators.split(",")) if operators else OPERATORS
    config = MutateConfig(max_tasks=max_tasks, operators=chosen, seed=seed, workers=workers,
                          max_per_function=max_per_function, extra_pass_to_pass=extra_pass_to_pass,
                          drop_import_errors=drop_import_errors, test_timeout=test_timeout)
    client = _docker()
    try:
        client.images.get(image)
    except Exception:  # noqa: BLE001
        _fail(f"no image {image!r} in the Docker engine; build it first (`forager images sample` for the sample)")
    name = repo or image.split(":")[0].split("/")[-1]
    with _progress() as progress:
        bar = progress.add_task("coverage run", total=max_tasks, detail="")

        def on_event(kind: str, report) -> None:
            tried = sum(s.tried for s in report.stats.values())
            progress.update(bar, description="validating", completed=len(report.tasks),
                            detail=f"{tried}/{report.candidates} candidates tried")

        try:
            result = generate_mutate_fix_tasks(
                functools.partial(DockerRuntime, image, workdir, client=client), image=image, repo=name, config=config,
                test_command=test_command or DEFAULT_TEST_COMMAND, on_event=on_event,
            )
        except ForagerError as err:
            _fail(str(err))
    write_tasks(result.tasks, out)
    _operator_table(result)
    console.print(f"wrote [bold]{len(result.tasks)}[/] tasks to {out} ({result.tests_passing}/{result.tests_total} "
                  f"tests pass at baseline; {result.target_functions} target functions; coverage "
                  f"{result.coverage_s:.1f}s, validation {result.validation_s:.1f}s)")
    for error in result.errors:
        console.print(f"[yellow]a worker failed:[/] {error}")


def _operator_table(result) -> None:
    from rich.table import Table

    table = Table("operator", "tried", "valid", "yield", "no F2P", "imp. err", "timeout")
    for op, s in sorted(result.stats.items()):
        table.add_row(op, str(s.tried), str(s.valid), f"{s.yield_:.0%}", str(s.no_failing_test),
                      str(s.import_error), str(s.timed_out))
    console.print(table)


@tasks_app.command("validate")
def tasks_validate(
    tasks: str = typer.Option(..., help="Task file (JSONL/JSON/Parquet) or dataset."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    instance_id: Optional[list[str]] = typer.Option(None, help="Only these tasks (repeatable)."),
    workers: int = typer.Option(2, help="Tasks graded in parallel."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per task."),
) -> None:
    """Check that each task's reference fix resolves it and the empty patch does not."""
    import functools

    from forager.envs.swe import open_runtime
    from forager.tasks.validate import check_tasks

    chosen = [t for t in _load(tasks) if not instance_id or t.instance_id in instance_id]
    if not chosen:
        _fail("no task matches")
    with _progress() as progress:
        bar = progress.add_task("validating", total=len(chosen), detail="")
        bad = []

        def done(check) -> None:
            if not check.ok:
                bad.append(check.task.instance_id)
            progress.update(bar, advance=1, detail=f"{len(bad)} bad")

        checks = check_tasks(chosen, functools.partial(open_runtime, kind=runtime.value), workers=workers, on_done=done)
    for check in checks:
        if as_json:
            print(json.dumps({"instance_id": check.task.instance_id, "ok": check.ok, "problem": check.problem,
                              "gold_resolved": bool(check.gold and check.gold.resolved),
                              "empty_resolved": bool(check.empty and check.empty.resolved)}))
        elif not check.ok:
            console.print(f"[red]bad[/] {check.task.instance_id}: {check.problem}")
    good = sum(c.ok for c in checks)
    console.print(f"{good}/{len(checks)} tasks valid" + ("" if good == len(checks) else f"; {len(checks) - good} bad"))
    if good != len(checks):
        raise typer.Exit(1)


@tasks_app.command("mine")
def tasks_mine(
    repo: Path = typer.Argument(..., help="A local git repository whose history to mine."),
    out: Path = typer.Option(..., help="JSONL file to write the tasks to."),
    issues: Optional[Path] = typer.Option(None, help="Issue texts by commit: a JSON object {sha: text} or JSONL."),
    max_tasks: Optional[int] = typer.Option(None, "--max", help="Stop after this many tasks."),
    max_commits: Optional[int] = typer.Option(None, help="Look at this many commits, newest first."),
    image: Optional[str] = typer.Option(None, help="Image the tasks run in (default: the local repository)."),
    test_timeout: float = typer.Option(300.0, help="Seconds per test run."),
) -> None:
    """Mine issue-fix tasks from commits that change both tests and code."""
    from collections import Counter

    from forager.tasks.issue_fix import MineConfig, load_issue_texts, mine_repository
    from forager.tasks.store import write_tasks

    if not (repo / ".git").exists():
        _fail(f"{repo} is not a git repository")
    config = MineConfig(max_tasks=max_tasks, max_commits=max_commits, image=image, test_timeout=test_timeout,
                        issues=load_issue_texts(issues) if issues else None)
    outcomes: Counter[str] = Counter()
    with _progress() as progress:
        bar = progress.add_task("commits", total=max_commits, detail="")

        def on_event(sha: str, outcome: str) -> None:
            outcomes[outcome] += 1
            progress.update(bar, advance=1, detail=f"{outcomes['task']} tasks")

        try:
            report = mine_repository(repo, config, on_event=on_event)
        except ForagerError as err:
            _fail(str(err))
    write_tasks(report.tasks, out)
    rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(report.rejected.items()))
    console.print(f"wrote {len(report.tasks)} tasks to {out} from {report.commits_seen} commits"
                  + (f" (rejected: {rejected})" if rejected else ""))


@tasks_app.command("import")
def tasks_import(
    source: str = typer.Argument(..., help="A swebench/SWE-smith JSON, JSONL or Parquet file, a dataset directory, "
                                           "or a Hugging Face dataset name (princeton-nlp/SWE-bench_Verified)."),
    out: Path = typer.Option(..., help="Forager JSONL file to write."),
    split: str = typer.Option("test", help="Dataset split."),
    fmt: str = typer.Option("auto", "--format", help="auto, forager, swebench or swe-smith."),
    image: Optional[str] = typer.Option(None, help="Use this image for every task."),
) -> None:
    """Import task instances as they are into Forager's JSONL format."""
    from collections import Counter

    from forager.tasks.store import write_tasks

    loaded = _load(source, split, fmt, image)
    write_tasks(loaded, out)
    kinds = Counter(t.kind for t in loaded)
    console.print(f"wrote {len(loaded)} tasks to {out} ({', '.join(f'{n} {k}' for k, n in kinds.items())})")


@app.command()
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

    from forager.envs.swe import open_runtime
    from forager.rewards import RewardConfig, grade_patch

    task = next((t for t in _load(tasks) if t.instance_id == instance_id), None)
    if task is None:
        _fail(f"no task {instance_id!r} in {tasks}")
    diff = sys.stdin.read() if patch == "-" else Path(patch).read_text() if Path(patch).is_file() else None
    if diff is None:
        _fail(f"no patch file {patch!r} (use - to read the diff from stdin)")
    result = grade_patch(task, diff, functools.partial(open_runtime, kind=runtime.value),
                         RewardConfig(unresolved=reward_unresolved, partial_credit=partial_credit))
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    colour = "green" if result.resolved else "red"
    console.print(f"[bold {colour}]{result.report}[/] reward={result.reward:g} resolved={result.resolved} "
                  f"({result.duration_s:.1f}s)")
    for test, status in result.tests_status.items():
        console.print(f"  {status:8s} {test}")
    if result.excluded_files:
        console.print(f"[yellow]left out of the patch (protected):[/] {', '.join(result.excluded_files)}")
    if result.error:
        console.print(f"[red]{result.error}[/]")


@app.command()
def gc(all_: bool = typer.Option(False, "--all", help="Remove every Forager container and scratch directory.")) -> None:
    """Remove containers and scratch directories whose owning Forager process is gone."""
    from forager.runtime.gc import collect_garbage

    report = collect_garbage(everything=all_)
    if report.docker_error:
        console.print(f"[yellow]docker:[/] {report.docker_error}")
    console.print(f"removed {len(report.containers)} container(s) and {len(report.directories)} scratch "
                  f"director{'y' if len(report.directories) == 1 else 'ies'}; {report.kept} still owned by live processes")


def _sample_tasks(runtime: str) -> tuple[list, str]:
    """The sample repository's mutate-fix tasks and the runtime to use (building the images if needed)."""
    from forager.images.sample import build_sample_image, sample_tasks
    from forager.runtime.docker import docker_available

    image = None
    if runtime in ("auto", "docker"):
        if docker_available():
            with console.status("building the base and sample images (first run only)"):
                try:
                    image = build_sample_image(_docker(), log=lambda m: console.print(f"[dim]{m}[/]"))
                except ForagerError as err:
                    if runtime == "docker":
                        _fail(str(err))
                    console.print(f"[yellow]could not build the sample image ({err}); using the local runtime[/]")
            runtime = "docker" if image else "local"
        elif runtime == "docker":
            _fail("no Docker engine answers; start Docker or use --runtime local")
        else:
            console.print("[yellow]no Docker engine answers: using the local runtime (no isolation)[/]")
            runtime = "local"
    return sample_tasks(image), runtime


def _policy_spec(policy: Optional[str], model: Optional[str], base_url: Optional[str], api_key: Optional[str],
                 temperature: Optional[float], replay: Optional[Path], options: list[str]):
    """Which policy to run: as asked, or an OpenAI-compatible server when one is configured, else the reference."""
    import os

    from forager.agent.collect import PolicySpec

    configured = base_url or os.environ.get("FORAGER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if policy is None:
        policy = "replay" if replay else ("openai" if configured or model else "reference")
        if policy == "reference":
            console.print("[cyan]no model configured (--base-url/--model or FORAGER_BASE_URL): using the reference "
                          "policy, which replays each task's known fix through the tools[/]")
    values: dict = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep:
            _fail(f"--policy-option takes KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    if policy == "openai":
        values.update({k: v for k, v in {"model": model, "base_url": base_url, "api_key": api_key,
                                          "temperature": temperature}.items() if v is not None})
    elif policy == "hf":
        if model is None and "model" not in values:
            _fail("the hf policy needs --model (a local path or a hub name)")
        values.update({k: v for k, v in {"model": model, "temperature": temperature}.items() if v is not None})
    elif policy == "replay":
        if replay is None and "trajectories" not in values:
            _fail("the replay policy needs --replay FILE_OR_DIR (recorded trajectories)")
        if replay is not None:
            values["trajectories"] = str(replay)
    return PolicySpec(name=policy, options=values)


def _run_collection(tasks: list, out: Path, policy_spec, agent, config, tasks_source: str, allow_mixed: bool):
    """Collect with a live progress display; the first Ctrl-C finishes the running episodes, the second aborts."""
    import signal
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from forager.agent.collect import collect

    stop = threading.Event()
    progress = Progress(TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=console)
    bar = progress.add_task("episodes", total=1, detail="")

    def on_start(stats) -> None:
        progress.update(bar, total=max(stats.total - stats.already_done, 0))
        if stats.already_done:
            console.print(f"resuming: {stats.already_done} of {stats.total} episodes are already in {out}")

    def on_episode(trajectory, stats) -> None:
        progress.update(bar, advance=1, detail=(
            f"resolved {stats.resolved_share:.0%} · {stats.mean_turns:.1f} turns · {stats.tokens_per_s:.0f} tok/s"
            f" · last: {trajectory.task_id} {trajectory.termination}"))

    def interrupt(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping: finishing the running episodes (Ctrl-C again to abort them)[/]")

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with progress:
            stats = collect(tasks, out, policy=policy_spec, agent=agent, config=config, tasks_source=tasks_source,
                            allow_mixed=allow_mixed, on_start=on_start, on_episode=on_episode, stop=stop)
    except KeyboardInterrupt:
        console.print(f"[yellow]aborted; finished trajectories are in {out} and the same command resumes[/]")
        raise typer.Exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
    _collection_summary(stats, out)
    return stats


def _collection_summary(stats, out: Path) -> None:
    from rich.table import Table

    table = Table(title="collection", show_header=False)
    for key, value in [
        ("episodes run", f"{stats.done} (+{stats.already_done} from before) of {stats.total}"),
        ("resolved", f"{stats.resolved} ({stats.resolved_share:.0%})"),
        ("terminations", ", ".join(f"{k} {v}" for k, v in stats.terminations.most_common()) or "-"),
        ("mean turns", f"{stats.mean_turns:.1f}"),
        ("tokens sampled", f"{stats.completion_tokens} ({stats.tokens_per_s:.0f}/s)"),
        ("wall time", f"{stats.elapsed:.1f} s"),
    ]:
        table.add_row(key, value)
    console.print(table)
    for error in stats.errors[:5]:
        console.print(f"[red]{error}[/]")
    console.print(f"trajectories: [bold]{out / 'trajectories.jsonl'}[/]\n"
                  f"browse them:  forager view {out}\n"
                  f"SFT dataset:  forager export {out} --out {out / 'sft'}")


@app.command()
def collect(
    tasks: Optional[str] = typer.Option(None, help="Tasks: JSONL/JSON/Parquet, a dataset dir or hub name (default: the sample repository's mutate-fix tasks)."),
    out: Path = typer.Option(Path("trajectories"), help="Directory for trajectories.jsonl (the same command resumes)."),
    policy: Optional[str] = typer.Option(None, help="reference, replay, openai, hf or module:Class (default: openai when a server is configured, else reference)."),
    model: Optional[str] = typer.Option(None, help="Model name (openai) or path/hub name (hf); or FORAGER_MODEL."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1; or FORAGER_BASE_URL."),
    api_key: Optional[str] = typer.Option(None, help="API key; or FORAGER_API_KEY / OPENAI_API_KEY."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    replay: Optional[Path] = typer.Option(None, help="Trajectories to replay (the replay policy)."),
    policy_option: list[str] = typer.Option([], "--policy-option", help="KEY=VALUE passed to the policy (JSON values allowed); repeatable."),
    samples_per_task: int = typer.Option(1, "--samples-per-task", "-k", min=1, help="Episodes per task."),
    workers: int = typer.Option(4, "--workers", "-j", min=1, help="Episodes at once (one container each)."),
    warm_pool: Optional[int] = typer.Option(None, min=0, help="Containers started ahead per image for resets and grading (default: min(workers, 4); 0: none)."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    ray_address: Optional[str] = typer.Option(None, help="Run the episodes on Ray: auto, ray://HOST:PORT, or local."),
    config: Optional[Path] = typer.Option(None, help="YAML agent config (prompts, tool format, budgets), optionally under `agent:`."),
    max_turns: Optional[int] = typer.Option(None, help="Turn budget per episode (default 64)."),
    max_context: Optional[int] = typer.Option(None, help="Token budget of the whole context (default 32768)."),
    tool_format: Optional[str] = typer.Option(None, help="cwm (tags in the text, default) or openai (function calling)."),
    reward_unresolved: float = typer.Option(0.0, help="Reward when not resolved (CWM used -1)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N tasks."),
    split: str = typer.Option("test", help="Dataset split."),
    fmt: str = typer.Option("auto", "--format", help="auto, forager, swebench or swe-smith."),
    allow_mixed: bool = typer.Option(False, help="Allow a different policy/config in an existing --out."),
) -> None:
    """Run the ForagerAgent on tasks and save one trajectory per (task, sample), resumably."""
    from forager.agent.collect import CollectConfig
    from forager.agent.config import load_agent_config

    if tasks is None:
        task_list, kind = _sample_tasks(runtime.value)
        source = "sample (embedded)"
    else:
        task_list, kind, source = _load(tasks, split, fmt), runtime.value, tasks
    task_list = task_list[:limit] if limit else task_list
    if not task_list:
        _fail(f"no tasks in {source}")
    spec = _policy_spec(policy, model, base_url, api_key, temperature, replay, policy_option)
    try:
        agent = load_agent_config(config, max_turns=max_turns, max_context_tokens=max_context, tool_format=tool_format)
        run_config = CollectConfig(samples_per_task=samples_per_task, workers=workers, runtime=kind,
                                   ray_address=ray_address, reward={"unresolved": reward_unresolved},
                                   warm_pool=min(workers, 4) if warm_pool is None else warm_pool)
        console.print(f"collecting {len(task_list)} task(s) x {samples_per_task} sample(s) with the {spec.name} "
                      f"policy, {workers} worker(s), {kind} runtime -> {out}")
        _run_collection(task_list, out, spec, agent, run_config, source, allow_mixed)
    except ForagerError as err:
        _fail(str(err))


@app.command()
def quickstart(
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto (Docker when it answers)."),
    out: Path = typer.Option(Path("forager-quickstart"), help="Where the trajectories go."),
    samples_per_task: int = typer.Option(2, "--samples-per-task", "-k", min=1),
    workers: int = typer.Option(2, "--workers", "-j", min=1),
) -> None:
    """Collect trajectories on the sample repository's mutate-fix tasks with the embedded defaults, and show them."""
    from forager.agent.collect import CollectConfig
    from forager.agent.config import AgentConfig

    task_list, kind = _sample_tasks(runtime.value)
    spec = _policy_spec(None, None, None, None, None, None, [])
    console.print(f"collecting {len(task_list)} sample task(s) x {samples_per_task} with the {spec.name} policy "
                  f"on the {kind} runtime -> {out}")
    try:
        _run_collection(task_list, out, spec, AgentConfig(), CollectConfig(
            samples_per_task=samples_per_task, workers=workers, runtime=kind, warm_pool=min(workers, 4)),
            "sample (embedded)", allow_mixed=False)
    except ForagerError as err:
        _fail(str(err))
    first = next(iter(_read_first(out)), None)
    if first is not None:
        console.print(Panel("\n\n".join(f"[bold]{m.role}[/]: {m.content[:400]}" for m in first.messages[1:5]),
                            title=f"the start of {first.trajectory_id} (reward {first.reward:g}, {first.termination})"))
    try:
        from forager.trajectories.view import write_view

        page = write_view([out], out / "index.html")
        console.print(f"view them: [bold]file://{Path(page).resolve()}[/] (`forager view {out}` makes it again)")
    except ImportError:
        pass


def _read_first(out: Path):
    from forager.trajectories.store import read_trajectories

    return read_trajectories([out], strict=False)


@app.command()
def dedup(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(..., help="Where to write the kept trajectories (JSONL; not inside an input directory)."),
    threshold: float = typer.Option(0.5, help="Drop a trajectory whose estimated Jaccard similarity with a kept one of its repository is at least this."),
    num_perm: int = typer.Option(128, help="MinHash permutations."),
    seed: int = typer.Option(0, help="Seed of the MinHash permutations."),
) -> None:
    """Near-deduplicate trajectories per repository by MinHash over their actions (CWM: kept pairs below 0.5)."""
    from rich.table import Table

    from forager.trajectories.dedup import dedup_files

    if not 0.0 < threshold <= 1.0:
        _fail(f"--threshold must be in (0, 1], not {threshold}")
    if num_perm < 1:
        _fail(f"--num-perm must be at least 1, not {num_perm}")
    try:
        result = dedup_files(inputs, out, threshold=threshold, num_perm=num_perm, seed=seed)
    except ForagerError as err:
        _fail(str(err))
    table = Table("repository", "kept", "dropped")
    for repo, count in result.repos.items():
        table.add_row(repo or "(none)", str(count.kept), str(count.dropped))
    console.print(table)
    total_dropped = len(result.dropped)
    console.print(f"kept {len(result.kept_ids)} of {len(result.kept_ids) + total_dropped} trajectories "
                  f"({total_dropped} near-duplicates dropped) -> {out}")
    if out.suffix == ".jsonl" and any(p.is_dir() and p.resolve() == out.resolve().parent for p in inputs):
        console.print(f"[yellow]note:[/] {out} is inside an input directory: reading that directory again "
                      "reads both the original and the deduplicated trajectories")


@app.command("export")
def export_command(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(..., help="Output prefix: writes PREFIX.jsonl and/or PREFIX.parquet."),
    format: str = typer.Option("both", "--format", help="jsonl, parquet or both."),  # noqa: A002
    mask_observations: float = typer.Option(
        1.0, help="Share of observations (tool outputs) masked from the loss: 1.0 masks them all (plain SFT); "
                  "CWM's mid-training masked 0.5 and trained on the rest."),
    resolved_only: bool = typer.Option(False, help="Only resolved trajectories."),
    min_reward: Optional[float] = typer.Option(None, help="Only trajectories with at least this reward."),
    terminations: Optional[str] = typer.Option(None, help="Only these endings, comma-separated (e.g. submitted,out_of_turns)."),
    tokens: bool = typer.Option(False, help="Also write input_ids and assistant_masks (needs token ids in every trajectory)."),
    seed: int = typer.Option(0, help="Seed of the observation masking."),
) -> None:
    """Write an SFT dataset (chat messages with a per-message loss weight) from trajectories."""
    from forager.trajectories.export import ExportFilter, export_dataset

    formats = {"both": ["jsonl", "parquet"], "jsonl": ["jsonl"], "parquet": ["parquet"]}.get(format)
    if formats is None:
        _fail(f"--format must be jsonl, parquet or both, not {format!r}")
    if not 0.0 <= mask_observations <= 1.0:
        _fail(f"--mask-observations is a share in [0, 1], not {mask_observations}")
    try:
        wanted = frozenset(t.strip() for t in terminations.split(",") if t.strip()) if terminations else None
        result = export_dataset(inputs, out, formats=formats, mask_observations=mask_observations, seed=seed,
                                filter=ExportFilter(resolved_only, min_reward, wanted), tokens=tokens)
    except ForagerError as err:
        _fail(str(err))
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
    console.print(f"exported {result.rows} trajectories" + (f" (left out: {skipped})" if skipped else ""))
    observed = result.observations_trained + result.observations_masked
    if observed:
        console.print(f"observations: {result.observations_masked} masked, {result.observations_trained} trained")
    for path in result.paths:
        console.print(f"wrote {path}")


@app.command()
def view(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(Path("trajectories.html"), help="The HTML file to write."),
    title: Optional[str] = typer.Option(None, help="Page title (default: the inputs)."),
) -> None:
    """Write one self-contained HTML page to browse trajectories (no network needed to open it)."""
    from forager.trajectories.view import write_view

    try:
        path = write_view(inputs, out, title=title)
    except ForagerError as err:
        _fail(str(err))
    console.print(f"wrote {path}")
    console.print(path.resolve().as_uri())


def main() -> None:
    try:
        app()
    except ForagerError as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
