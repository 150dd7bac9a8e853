"""`forager train` (GRPO on SWE tasks, resumable, with live progress) and `forager train plan` (learner memory).

`forager train --config FILE [--out DIR] [KEY=VALUE ...]`: the overrides are dotted keys of the training
config, as verl and SkyRL users type them (`learner.lr=1e-6 rollout.group_size=8`); options come before
them. The group's default action is the run itself; `plan` is its one subcommand.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from typer.core import TyperGroup

from forager.cli import console

if TYPE_CHECKING:
    from forager.train.config import TrainConfig
    from forager.train.loop import TrainSummary


class _TrainGroup(TyperGroup):
    """`forager train`: a first argument that is not a subcommand (`plan`) is the first override, not a command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        super().parse_args(ctx, args)
        protected = list(getattr(ctx, "_protected_args", []))
        if protected and protected[0] not in self.commands:
            ctx._protected_args, ctx.args = [], [*protected, *ctx.args]  # type: ignore[attr-defined]
        return ctx.args


train_app = typer.Typer(
    cls=_TrainGroup, invoke_without_command=True, subcommand_metavar="[KEY=VALUE]... | plan [OPTIONS]",
    help="Train a policy with asynchronous multi-turn GRPO: `forager train --config FILE [--out DIR] "
         "[KEY=VALUE]...` (options first, then dotted overrides such as learner.lr=1e-6); "
         "`forager train plan --config FILE --gpus N --gpu-memory 80` prints the learner's memory per GPU.")


def _load(config: Path | None, overrides: list[str]) -> TrainConfig:
    from forager.train.config import load_train_config

    return load_train_config(config, overrides)


@train_app.callback(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="Training config YAML (configs/train/*.yaml); default: the built-in defaults."),
    out: Path | None = typer.Option(None, help="Run directory (default: out_dir of the config); the same command resumes from its last checkpoint."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Run the learner's ranks as actors on this Ray cluster (auto, HOST:PORT, ray://HOST:10001, local); sets ray_address. out_dir and model.path must be on a filesystem every node shares."),
) -> None:
    """Run training: config.yaml, metrics.jsonl, trajectories.jsonl, checkpoints/ and TensorBoard events in the run dir."""
    if ctx.invoked_subcommand is not None:
        return
    import warnings

    # transformers warns on every generation of the hf engine about an argument it renames: once is plenty.
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
    resolved = _load(config, list(ctx.args))
    if ray_address:
        resolved = resolved.model_copy(update={"ray_address": ray_address})
    from forager.train import loop, ray_learner

    # with a Ray address the ranks are Ray actors, and this process only places them and reports
    run_training = ray_learner.train_on_ray if resolved.ray_address else loop.train
    run_dir = out or Path(resolved.out_dir)
    if os.environ.get("RANK", "0") != "0":  # one rank of many under torchrun: rank 0 reports for all
        run_training(resolved, run_dir)
        return
    console.print(f"training {resolved.model.path}: {resolved.learner.steps} step(s), groups of "
                  f"{resolved.rollout.group_size}, max staleness {resolved.sync.max_staleness} -> {run_dir}")
    if resolved.ray_address:
        from forager.train.ray_learner import learner_ranks

        console.print(f"learner: {learner_ranks(resolved.learner)} rank(s) on the Ray cluster at {resolved.ray_address}, "
                      f"placed {resolved.learner.placement_strategy}")
    progress = _progress()
    bar = progress.add_task("steps", total=resolved.learner.steps, detail="starting (loading the model)")

    def on_start(summary: TrainSummary) -> None:
        if summary.resumed_from is not None:
            progress.console.print(f"resuming from {summary.resumed_from} (step {summary.start_step}, policy "
                                   f"version {summary.policy_version})")
        progress.update(bar, completed=summary.start_step, detail="sampling the first batch")
        progress.reset(bar, total=summary.total_steps, completed=summary.start_step, detail="sampling")

    def on_step(line: dict[str, Any], summary: TrainSummary) -> None:
        detail = (f"reward {line['reward_mean']:+.2f} · resolved {line['rollout/resolved_share']:.0%} · "
                  f"{summary.samples_per_s:.2f} samples/s · staleness max {line['staleness_max']} · "
                  f"v{summary.policy_version}")
        progress.update(bar, completed=summary.step, detail=detail)
        if not console.is_terminal and summary.step % resolved.logging.interval == 0:  # a log file: plain lines
            eta = f" · eta {summary.eta_s:.0f} s" if summary.eta_s is not None else ""
            console.print(f"step {summary.step}/{summary.total_steps} · {detail}{eta}")

    with progress:
        summary = run_training(resolved, run_dir, on_step=on_step, on_start=on_start)
    _summary_table(summary)
    if summary.interrupted:
        where = summary.last_checkpoint or "the start (no checkpoint yet)"
        console.print(f"[yellow]stopped at step {summary.step}; the same command resumes from {where}[/]")
        raise typer.Exit(130)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("step"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=console)


