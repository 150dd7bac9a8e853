"""`forager envs list`, `forager rewards list`, `forager policies list`: what is installed, and what failed."""

from __future__ import annotations

import typer
from rich.table import Table

from forager.cli import console, table_console


def _built_in(kind: str) -> dict[str, str]:
    """The framework's own entries of a kind (name -> target), shown beside the plug-ins."""
    if kind == "envs":
        from forager.registration import ENVIRONMENTS

        return dict(ENVIRONMENTS)
    if kind == "policies":
        from forager.policies import POLICIES

        return dict(POLICIES)
    if kind == "rewards":
        from forager.rewards.functions import REWARDS, SHAPING

        return {**REWARDS, **SHAPING}
    return {}


def show(kind: str) -> None:
    """A table of the built-in entries and the plug-ins of `kind` with a one-line description each,
    then the plug-ins that failed to load with their errors."""
    from forager.plugins import Plugin, discover

    plugins = discover(refresh=True)
    plugins.check()
    table = Table(title=f"forager {kind}", title_justify="left")
    for column in ("name", "description", "from"):
        table.add_column(column, overflow="fold")
    rows = [Plugin(kind, name, target, "forager (built in)") for name, target in _built_in(kind).items()]
    for plugin in [*rows, *plugins.of(kind)]:
        try:
            description = plugin.description()
        except Exception as err:  # noqa: BLE001 - shown, not raised: the list is for finding such problems
            description = f"[red]cannot load: {err}[/]"
        table.add_row(plugin.name, description, plugin.origin)
    if table.rows:
        table_console().print(table)
    broken = [b for b in plugins.broken if b.kind in (kind, "")]
    for item in broken:
        console.print(f"[bold red]failed:[/] {item.name} ({item.origin}): {item.error}")
    if not rows and not plugins.of(kind) and not broken:
        console.print(f"no {kind} plug-ins: install a package with `forager.{kind}` entry points, or pass --plugins DIR")


def _list_command(kind: str) -> typer.Typer:
    app = typer.Typer(help=f"The {kind} Forager can use: built in and plug-ins.", no_args_is_help=True)

    @app.command("list")
    def list_plugins() -> None:
        """Each with a one-line description; plug-ins that fail to import are listed with their error."""
        show(kind)

    return app


envs_app = _list_command("envs")
rewards_app = _list_command("rewards")
policies_app = _list_command("policies")
