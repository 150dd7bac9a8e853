"""Prompt sets by name: the shipped ones are valid agent templates, `--prompts` chooses one (or a file) for
`forager collect`, a serving recipe's set applies where nothing else sets the prompts, and an unknown name
says which sets there are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forager.agent.config import AgentConfig
from forager.cli import app
from forager.cli.collect import agent_settings
from forager.core import ForagerError
from forager.envs.prompts import DEFAULT_PROMPTS, PROMPT_SET_KEYS, load_prompt_set
from forager.plugins import discover
from forager.policies.spec import PolicySpec

SHIPPED = ("cwm", "default", "minimal")


def test_the_shipped_sets_are_entry_points_and_valid_agent_templates() -> None:
    found = {p.name: p for p in discover(refresh=True).of("prompts")}
    assert set(SHIPPED) <= set(found)
    for name in SHIPPED:
        assert found[name].origin.startswith("package forager ") and found[name].description()
        prompts = load_prompt_set(name)
        assert set(prompts) == set(PROMPT_SET_KEYS)
        AgentConfig(**prompts).tool_help()  # the templates use known fields only, and render
    assert load_prompt_set("default") == {key: DEFAULT_PROMPTS[key] for key in PROMPT_SET_KEYS}
    cwm = load_prompt_set("cwm")
    assert cwm["system_prompt"].startswith("You are a helpful AI assistant. You always reason before responding")
    assert "<issue_description>\n{problem_statement}\n</issue_description>" in cwm["task_prompt"]
    assert len(load_prompt_set("minimal")["system_prompt"]) < len(DEFAULT_PROMPTS["system_prompt"])


def test_an_unknown_set_names_the_close_ones_and_every_known_one() -> None:
    with pytest.raises(ForagerError, match=r"unknown prompt set 'cwn'; did you mean cwm\? Known sets: cwm, default, "
                                           r"minimal \(`forager prompts list`\); or give a YAML file"):
        load_prompt_set("cwn")
    with pytest.raises(ForagerError, match="unknown prompt set 'verbose' Known sets: cwm, default, minimal"):
        load_prompt_set("verbose")


def test_a_yaml_file_is_a_prompt_set_too(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("task_prompt: 'Fix: {problem_statement}'\n")
    assert load_prompt_set(mine) == {"task_prompt": "Fix: {problem_statement}"}
    (tmp_path / "typo.yaml").write_text("task_promt: x\n")
    with pytest.raises(ForagerError, match=r"unknown key\(s\) \['task_promt'\]; known: system_prompt, task_prompt"):
        load_prompt_set(tmp_path / "typo.yaml")
    with pytest.raises(ForagerError, match="cannot read the prompt set"):
        load_prompt_set(tmp_path / "missing.yaml")


def test_what_wins_prompts_flags_config_then_a_recipes_settings(tmp_path: Path) -> None:
    assert agent_settings(None, "minimal").system_prompt == load_prompt_set("minimal")["system_prompt"]
    recipe = agent_settings(None, None, PolicySpec(name="cwm-32b"))
    assert (recipe.tool_format, recipe.max_context_tokens) == ("cwm", 131072)
    assert recipe.system_prompt == load_prompt_set("cwm")["system_prompt"]
    config = tmp_path / "agent.yaml"
    config.write_text("agent:\n  max_context_tokens: 20000\n  task_prompt: 'Go: {problem_statement}'\n")
    mine = agent_settings(config, None, PolicySpec(name="qwen3-32b"), tool_format="cwm")
    assert (mine.tool_format, mine.max_context_tokens, mine.max_tokens_per_turn) == ("cwm", 20000, 8192)
    assert mine.task_prompt == "Go: {problem_statement}"  # a config that sets a prompt keeps the others default
    assert mine.system_prompt == DEFAULT_PROMPTS["system_prompt"]
    chosen = agent_settings(None, "minimal", PolicySpec(name="cwm-32b"))
    assert chosen.system_prompt == load_prompt_set("minimal")["system_prompt"] and chosen.tool_format == "cwm"


def test_collect_prompts_chooses_the_set_the_model_sees(tmp_path: Path) -> None:
    """The reference policy on the first sample task, in a local runtime: the system and task prompts are cwm's."""
    run = subprocess.run([sys.executable, "-m", "forager", "collect", "--prompts", "cwm", "--runtime", "local",
                          "--limit", "1", "--workers", "1", "--warm-pool", "0", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    [trajectory] = [json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    system, task = trajectory["messages"][0]["content"], trajectory["messages"][1]["content"]
    assert "# Environment" in system and "<tool: str_replace>\n[path]" in system
    assert "{max_turns}" not in system and "{command_timeout" not in system and "at most 64 turns" in system
    assert task.startswith("Solve the following issue") and "<issue_description>" in task
    assert trajectory["resolved"]


@pytest.mark.parametrize("command", [["collect", "--runtime", "local"], ["quickstart", "--runtime", "local"]])
def test_an_unknown_prompt_set_stops_the_command_before_it_starts(command: list[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*command, "--prompts", "cwn", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "unknown prompt set 'cwn'; did you mean cwm? Known sets: cwm, default, minimal" in result.output
    assert not (tmp_path / "out").exists()
