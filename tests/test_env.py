"""forager/SWE-v0 end to end: Gymnasium's checker, a scripted fix, malformed actions, the turn budget."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import forager.envs  # noqa: F401 - registers forager/SWE-v0
from forager.images.sample import sample_tasks
from forager.policies.reference import reference_actions
from forager.rewards import RewardResult
from tests.conftest import HAVE_DOCKER

RUNTIMES = [pytest.param("docker", marks=pytest.mark.skipif(not HAVE_DOCKER, reason="needs the sample image")), "local"]


@pytest.fixture(scope="module")
def task():
    return sample_tasks()[0]


@pytest.mark.parametrize("kind", RUNTIMES)
def test_check_env_passes(kind):
    env = gymnasium.make("forager/SWE-v0", runtime=kind, max_turns=8)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


@pytest.mark.parametrize("kind", RUNTIMES)
def test_reference_fix_is_rewarded(kind, task):
    env = gymnasium.make("forager/SWE-v0", task=task, runtime=kind)
    try:
        obs, info = env.reset(seed=1)
        assert task.problem_statement.strip()[:40] in obs
        assert "<tool: bash>" in info["system_prompt"]  # the tools and their call format
        # The planted bug is in the starting state and the history does not reveal the fix.
        assert env.unwrapped.runtime.run("git log --oneline | wc -l").output.strip() == "1"
        for call in reference_actions(task):
            obs, reward, terminated, truncated, info = env.step(call)
        assert terminated and not truncated
        assert reward == 1.0 and info["resolved"]
        assert isinstance(info["reward_result"], RewardResult) and info["reward_result"].resolution == "FULL"
        assert set(info["reward_details"]["tests_status"].values()) == {"PASSED"}
    finally:
        env.close()


@pytest.mark.parametrize("kind", RUNTIMES)
def test_submitting_nothing_is_not_rewarded(kind, task):
    env = gymnasium.make("forager/SWE-v0", task=task, runtime=kind, reward={"unresolved": -1.0})
    try:
        env.reset()
        obs, reward, terminated, truncated, info = env.step("<tool: submit>\n</tool>")
        assert terminated and reward == -1.0 and not info["resolved"]
        details = info["reward_details"]
        assert all(details["tests_status"][t] == "FAILED" for t in task.FAIL_TO_PASS)
        with pytest.raises(RuntimeError, match="reset"):
            env.step("<tool: submit>\n</tool>")
    finally:
        env.close()


def test_malformed_actions_cost_a_turn_and_running_out_truncates(task):
    env = gymnasium.make("forager/SWE-v0", task=task, runtime="local", max_turns=3)
    try:
        env.reset()
        obs, reward, terminated, truncated, info = env.step("I should look around first.")
        assert "no tool call found" in obs and "<tool: bash>" in obs and obs.endswith("[2 turns left]")
        assert not (terminated or truncated) and "action_error" in info
        obs, *_ = env.step('<tool: bash>\necho "$((6 * 7))"\n</tool>')
        assert obs.startswith("42\n") and obs.endswith("[1 turn left]")
        obs, reward, terminated, truncated, info = env.step('{"name": "bash", "arguments": {"command": "true"}}')
        assert truncated and not terminated and reward == 0.0 and "reward_details" in info
    finally:
        env.close()


def test_reset_options_set_the_episode_and_unknown_ones_are_refused(task):
    env = gymnasium.make("forager/SWE-v0", task=task, runtime="local", max_turns=3)
    try:
        prompts = {"task_prompt": "Fix {instance_id} in {workdir} ({max_turns} turns)"}
        obs, info = env.reset(options={"max_turns": 2, "context_tokens_left": lambda: 321, "prompts": prompts})
        assert obs == f"Fix {task.instance_id} in {env.unwrapped.runtime.workdir} (2 turns)"
        assert info["turns_left"] == 2 and "{workdir}" not in info["system_prompt"]
        obs, *_ = env.step("<tool: bash>\ntrue\n</tool>")
        assert obs.endswith("[1 turn and about 321 tokens of context left]")
        obs, info = env.reset()  # options hold for one episode: the env's own budget is back
        assert info["turns_left"] == 3 and task.problem_statement.strip()[:40] in obs
        with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['max_turn'\]; SWEEnv.reset accepts: task,"):
            env.reset(options={"max_turn": 5})
    finally:
        env.close()
