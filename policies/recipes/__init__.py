"""Serving recipes (`forager policies show NAME`): one YAML file each beside this module, and a factory per recipe
that a `forager.policies` entry point names (`forager collect --policy NAME --base-url http://HOST:8000/v1`)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from forager.policies.recipes import ServingRecipe, load_recipe, serving

if TYPE_CHECKING:
    from forager.policies.openai import OpenAIPolicy


def recipe(name: str) -> ServingRecipe:
    """The recipe in `NAME.yaml` beside this module."""
    with resources.as_file(resources.files(__package__).joinpath(f"{name}.yaml")) as path:
        return load_recipe(path)


CWM_32B = recipe("cwm-32b")
QWEN3_32B = recipe("qwen3-32b")
SMOLLM2_135M = recipe("smollm2-135m")


@serving(CWM_32B)
def cwm_32b(**options: Any) -> OpenAIPolicy:
    """CWM 32B (facebook/cwm) on vLLM with its RL sampling (temperature 1.0, top_p 0.95), reasoning on, `<tool: NAME>`
    tags in the text, 131,072 tokens of context.

    Options are OpenAIPolicy's (base_url, model, api_key, temperature, ...); they win over the recipe's."""
    return CWM_32B.policy(**options)


@serving(QWEN3_32B)
def qwen3_32b(**options: Any) -> OpenAIPolicy:
    """Qwen3-32B on vLLM in thinking mode (temperature 0.6, top_p 0.95, top_k 20), OpenAI function calling through
    the hermes parser, 32,768 tokens of context.

    Options are OpenAIPolicy's (base_url, model, api_key, temperature, ...); they win over the recipe's."""
    return QWEN3_32B.policy(**options)


@serving(SMOLLM2_135M)
def smollm2_135m(**options: Any) -> OpenAIPolicy:
    """SmolLM2-135M-Instruct on vLLM (temperature 0.2, top_p 0.9), `<tool: NAME>` tags in the text, 8,192 tokens of
    context; on a CPU, Forager's hf policy runs it too (`forager policies show smollm2-135m`).

    Options are OpenAIPolicy's (base_url, model, api_key, temperature, ...); they win over the recipe's."""
    return SMOLLM2_135M.policy(**options)


__all__ = ["CWM_32B", "QWEN3_32B", "SMOLLM2_135M", "cwm_32b", "qwen3_32b", "recipe", "smollm2_135m"]
