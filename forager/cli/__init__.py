"""`forager ...`: thin commands over the library, with readable errors.

Each command parses its flags, loads config and calls the library; a ForagerError from any of them
becomes `error: MESSAGE` and exit status 1 in one place, the root group's `invoke`. One module per
command group: images.py (`forager images ...`), tasks.py (`forager tasks ...`, `grade`),
collect.py (`collect`, `quickstart`), data.py (`dedup`, `export`, `view`), maintenance.py (`gc`),
train.py (`forager train`, `forager train plan`), eval.py (`forager eval ...`), plugins.py
(`forager envs|rewards|policies|prompts list`, `forager policies show`). A new group gets a module of its
own, registered at the bottom of this file.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, NoReturn

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from forager.core import ForagerError

if TYPE_CHECKING:
    import docker
    from rich.progress import Progress

    from forager.core import Task

console = Console(soft_wrap=True)  # messages are not cut into lines: logs stay greppable


class RuntimeChoice(str, Enum):
    auto = "auto"
    docker = "docker"
    local = "local"


class ForagerGroup(TyperGroup):
    """The root command: a ForagerError from any command prints `error: MESSAGE` and exits with status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ForagerError as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(1) from None


app = typer.Typer(cls=ForagerGroup, help="Forager: a gym for training and evaluating software-engineering agents.",
                  no_args_is_help=True)


@app.callback()
def _root(plugins: list[str] = typer.Option(
        [], "--plugins", help="A folder of plug-ins (environments, rewards, policies); repeatable. Also FORAGER_PLUGINS.")) -> None:
    """Forager: a gym for training and evaluating software-engineering agents."""
    if plugins:
        import os

        from forager.plugins import PLUGINS_ENV

        # In the environment, so that every process this command starts (workers, Ray actors) sees them too.
        os.environ[PLUGINS_ENV] = os.pathsep.join([*plugins, *filter(None, [os.environ.get(PLUGINS_ENV)])])


def main() -> None:
    """The `forager` console script and `python -m forager`."""
    app()


def fail(message: str) -> NoReturn:
    """Stop the command with `error: MESSAGE` and exit status 1 (printed where every ForagerError is)."""
    raise ForagerError(message)


def table_console() -> Console:
    """The console for a table: piped or redirected, rich would cut it at 80 columns, so lay it out at its
    natural width instead."""
    return console if console.is_terminal else Console(width=100_000, soft_wrap=True, highlight=False)


def dim(message: str) -> None:
    """Print a library's progress line, dimmed."""
    console.print(f"[dim]{message}[/]")


def make_progress() -> Progress:
    """A progress bar with a description, count, elapsed time and a `detail` field."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[detail]}"), console=console)


def docker_engine() -> docker.DockerClient:
    """A Docker client, or a clear error; imported here so that `--help` does not load the docker package."""
    from forager.runtime.docker import docker_client

    return docker_client()


def read_tasks(path: str, split: str = "test", fmt: str = "auto", image: str | None = None) -> list[Task]:
    """Tasks from a file or dataset; a missing file or a bad record is a clean error, not a traceback."""
    from forager.tasks.store import load_tasks

    try:
        return load_tasks(path, split=split, format=fmt, image=image)  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


# The commands, registered in the order `forager --help` lists them; the modules use the shared bits above.
from forager.cli import collect, data, eval, images, maintenance, plugins, tasks, train  # noqa: E402

app.command()(tasks.grade)
app.command()(maintenance.gc)
app.command()(collect.collect)
app.command()(collect.quickstart)
app.command()(data.dedup)
app.command("export")(data.export_command)
app.command()(data.view)
app.add_typer(images.images_app, name="images")
app.add_typer(tasks.tasks_app, name="tasks")
app.add_typer(train.train_app, name="train")
app.add_typer(eval.eval_app, name="eval")
app.add_typer(plugins.envs_app, name="envs")
app.add_typer(plugins.rewards_app, name="rewards")
app.add_typer(plugins.policies_app, name="policies")
app.add_typer(plugins.prompts_app, name="prompts")

__all__ = ["ForagerGroup", "RuntimeChoice", "app", "console", "fail", "main"]
