"""The serving recipes Forager ships: each loads from its entry point, its `vllm serve` command parses and
names the model, its factory makes an OpenAIPolicy with the recipe's sampling (the caller's options win),
`forager policies show` prints it, and `forager collect --policy NAME` talks to a server with it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forager.cli import app
from forager.core import ForagerError
from forager.plugins import discover
from forager.policies import make_policy
from forager.policies.openai import OpenAIPolicy
from forager.policies.recipes import ServingRecipe, load_recipe, recipe_of, recipes
from forager.policies.spec import PolicySpec
from forager.testing import OpenAIServer

SHIPPED = {"cwm-32b": "facebook/cwm", "qwen3-32b": "Qwen/Qwen3-32B",
           "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def flags(recipe: ServingRecipe) -> dict[str, str | None]:
    """The `--flag value` pairs of the pasted command (a flag without a value maps to None)."""
    argv = shlex.split(recipe.command().replace("\\\n", " "))
    assert argv == recipe.serve
    found: dict[str, str | None] = {}
    for arg in argv[3:]:
        if arg.startswith("--"):
            found[arg] = None
            last = arg
        else:
            found[last] = arg
    return found


@pytest.fixture(autouse=True)
def _no_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORAGER_MODEL", raising=False)


@pytest.mark.parametrize(("name", "model"), SHIPPED.items())
def test_every_recipe_loads_from_its_entry_point_and_its_command_names_the_model(name: str, model: str) -> None:
    plugin = discover(refresh=True).get("policies", name)
    assert plugin.target.startswith("forager_policies.recipes:") and plugin.origin.startswith("package forager ")
    assert plugin.description()  # the line `forager policies list` shows
    recipe = recipe_of(name)
    assert recipe is not None and recipe.name == name and recipe.model == model
    assert recipe.serve[:3] == ["vllm", "serve", model]
    found = flags(recipe)
    assert int(found["--max-model-len"]) == recipe.context_length
    assert found["--generation-config"] == "vllm" and found["--dtype"] == "bfloat16"
    assert int(found["--tensor-parallel-size"]) >= 1
    # Function calling needs the server's tool parser; the `cwm` format is parsed from the text by Forager.
    assert ("--enable-auto-tool-choice" in found) == (recipe.tool_format == "openai")
    assert recipe.agent.get("tool_format", recipe.tool_format) == recipe.tool_format
    assert recipe.agent.get("max_context_tokens", 0) <= recipe.context_length


def test_the_model_specific_settings() -> None:
    cwm, qwen, smol = (recipe_of(name) for name in SHIPPED)
    assert flags(qwen)["--tool-call-parser"] == "hermes" and flags(qwen)["--reasoning-parser"] == "qwen3"
    assert qwen.sampling == {"temperature": 0.6, "top_p": 0.95} and qwen.extra_body == {"top_k": 20, "min_p": 0.0}
    assert cwm.sampling == {"temperature": 1.0, "top_p": 0.95} and cwm.context_length == 131072
    assert cwm.tool_format == "cwm" and cwm.prompts == "cwm"
    assert cwm.extra_body["chat_template_kwargs"]["enable_thinking"] is True
    cpu = shlex.split(smol.cpu)
    assert cpu[:2] == ["forager", "collect"] and cpu[cpu.index("--policy") + 1] == "hf"
    from forager.policies.models import KNOWN_MODELS

    assert cpu[cpu.index("--model") + 1] in KNOWN_MODELS  # the GGUF Forager converts offline
    assert set(recipes()) >= set(SHIPPED)


def test_the_factory_makes_an_openai_policy_with_the_recipes_settings_and_the_callers_win() -> None:
    policy = make_policy("qwen3-32b", base_url="http://gpu-host:8000/v1")
    assert isinstance(policy, OpenAIPolicy)
    assert (policy.base_url, policy.model) == ("http://gpu-host:8000/v1", "Qwen/Qwen3-32B")
    assert policy.sampling["temperature"] == 0.6 and policy.sampling["top_p"] == 0.95
    assert policy.extra_body == {"top_k": 20, "min_p": 0.0}
    mine = make_policy("qwen3-32b", base_url="http://h:1/v1", model="qwen-ft", temperature=0.1,
                       extra_body={"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}})
    assert mine.model == "qwen-ft" and mine.sampling["temperature"] == 0.1 and mine.sampling["top_p"] == 0.95
    assert mine.extra_body == {"top_k": 5, "min_p": 0.0, "chat_template_kwargs": {"enable_thinking": False}}
    with pytest.raises(ForagerError, match="policy 'cwm-32b' does not take these options"):
        make_policy("cwm-32b", temprature=0.5)
    for built in (policy, mine):
        built.close()


def test_a_collection_checks_a_recipes_options_before_it_starts() -> None:
    from forager.agent.collect import validate_policy

    validate_policy(PolicySpec(name="smollm2-135m", options={"base_url": "http://h:1/v1", "top_p": 0.5}))
    with pytest.raises(ForagerError, match="does not take these options"):
        validate_policy(PolicySpec(name="smollm2-135m", options={"top_kk": 3}))


def test_policies_show_prints_the_command_ready_to_paste() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["policies", "show", "qwen3-32b"])
    assert shown.exit_code == 0, shown.output
    command = shown.output.split("\n\n")[2]
    assert shlex.split(command.replace("\\\n", " ")) == recipe_of("qwen3-32b").serve
    assert "forager collect --policy qwen3-32b --base-url http://HOST:8000/v1" in shown.output
    assert "temperature=0.6, top_p=0.95, top_k=20" in shown.output and "tool format: openai" in shown.output
    assert "forager collect --policy hf --model smollm2-135m-instruct" in \
        runner.invoke(app, ["policies", "show", "smollm2-135m"]).output
    none = runner.invoke(app, ["policies", "show", "openai"])
    assert none.exit_code == 1 and "has no serving recipe; these have one: cwm-32b, qwen3-32b" in none.output
    typo = runner.invoke(app, ["policies", "show", "qwen3-23b"])
    assert typo.exit_code == 1 and "did you mean qwen3-32b" in typo.output


def test_a_bad_recipe_file_names_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nhardware: h\nserve: [python, serve, m]\nsampling: {top_k: 20}\n"
                   "tool_format: tags\nchat_format: c\ncontext_length: 0\n")
    with pytest.raises(ForagerError) as caught:
        load_recipe(bad)
    message = str(caught.value)
    for problem in ("serve: Value error, must start with `vllm serve`", "sampling: Value error, ['top_k'] are not "
                    "OpenAIPolicy options", "tool_format: Input should be 'cwm' or 'openai'", "context_length"):
        assert problem in message


def test_collect_with_a_recipe_sends_its_sampling_and_takes_its_agent_settings(tmp_path: Path) -> None:
    """`--policy smollm2-135m` against a server: the flags reach the policy, the recipe's sampling is in every
    request, and its tool format and prompt set (`minimal`) are the agent's."""
    with OpenAIServer("<tool: submit>\n</tool>") as server:
        run = subprocess.run(
            [sys.executable, "-m", "forager", "collect", "--policy", "smollm2-135m", "--base-url", server.base_url,
             "--model", "toy-model", "--runtime", "local", "--limit", "1", "--workers", "1", "--warm-pool", "0",
             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp_path)})
        requests = server.chat_requests
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the smollm2-135m recipe sets tool_format=cwm" in run.stdout
    assert requests and all(r["temperature"] == 0.2 and r["top_p"] == 0.9 and r["model"] == "toy-model"
                            for r in requests)
    [trajectory] = [json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert trajectory["messages"][0]["content"].startswith("You fix issues in the repository at ")  # minimal.yaml
    assert trajectory["termination"] == "submitted"
