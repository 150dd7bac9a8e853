"""Serving recipes: how to serve a model with vLLM and how Forager should talk to it, as data.

A recipe names the model, the exact `vllm serve` command, the sampling settings, the tool-call format
of its chat template and the agent settings that go with it. A policy plug-in carries one as the
`recipe` attribute of a factory (`serving(recipe)`): the factory takes OpenAIPolicy's options and
returns an OpenAIPolicy with the recipe's sampling as defaults, the caller's options winning.
`forager policies show NAME` prints it; `forager collect --policy NAME` takes its agent settings
where the flags and `--config` leave them unset. Forager's own recipes live in the top-level
`policies/` folder (`forager_policies`), declared as `forager.policies` entry points.
"""

from __future__ import annotations

import inspect
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forager.core import ForagerError

if TYPE_CHECKING:
    from forager.policies.openai import OpenAIPolicy

F = TypeVar("F", bound=Callable[..., Any])


class ServingRecipe(BaseModel):
    """A model served by vLLM, and the settings Forager's agent should use with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """The policy's name (`forager collect --policy NAME`)."""
    model: str
    """The Hugging Face id vLLM loads and serves under (the request's `model`)."""
    hardware: str
    """What the command expects, e.g. "2 GPUs of 80 GB"."""
    serve: list[str] = Field(min_length=3)
    """The `vllm serve` command, one argument per item."""
    sampling: dict[str, Any] = Field(default_factory=dict)
    """OpenAIPolicy options (temperature, top_p, max_tokens, ...): the policy's defaults."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """vLLM's own request fields (top_k, min_p, chat_template_kwargs), merged under the caller's."""
    tool_format: Literal["cwm", "openai"]
    """`cwm`: `<tool: NAME>` tags in the text; `openai`: the server's function calling."""
    chat_format: str
    """How the model's chat template writes a tool call, and what the server must do with it."""
    context_length: int = Field(gt=0)
    """Tokens the server holds per sequence (`--max-model-len`)."""
    agent: dict[str, Any] = Field(default_factory=dict)
    """AgentConfig fields that suit the model (tool format, budgets), taken where nothing else sets them."""
    prompts: str | None = None
    """The prompt set (`forager prompts list`) that suits the model."""
    cpu: str | None = None
    """A Forager command that runs the model without a GPU, when it is small enough."""
    note: str = ""

    @field_validator("serve")
    @classmethod
    def _is_vllm_serve(cls, serve: list[str]) -> list[str]:
        if serve[:2] != ["vllm", "serve"]:
            raise ValueError(f"must start with `vllm serve`, not {shlex.join(serve[:2])!r}")
        return serve

    @field_validator("sampling")
    @classmethod
    def _are_policy_options(cls, sampling: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(sampling) - set(_policy_parameters()))
        if unknown:
            raise ValueError(f"{unknown} are not OpenAIPolicy options (put vLLM's own fields in extra_body)")
        return sampling

    def command(self) -> str:
        """The `vllm serve` command, ready to paste: one flag and its value per line."""
        lines = [shlex.join(self.serve[:3])]
        for arg in self.serve[3:]:
            if arg.startswith("-") or len(lines) == 1:
                lines.append(shlex.quote(arg))
            else:
                lines[-1] += " " + shlex.quote(arg)
        return " \\\n    ".join(lines)

    def policy(self, **options: Any) -> OpenAIPolicy:
        """An OpenAIPolicy with this recipe's sampling and model as defaults; `options` win (`extra_body`
        is merged key by key). The model is `options["model"]`, else FORAGER_MODEL, else the recipe's."""
        from forager.policies.openai import OpenAIPolicy

        values = {**self.sampling, **options}
        values["model"] = options.get("model") or os.environ.get("FORAGER_MODEL") or self.model
        values["extra_body"] = {**self.extra_body, **(options.get("extra_body") or {})}
        return OpenAIPolicy(**values)


def _policy_parameters() -> list[str]:
    from forager.policies.openai import OpenAIPolicy

    return list(inspect.signature(OpenAIPolicy).parameters)


def load_recipe(path: str | Path) -> ServingRecipe:
    """A recipe from a YAML file, or a ForagerError naming the file and each problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        return ServingRecipe(**(data if isinstance(data, dict) else {}))
    except (OSError, yaml.YAMLError) as err:
        raise ForagerError(f"cannot read the serving recipe {path}: {err}") from err
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'recipe'}: {e['msg']}" for e in err.errors())
        raise ForagerError(f"invalid serving recipe {path}: {problems}") from err


def serving(recipe: ServingRecipe) -> Callable[[F], F]:
    """Mark a factory as serving `recipe`: its `recipe` attribute, and OpenAIPolicy's signature (so that
    a collection checks the options before it starts)."""
    from forager.policies.openai import OpenAIPolicy

    def mark(factory: F) -> F:
        factory.recipe = recipe  # type: ignore[attr-defined]
        factory.__signature__ = inspect.signature(OpenAIPolicy)  # type: ignore[attr-defined]
        return factory

    return mark


def recipe_of(name: str) -> ServingRecipe | None:
    """The serving recipe of the policy `name` (a plug-in or `module:function`), None when it has none;
    a ForagerError with the close names when there is no such policy."""
    from forager.loading import load_named
    from forager.policies import POLICIES

    if name in POLICIES:
        return None  # the framework's own policies are generic: no model to serve
    recipe = getattr(load_named(name, POLICIES, "policy", plugins="policies"), "recipe", None)
    return recipe if isinstance(recipe, ServingRecipe) else None


def recipes() -> dict[str, ServingRecipe]:
    """Every installed policy plug-in that carries a recipe, by name (those that fail to load are left out)."""
    from forager.plugins import discover

    found = {}
    for plugin in discover().of("policies"):
        try:
            recipe = getattr(plugin.load(), "recipe", None)
        except ForagerError:
            continue
        if isinstance(recipe, ServingRecipe):
            found[plugin.name] = recipe
    return found


__all__ = ["ServingRecipe", "load_recipe", "recipe_of", "recipes", "serving"]
