"""`forager collect` and `forager quickstart`: run the agent on tasks, with live progress and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.panel import Panel

from forager.cli import options as opts
from forager.cli import RuntimeChoice, console, dim, fail, read_tasks
from forager.registration import SWE_ENV_ID

if TYPE_CHECKING:
    from forager.agent.collect import CollectStats
    from forager.agent.config import AgentConfig, CollectConfig
    from forager.core import Task, Trajectory
    from forager.policies.spec import PolicySpec


def _sample_tasks(runtime: str) -> tuple[list[Task], str]:
    """The sample repository's mutate-fix tasks and the runtime to use (building the images if needed)."""
    from forager.images.sample import sample_tasks_for_runtime

    return sample_tasks_for_runtime(runtime, log=dim, warn=lambda m: console.print(f"[yellow]{m}[/]"),
                                    busy=console.status)


def _policy_spec(policy: str | None = None, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, temperature: float | None = None, replay: Path | None = None,
                 options: list[str] | None = None) -> PolicySpec:
    """The policy the flags and the environment ask for, saying so when it falls back to the reference."""
    from forager.policies.spec import policy_spec_from_flags

    return policy_spec_from_flags(policy, model, base_url, api_key, temperature, replay, options or [],
                                  log=lambda m: console.print(f"[cyan]{m}[/]"))


def agent_settings(config: Path | None, prompts: str | None, spec: PolicySpec | None = None,
                   **overrides: Any) -> AgentConfig:
    """The agent config: the defaults, then the policy's serving recipe where nothing below sets a field,
    then `--config`, then the prompt set of `--prompts` (a name or a YAML file), then the flags."""
    from forager.agent.config import AgentConfig, load_agent_config
    from forager.envs.prompts import PROMPT_SET_KEYS, load_prompt_set
    from forager.policies.recipes import recipe_of

    agent = load_agent_config(config, **(load_prompt_set(prompts) if prompts else {}), **overrides)
    recipe = recipe_of(spec.name) if spec is not None else None
    if recipe is None:
        return agent
    chosen = agent.model_dump(include=agent.model_fields_set)
    taken = {key: value for key, value in recipe.agent.items() if key not in chosen}
    if recipe.prompts and not chosen.keys() & set(PROMPT_SET_KEYS):
        taken.update(load_prompt_set(recipe.prompts))
    budgets = ", ".join(f"{k}={v}" for k, v in taken.items() if k not in PROMPT_SET_KEYS)
    prompt_set = f"the prompt set {recipe.prompts}" if taken.keys() & set(PROMPT_SET_KEYS) else ""
    if taken:
        dim(f"the {recipe.name} recipe sets {' and '.join(filter(None, [budgets, prompt_set]))} "
            "(flags, --config and --prompts win)")
    return AgentConfig(**{**taken, **chosen})


