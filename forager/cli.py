"""`forager ...`: thin commands over the library, with readable errors."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.panel import Panel

from forager.core import ForagerError

app = typer.Typer(help="Forager: a gym for training and evaluating software-engineering agents.", no_args_is_help=True)
images_app = typer.Typer(help="Build executable repository images (no registry needed).", no_args_is_help=True)
tasks_app = typer.Typer(help="Work with task files.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(tasks_app, name="tasks")
console = Console()


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


@tasks_app.command("sample")
def tasks_sample(out: Path = typer.Option(Path("sample-tasks.jsonl"), help="Where to write the tasks.")) -> None:
    """Write the sample repository's planted-bug tasks as JSONL."""
    from forager.images.sample import sample_tasks

    tasks = sample_tasks()
    out.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    console.print(f"wrote {len(tasks)} tasks to {out}")


@app.command()
def gc(all_: bool = typer.Option(False, "--all", help="Remove every Forager container and scratch directory.")) -> None:
    """Remove containers and scratch directories whose owning Forager process is gone."""
    from forager.runtime.gc import collect_garbage

    report = collect_garbage(everything=all_)
    if report.docker_error:
        console.print(f"[yellow]docker:[/] {report.docker_error}")
    console.print(f"removed {len(report.containers)} container(s) and {len(report.directories)} scratch "
                  f"director{'y' if len(report.directories) == 1 else 'ies'}; {report.kept} still owned by live processes")


@app.command()
def quickstart(
    runtime: RuntimeChoice = typer.Option(RuntimeChoice.auto, help="docker, local, or auto (Docker when it answers)."),
    task: Optional[str] = typer.Option(None, help="Sample task id (default: the first)."),
) -> None:
    """Open forager/SWE-v0 on a planted bug in the sample repository, fix it with a scripted episode, print the reward."""
    import gymnasium

    import forager.envs  # noqa: F401 - registers the env
    from forager.images.sample import build_sample_image, sample_tasks
    from forager.policies.reference import reference_actions
    from forager.runtime.docker import docker_available

    kind = runtime.value
    image = None
    if kind in ("auto", "docker"):
        if docker_available():
            with console.status("building the base and sample images (first run only)"):
                try:
                    image = build_sample_image(_docker(), log=lambda m: console.print(f"[dim]{m}[/]"))
                except ForagerError as err:
                    if kind == "docker":
                        _fail(str(err))
                    console.print(f"[yellow]could not build the sample image ({err}); using the local runtime[/]")
            kind = "docker" if image else "local"
        elif kind == "docker":
            _fail("no Docker engine answers; start Docker or use --runtime local")
        else:
            console.print("[yellow]no Docker engine answers: using the local runtime (no isolation)[/]")
            kind = "local"
    tasks = sample_tasks(image)
    chosen = next((t for t in tasks if t.instance_id == task), None) if task else tasks[0]
    if chosen is None:
        _fail(f"no sample task {task!r}; choose from: {', '.join(t.instance_id for t in tasks)}")

    env = gymnasium.make("forager/SWE-v0", task=chosen, runtime=kind)
    try:
        obs, info = env.reset(seed=0)
        console.print(Panel(obs, title=f"task {chosen.instance_id} on {info['runtime']} (reset {info['reset_s']:.2f}s)"))
        reward, steps = 0.0, reference_actions(chosen)
        for n, call in enumerate(steps, 1):
            obs, reward, terminated, truncated, info = env.step(call)
            args = json.dumps(call.arguments)
            console.print(Panel(obs, title=f"step {n}: {call.name} {args[:100]}{'...' if len(args) > 100 else ''}"))
            if terminated or truncated:
                break
        details = info.get("reward_details", {})
        colour = "green" if info.get("resolved") else "red"
        console.print(f"[bold {colour}]reward {reward:g}[/] resolved={info.get('resolved')} "
                      f"tests={json.dumps(details.get('tests_status', {}))[:300]}")
    finally:
        env.close()


def main() -> None:
    try:
        app()
    except ForagerError as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
