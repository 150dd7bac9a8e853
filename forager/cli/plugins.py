"""`forager envs|rewards|policies|prompts list`: what is installed, and what failed; `forager policies show NAME`:
a serving recipe, ready to paste."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from forager.cli import console, fail, table_console

if TYPE_CHECKING:
    from forager.plugins import Plugin
    from forager.policies.recipes import ServingRecipe


def _built_in(kind: str) -> dict[str, str]:
    """The framework's own entries of a kind (name -> target), shown beside the plug-ins (rewards and
    prompt sets have none: even the default ones are plug-ins)."""
    if kind == "envs":
        from forager.registration import ENVIRONMENTS

        return dict(ENVIRONMENTS)
    if kind == "policies":
        from forager.policies import POLICIES

        return dict(POLICIES)
    return {}


def _role(plugin: Plugin) -> str:
    """A reward plug-in's role: `reward` (a function of the context) or `shaping` (of the context and the reward)."""
    from forager.rewards.functions import reward_role

    return reward_role(plugin.load()) or "?"


def show(kind: str) -> None:
    """A table of the built-in entries and the plug-ins of `kind` with a one-line description each (and,
    for rewards, their role), then the plug-ins that failed to load with their errors."""
    from forager.plugins import Plugin, discover

    plugins = discover(refresh=True)
    plugins.check()
    table = Table(title=f"forager {kind}", title_justify="left")
    columns = ("name", "role", "description", "from") if kind == "rewards" else ("name", "description", "from")
    for column in columns:
        table.add_column(column, overflow="fold")
    rows = [Plugin(kind, name, target, "forager (built in)") for name, target in _built_in(kind).items()]
    for plugin in [*rows, *plugins.of(kind)]:
        try:
            cells = ([_role(plugin)] if kind == "rewards" else []) + [plugin.description()]
        except Exception as err:  # noqa: BLE001 - shown, not raised: the list is for finding such problems
            cells = ([""] if kind == "rewards" else []) + [f"[red]cannot load: {err}[/]"]
        table.add_row(plugin.name, *cells, plugin.origin)
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
prompts_app = _list_command("prompts")


@policies_app.command("show")
def show_recipe(name: str = typer.Argument(..., help="A policy with a serving recipe, e.g. qwen3-32b.")) -> None:
    """A policy's serving recipe: the `vllm serve` command to paste, the sampling settings, the tool-call
    format and how to point `forager collect` at the server."""
    from forager.policies.recipes import recipe_of, recipes

    recipe = recipe_of(name)
    if recipe is None:
        fail(f"policy {name!r} has no serving recipe; these have one: {', '.join(sorted(recipes())) or 'none'}")
    typer.echo(recipe_text(name, recipe))


def recipe_text(name: str, recipe: ServingRecipe) -> str:
    """The recipe as `forager policies show` prints it: plain text, each command on lines of its own."""
    sampling = {**recipe.sampling, **recipe.extra_body}
    agent = ", ".join(f"{key}={value}" for key, value in recipe.agent.items())
    parts = [
        f"{name}: {recipe.model}",
        f"serve it on {recipe.hardware}:\n\n{recipe.command()}",
        f"point Forager at it:\n\nforager collect --policy {name} --base-url http://HOST:8000/v1",
        "sampling (the policy's defaults; --temperature and --policy-option KEY=VALUE win): "
        + ", ".join(f"{key}={value}" for key, value in sampling.items()),
        f"tool format: {recipe.tool_format} (--tool-format); the chat template: {recipe.chat_format}",
        f"context: {recipe.context_length} tokens; agent settings taken when unset: {agent or 'none'}"
        + (f"; prompt set: {recipe.prompts}" if recipe.prompts else ""),
    ]
    if recipe.cpu:
        parts.append(f"on a CPU, without a server:\n\n{recipe.cpu}")
    if recipe.note:
        parts.append(f"note: {recipe.note}")
    return "\n\n".join(parts)