def run_collection(tasks: list[Task] | list[str], out: Path, policy_spec: PolicySpec, agent: AgentConfig, config: CollectConfig,
                   tasks_source: str, allow_mixed: bool) -> CollectStats:
    """Collect with a live progress display; the first Ctrl-C finishes the running episodes, the second aborts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from forager.agent.collect import collect as collect_episodes

    progress = Progress(TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=console)
    bar = progress.add_task("episodes", total=1, detail="")

    def on_start(stats: CollectStats) -> None:
        progress.update(bar, total=max(stats.total - stats.already_done, 0))
        if stats.already_done:
            console.print(f"resuming: {stats.already_done} of {stats.total} episodes are already in {out}")

    def on_episode(trajectory: Trajectory, stats: CollectStats) -> None:
        progress.update(bar, advance=1, detail=(
            f"resolved {stats.resolved_share:.0%} · {stats.mean_turns:.1f} turns · {stats.tokens_per_s:.0f} tok/s"
            f" · last: {trajectory.task_id} {trajectory.termination}"))

    def on_stopping() -> None:
        console.print("[yellow]stopping: finishing the running episodes (Ctrl-C again to abort them)[/]")

    try:
        with progress:
            stats = collect_episodes(tasks, out, policy=policy_spec, agent=agent, config=config,
                                     tasks_source=tasks_source, allow_mixed=allow_mixed, on_start=on_start,
                                     on_episode=on_episode, handle_sigint=True, on_stopping=on_stopping)
    except KeyboardInterrupt:
        console.print(f"[yellow]aborted; finished trajectories are in {out} and the same command resumes[/]")
        raise typer.Exit(130) from None
    _collection_summary(stats, out)
    if stats.infra_failures and not stats.done:
        console.print(f"[red]nothing succeeded: all {stats.infra_failures} episode(s) failed on the infrastructure "
                      "(Docker or the policy's server); fix it and run the same command again[/]")
        raise typer.Exit(1)
    return stats


def _collection_summary(stats: CollectStats, out: Path) -> None:
    from rich.table import Table

    from forager.trajectories.store import INFRA_FAILURES

    table = Table(title="collection", show_header=False)
    for key, value in [
        ("episodes run", f"{stats.done} (+{stats.already_done} from before) of {stats.total}"),
        ("resolved", f"{stats.resolved} of the {stats.done} run now ({stats.resolved_share:.0%})"
                     + (f"; the {stats.already_done} from before are counted in `forager view`" if stats.already_done
                        else "")),
        ("terminations", ", ".join(f"{k} {v}" for k, v in stats.terminations.most_common()) or "-"),
        ("infrastructure failures", f"{stats.infra_failures} (saved in {out / INFRA_FAILURES}; "
                                    "the same command retries them)" if stats.infra_failures else "0"),
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


def collect(
    tasks: str | None = typer.Option(None, help="Tasks: JSONL/JSON/Parquet, a dataset dir or hub name (default: the sample repository's mutate-fix tasks)."),
    env: str | None = opts.ENV,
    episodes: int | None = typer.Option(None, min=1, help="With --env: episodes to run (its first N task ids, or seeds 0..N-1 when it has none)."),
    out: Path = typer.Option(Path("trajectories"), help="Directory for trajectories.jsonl (the same command resumes)."),
    policy: str | None = opts.POLICY,
    model: str | None = opts.MODEL,
    base_url: str | None = opts.BASE_URL,
    api_key: str | None = opts.API_KEY,
    temperature: float | None = opts.TEMPERATURE,
    replay: Path | None = typer.Option(None, help="Trajectories to replay (the replay policy)."),
    policy_option: list[str] = opts.POLICY_OPTION,
    samples_per_task: int = typer.Option(1, "--samples-per-task", "-k", min=1, help="Episodes per task."),
    workers: int = typer.Option(4, "--workers", "-j", min=1, help="Episodes at once (one container each)."),
    warm_pool: int | None = typer.Option(None, min=0, help="Containers started ahead per image for resets and grading (default: min(workers, 4); 0: none)."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    docker_host: list[str] = opts.DOCKER_HOSTS,
    ray_address: str | None = opts.RAY_ADDRESS,
    config: Path | None = opts.CONFIG,
    prompts: str | None = opts.PROMPTS,
    max_turns: int | None = opts.MAX_TURNS,
    max_context: int | None = typer.Option(None, help="Token budget of the whole context (default 32768)."),
    tool_format: str | None = typer.Option(None, help="cwm (tags in the text, default) or openai (function calling)."),
    reward_unresolved: float = typer.Option(0.0, help="Reward when not resolved (CWM used -1)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N tasks."),
    split: str = typer.Option("test", help="Dataset split."),
    fmt: str = typer.Option("auto", "--format", help="auto, forager, swebench or swe-smith."),
    allow_mixed: bool = opts.ALLOW_MIXED,
) -> None:
    """Run the ForagerAgent on tasks and save one trajectory per (task, sample), resumably."""
    from forager.agent.collect import validate_policy
    from forager.agent.config import CollectConfig
    from forager.agent.text_envs import swe_env_class

    # Everything that can be wrong in the command is checked before anything is built or written.
    spec = _policy_spec(policy, model, base_url, api_key, temperature, replay, policy_option)
    validate_policy(spec)
    agent = agent_settings(config, prompts, spec, max_turns=max_turns, max_context_tokens=max_context,
                           tool_format=tool_format)
    if docker_host:
        _check_docker_hosts(docker_host, runtime)
    if env is not None and swe_env_class(env) is None:
        _collect_text_env(env, episodes, out, spec, agent, samples_per_task, workers, allow_mixed, tasks)
        return
    if tasks is None:
        task_list, kind = _sample_tasks(runtime.value)
        source = "sample (embedded)"
    else:
        task_list, kind, source = read_tasks(tasks, split, fmt), runtime.value, tasks
    kind = "docker" if docker_host else kind
    count = min(n for n in (limit, episodes) if n) if limit or episodes else None
    task_list = task_list[:count] if count else task_list
    if not task_list:
        fail(f"no tasks in {source}")
    run_config = CollectConfig(samples_per_task=samples_per_task, workers=workers, runtime=kind,
                               ray_address=ray_address, reward={"unresolved": reward_unresolved},
                               warm_pool=min(workers, 4) if warm_pool is None else warm_pool,
                               env_id=None if env == SWE_ENV_ID else env, docker_hosts=docker_host)
    engines = f" on {len(set(docker_host))} Docker host(s)" if docker_host else ""
    console.print(f"collecting {len(task_list)} task(s){f' of {env}' if env else ''} x {samples_per_task} sample(s) with the {spec.name} "
                  f"policy, {workers} worker(s), {kind} runtime{engines} -> {out}")
    run_collection(task_list, out, spec, agent, run_config, source, allow_mixed)


def _check_docker_hosts(hosts: list[str], runtime: RuntimeChoice) -> None:
    """--docker-host URLs as CollectConfig takes them, checked before anything is built (the ping comes later)."""
    from pydantic import ValidationError

    from forager.agent.config import CollectConfig

    if runtime is RuntimeChoice.local:
        fail("--docker-host runs the env containers on Docker engines; it cannot go with --runtime local")
    try:
        CollectConfig(docker_hosts=hosts)
    except ValidationError as err:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors()))


def _collect_text_env(env_id: str, episodes: int | None, out: Path, spec: Any, agent: Any, samples_per_task: int,
                      workers: int, allow_mixed: bool, tasks: str | None) -> None:
    """`forager collect --env ID`: the plug-in env's own tasks (or seeds), the same store and resuming."""
    from forager.agent.text_envs import text_env_tasks
    from forager.agent.config import CollectConfig

    if tasks is not None:
        fail("--tasks is for forager/SWE-v0; a plug-in environment brings its own (use --episodes N to run fewer)")
    if spec.name == "reference":
        fail(f"the reference policy replays a SWE task's known fix, and {env_id} is a text environment: give it a "
             "model (--base-url and --model, or --policy NAME: `forager policies list`)")
    task_ids = text_env_tasks(env_id, episodes)
    console.print(f"collecting {len(task_ids)} task(s) of {env_id} x {samples_per_task} sample(s) with the {spec.name} "
                  f"policy, {workers} worker(s) -> {out}")
    run_collection(task_ids, out, spec, agent, CollectConfig(samples_per_task=samples_per_task, workers=workers,
                                                             env_id=env_id), env_id, allow_mixed)