def _summary_table(summary: TrainSummary) -> None:
    from rich.table import Table

    rewards = summary.rewards
    table = Table(title="training", show_header=False)
    for key, value in [
        ("steps", f"{summary.start_step} -> {summary.step} of {summary.total_steps}"),
        ("policy version", str(summary.policy_version)),
        ("reward mean", f"{_mean(rewards[:3]):+.3f} (first {min(3, len(rewards))} steps) -> {_mean(rewards[-3:]):+.3f} "
                        f"(last {min(3, len(rewards))})" if rewards else "-"),
        ("resolved share (last step)", f"{summary.resolved_share:.0%}"),
        ("samples trained", f"{summary.samples} ({summary.samples_per_s:.2f}/s) from {summary.episodes} episodes"),
        ("dropped stale", str(summary.dropped_stale)),
        ("staleness max", str(summary.staleness_max)),
        ("last checkpoint", str(summary.last_checkpoint or "-")),
        ("wall time", f"{summary.elapsed:.1f} s"),
    ]:
        table.add_row(key, value)
    console.print(table)
    out = summary.out_dir
    console.print(f"metrics:      [bold]{out / 'metrics.jsonl'}[/] (tensorboard --logdir {out / 'tensorboard'})\n"
                  f"curves:       {out / 'curves.svg'}\n"
                  f"trajectories: forager view {out}")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@train_app.command()
def plan(
    config: Path | None = typer.Option(None, "--config", "-c", help="Training config YAML (its model, microbatch and FSDP settings)."),
    gpus: int | None = typer.Option(None, min=1, help="Learner GPUs (default: learner.num_gpus of the config)."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", min=1, help="GiB of memory per GPU."),
    choose: bool = typer.Option(False, "--choose", help="Choose the layout instead: the fewest learner GPUs that fit "
                                "(and their sequence parallelism), and vLLM engines for the episodes in flight."),
    in_flight: int | None = typer.Option(None, "--in-flight", min=1, help="With --choose: episodes sampling at once "
                                         "(default: rollout.concurrency)."),
    episode_tokens: int | None = typer.Option(None, "--episode-tokens", min=1, help="With --choose: KV cache tokens "
                                              "one episode holds (default: env.max_context_tokens, the worst case)."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Dotted config overrides."),
) -> None:
    """Print the learner's memory per GPU under FSDP2, with and without CPU offload, and whether it fits; or, with
    --choose, the GPUs the learner and the samplers need."""
    from forager.train.plan import choose_layout, plan_from_config

    resolved = _load(config, list(overrides or []))
    if choose:
        layout = choose_layout(resolved.model.path, gpu_memory_gib=gpu_memory,  # a PlanError is a ForagerError
                               microbatch_tokens=resolved.learner.microbatch_tokens,
                               episode_tokens=episode_tokens or resolved.env.max_context_tokens,
                               episodes_in_flight=in_flight or resolved.rollout.concurrency,
                               activation_checkpointing=resolved.learner.fsdp.activation_checkpointing)
        console.print(layout.render(gpu_memory), highlight=False)
        return
    learner = resolved.learner
    learner = learner.model_copy(update={"num_gpus": gpus or max(learner.num_gpus, 1)})
    fits = {}
    for offload in (False, True):
        fsdp = learner.fsdp.model_copy(update={"cpu_offload": offload})
        variant = resolved.model_copy(update={"learner": learner.model_copy(update={"fsdp": fsdp})})
        memory = plan_from_config(variant)
        fits[offload] = memory.fits(gpu_memory)
        console.print(f"[bold]{'with' if offload else 'without'} CPU offload[/]")
        console.print(memory.render(gpu_memory), highlight=False)
        console.print()
    if fits[False]:
        verdict = "[green]fits without CPU offload[/]"
    elif fits[True]:
        verdict = "[yellow]fits only with CPU offload (learner.fsdp.cpu_offload=true)[/]"
    else:
        verdict = ("[red]does not fit even with CPU offload: more GPUs, a smaller learner.microbatch_tokens or "
                   "learner.sequence_parallel[/]")
    console.print(f"{learner.num_gpus} x {gpu_memory:g} GiB: {verdict}")
