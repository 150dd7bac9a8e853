"""`forager eval run` and `forager eval summary`: a policy K times on an env's tasks, and what it adds up to."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from forager.cli import options as opts
from forager.cli import RuntimeChoice, console, fail, table_console

if TYPE_CHECKING:
    from forager.eval.summary import EvalSummary

eval_app = typer.Typer(help="Evaluate a policy: K samples per task, resolved rate with its standard error, pass@k.",
                       no_args_is_help=True)


@eval_app.command("run")
def run(
    env: str | None = opts.ENV,
    tasks: str | None = typer.Option(None, help="Tasks of a SWE environment: JSONL/JSON/Parquet, a dataset dir or hub name (default: the sample tasks)."),
    episodes: int | None = typer.Option(None, min=1, help="Only the first N tasks (a text env: its first N task ids, or seeds 0..N-1)."),
    samples: int = opts.SAMPLES,
    out: Path = typer.Option(Path("eval"), help="Directory for trajectories.jsonl and summary.json (the same command resumes)."),
    policy: str | None = opts.POLICY,
    model: str | None = opts.MODEL,
    base_url: str | None = opts.BASE_URL,
    api_key: str | None = opts.API_KEY,
    temperature: float | None = opts.TEMPERATURE,
    policy_option: list[str] = opts.POLICY_OPTION,
    workers: int = typer.Option(4, "--workers", "-j", min=1, help="Episodes at once."),
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto."),
    ray_address: str | None = opts.RAY_ADDRESS,
    docker_host: list[str] = opts.DOCKER_HOSTS,
    config: Path | None = opts.CONFIG,
    prompts: str | None = opts.PROMPTS,
    max_turns: int | None = opts.MAX_TURNS,
    allow_mixed: bool = opts.ALLOW_MIXED,
) -> None:
    """Run the policy K times on every task (resumably, as `forager collect`), then write and show the summary."""
    from forager.cli import collect

    collect.collect(tasks=tasks, env=env, episodes=episodes, out=out, policy=policy, model=model, base_url=base_url,
                    api_key=api_key, temperature=temperature, replay=None, policy_option=policy_option,
                    samples_per_task=samples, workers=workers, warm_pool=None, runtime=runtime, ray_address=ray_address,
                    config=config, prompts=prompts, max_turns=max_turns, max_context=None, tool_format=None, reward_unresolved=0.0,
                    limit=None, split="test", fmt="auto", allow_mixed=allow_mixed, docker_host=list(docker_host or []))
    _summarize_and_show([out], out)


@eval_app.command("summary")
def summary_command(
    inputs: list[Path] = typer.Argument(..., help="trajectories.jsonl files or the directories holding them."),
    out: Path | None = typer.Option(None, help="Where summary.json goes (default: the one directory given)."),
) -> None:
    """The summary of trajectories collected before (by `forager eval run`, `forager collect` or anything else)."""
    if out is None and len(inputs) == 1 and inputs[0].is_dir():
        out = inputs[0]
    _summarize_and_show(inputs, out)


def _summarize_and_show(inputs: list[Path], out: Path | None) -> None:
    from forager.eval.summary import summarize, write_summary
    from forager.trajectories.store import read_trajectories

    rows = read_trajectories(inputs)
    if not rows:
        fail(f"no trajectories in {', '.join(map(str, inputs))}")
    run = {"command": ["forager", *sys.argv[1:]]}
    for folder in {p if p.is_dir() else p.parent for p in inputs}:
        if (folder / "collection.json").is_file():
            run["collection"] = json.loads((folder / "collection.json").read_text())
    summary = summarize(rows, run)
    show(summary)
    if out is not None:
        console.print(f"summary: [bold]{write_summary(out, summary)}[/]")


def show(summary: EvalSummary) -> None:
    """The summary as two tables: the rates, then the rest."""
    from rich.table import Table

    rates = Table(title="evaluation", title_justify="left")
    rates.add_column("figure")
    rates.add_column("value", justify="right")
    rates.add_row("tasks x samples", f"{summary.tasks} x {summary.samples_per_task} ({summary.episodes} episodes)")
    rates.add_row("resolved (pass@1, mean of samples)",
                  f"{summary.resolved_rate:.1%} ± {summary.resolved_rate_stderr:.1%}")
    for k, value in summary.pass_at_k.items():
        rates.add_row(f"pass@{k}", f"{value:.1%}")
    for repo, figures in summary.per_repo.items():
        rates.add_row(f"  {repo}", f"{figures['resolved_rate']:.1%} of {int(figures['tasks'])} task(s)")
    if summary.test_time_scaling:
        tts = summary.test_time_scaling
        rates.add_row(f"resolved with test-time scaling ({tts['n']})", f"{tts['resolved_rate']:.1%}")
    rates.add_row("terminations", ", ".join(f"{name} {count}" for name, count in summary.terminations.items()))
    rates.add_row("mean turns", f"{summary.mean_turns:.1f}")
    rates.add_row("tokens (prompt / completion)", f"{summary.prompt_tokens} / {summary.completion_tokens}")
    rates.add_row("episode time, summed", f"{summary.wall_s:.1f} s")
    table_console().print(rates)


from forager.cli import eval_images, eval_swebench  # noqa: E402 - the SWE-bench commands, in modules of their own

eval_app.command("swebench")(eval_swebench.swebench_command)
eval_app.command("grade")(eval_swebench.grade_command)
eval_app.command("images")(eval_images.images_command)