def quickstart(
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto (Docker when it answers)."),
    out: Path = typer.Option(Path("forager-quickstart"), help="Where the trajectories go."),
    samples_per_task: int = typer.Option(2, "--samples-per-task", "-k", min=1),
    workers: int = typer.Option(2, "--workers", "-j", min=1),
    prompts: str | None = typer.Option(None, help="A prompt set by name (`forager prompts list`) or a YAML file."),
) -> None:
    """Collect trajectories on the sample repository's mutate-fix tasks with the embedded defaults, and show them."""
    from forager.agent.config import CollectConfig

    agent = agent_settings(None, prompts)
    task_list, kind = _sample_tasks(runtime.value)
    spec = _policy_spec()
    console.print(f"collecting {len(task_list)} sample task(s) x {samples_per_task} with the {spec.name} policy "
                  f"on the {kind} runtime -> {out}")
    run_collection(task_list, out, spec, agent, CollectConfig(
        samples_per_task=samples_per_task, workers=workers, runtime=kind, warm_pool=min(workers, 4)),
        "sample (embedded)", allow_mixed=False)
    _show_first(out)


def _show_first(out: Path) -> None:
    """The start of the first trajectory in a panel, and the HTML page to browse them all."""
    from forager.trajectories.store import read_trajectories

    first: Any = next(iter(read_trajectories([out], strict=False)), None)
    if first is not None:
        console.print(Panel("\n\n".join(f"[bold]{m.role}[/]: {m.content[:400]}" for m in first.messages[1:5]),
                            title=f"the start of {first.trajectory_id} (reward {first.reward:g}, {first.termination})"))
    try:
        from forager.trajectories.view import write_view

        page = write_view([out], out / "index.html")
        console.print(f"view them: [bold]file://{Path(page).resolve()}[/] (`forager view {out}` makes it again)")
    except ImportError:
        pass
