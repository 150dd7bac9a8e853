"""The ForagerAgent end to end: a real OpenAI-API HTTP server drives episodes in real containers.

Covers token-exact trajectories, the termination reasons (submitted, out of turns, out of context,
policy error, environment error, crashed), malformed output, retries, the reference and replay
policies, and prompts from configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import pytest

from forager.agent.config import AgentConfig, load_agent_config
from forager.agent.loop import make_env, run_episode
from forager.trajectories.store import read_trajectories
from forager.core import ForagerError, PolicyOutput, Trajectory
from forager.images.sample import sample_tasks
from forager.policies import make_policy
from forager.policies.openai import OpenAIPolicy
from forager.policies.reference import ReferencePolicy, as_cwm_text, reference_actions
from forager.policies.replay import ReplayPolicy
from forager.rewards import RewardResult
from forager.testing import OpenAIServer, Reply, decode, episode, fail_first, render_chat
from forager.testing.scripted import reference_responder
from tests.conftest import needs_docker

pytestmark = needs_docker


@pytest.fixture(scope="module")
def tasks():
    return sample_tasks()


@pytest.fixture
def env():
    env = make_env(AgentConfig(max_turns=12), runtime="docker")
    yield env
    env.close()


def _policy(server: OpenAIServer, **options) -> OpenAIPolicy:
    return OpenAIPolicy(base_url=server.base_url, model="toy-model", api_key="test", timeout=5, max_retries=2,
                        backoff_s=0.01, **options)


def test_openai_policy_fixes_a_task_with_exact_tokens(tasks, env):
    task = tasks[0]
    with OpenAIServer(reference_responder(tasks)) as server, _policy(server) as policy:
        trajectory = run_episode(env, policy, task, AgentConfig(max_turns=12), sample=3)

    assert trajectory.termination == "submitted" and trajectory.resolved and trajectory.reward == 1.0
    assert trajectory.trajectory_id == f"{task.instance_id}#3"
    assert [a["name"] for a in trajectory.actions()] == [c.name for c in reference_actions(task)]
    assert trajectory.trainable
    # Token-in, token-out: the concatenated tokens are exactly the conversation the server saw,
    # and only the sampled tokens are trained on.
    ids, mask, logprobs = trajectory.token_sequence()
    last_request = server.chat_requests[-1]["messages"]
    last_turn = trajectory.messages[-1]
    assistant = [m for m in trajectory.messages if m.role == "assistant"]
    assert all(decode(m.token_ids).startswith(m.content) for m in assistant)
    assert sum(mask) == sum(len(m.token_ids) for m in assistant)
    assert all(lp < 0 for lp, m in zip(logprobs, mask) if m == 1)
    assert all(lp == 0 for lp, m in zip(logprobs, mask) if m == 0)
    assert last_turn.role == "user" and "graded" in last_turn.content
    # The prompt of every turn extends the previous turn's prompt and sample: nothing was re-rendered.
    assert not any(m.retokenized for m in trajectory.messages)
    prompt_ids = render_chat(last_request)
    assert ids[: len(prompt_ids)] == prompt_ids
    # Every observation ends with the budget, turns and tokens.
    observations = [m.content for m in trajectory.messages[3:] if m.role == "user"][:-1]
    assert all("turns and about" in o.splitlines()[-1] for o in observations)
    assert trajectory.timings["total"] >= trajectory.timings["env"] > 0
    assert trajectory.diff and "semverkit" in trajectory.diff
    assert Trajectory.from_json(trajectory.to_json()) == trajectory


def test_malformed_output_costs_a_turn_and_the_episode_recovers(tasks, env):
    task = tasks[0]
    fix = [as_cwm_text(c) for c in reference_actions(task)]
    script = ["I think I should look around.", "<tool: bash>\nls", '<tool: nope>\nx\n</tool>', *fix]
    with OpenAIServer(episode(script)) as server, _policy(server) as policy:
        trajectory = run_episode(env, policy, task, AgentConfig(max_turns=20))
    assert trajectory.termination == "submitted" and trajectory.resolved
    errors = [m.action_error for m in trajectory.messages if m.role == "assistant"][:3]
    assert "no tool call found" in errors[0]
    assert "not closed" in errors[1]
    assert "unknown tool 'nope'" in errors[2]
    observations = [m.content for m in trajectory.messages if m.role == "user"][1:4]
    assert all(o.startswith("Error:") and "<tool: bash>" in o for o in observations[:2])
    assert trajectory.actions()[0]["name"] == "<malformed>"


def test_server_errors_are_retried_then_end_the_episode_as_a_policy_error(tasks, env):
    task = tasks[0]
    with OpenAIServer(fail_first(2, status=500, then=reference_responder(tasks))) as server, _policy(server) as policy:
        recovered = run_episode(env, policy, task, AgentConfig(max_turns=12))
    assert recovered.termination == "submitted" and recovered.resolved

    with OpenAIServer(fail_first(100, status=503)) as server, _policy(server) as policy:
        failed = run_episode(env, policy, task, AgentConfig(max_turns=12))
    assert failed.termination == "policy_error" and "503" in failed.error
    assert len(server.chat_requests) == 3  # the first try and two retries
    # Graded as it stands (nothing changed: the planted bug is still there).
    assert failed.reward_details and not failed.resolved and failed.reward == 0.0


def test_a_server_that_times_out_ends_the_episode_with_a_policy_error(tasks, env):
    with OpenAIServer(Reply(text="<tool: submit>\n</tool>", delay_s=2.0)) as server:
        policy = OpenAIPolicy(base_url=server.base_url, model="toy-model", timeout=0.3, max_retries=1, backoff_s=0.01)
        trajectory = run_episode(env, policy, tasks[0], AgentConfig(max_turns=5))
        policy.close()
    assert trajectory.termination == "policy_error"
    assert "timed out" in trajectory.error or "timeout" in trajectory.error.lower()
    assert trajectory.num_turns == 0 and len(trajectory.messages) == 2


def test_context_overflow_ends_the_episode_out_of_context(tasks, env):
    task = tasks[0]
    flood = "<tool: bash>\nfor i in $(seq 3000); do echo line $i of a long listing; done\n</tool>"
    # The server's window is larger than the agent's budget: the agent stops first, by its own count.
    with OpenAIServer(episode([flood] * 10), max_model_len=100_000) as server, _policy(server) as policy:
        ours = run_episode(env, policy, task, AgentConfig(max_turns=10, max_context_tokens=12_000))
    assert ours.termination == "out_of_context"
    assert 1 <= ours.num_turns < 10 and ours.prompt_tokens <= 12_000
    # The server's window is smaller: its 400 ends the episode the same way.
    with OpenAIServer(episode([flood] * 10), max_model_len=6_000) as server, _policy(server) as policy:
        theirs = run_episode(env, policy, task, AgentConfig(max_turns=10, max_context_tokens=100_000))
    assert theirs.termination == "out_of_context" and "context" in theirs.error
    assert theirs.num_turns >= 1 and theirs.reward_details  # graded as it stands


def test_out_of_turns_is_graded_as_it_stands(tasks, env):
    with OpenAIServer(episode(["<tool: bash>\ngit status --short\n</tool>"] * 3)) as server, _policy(server) as policy:
        trajectory = run_episode(env, policy, tasks[0], AgentConfig(max_turns=3))
    assert trajectory.termination == "out_of_turns" and trajectory.num_turns == 3
    assert trajectory.reward_details["fail_to_pass"]["failure"] == tasks[0].FAIL_TO_PASS


def test_function_calling_format(tasks, env):
    task = tasks[1]
    steps = [Reply(tool_calls=[{"name": c.name, "arguments": json.dumps(c.arguments)}])
             for c in reference_actions(task)]
    with OpenAIServer(episode(steps)) as server, _policy(server) as policy:
        trajectory = run_episode(env, policy, task, AgentConfig(tool_format="openai", max_turns=12))
    assert trajectory.termination == "submitted" and trajectory.resolved
    request = server.chat_requests[0]
    assert {t["function"]["name"] for t in request["tools"]} >= {"bash", "str_replace", "submit"}
    first_call = trajectory.messages[2].tool_calls[0]
    assert trajectory.messages[2].action == {"name": "bash", "arguments": reference_actions(task)[0].arguments}
    tool_messages = [m for m in trajectory.messages if m.role == "tool"]
    assert len(tool_messages) == trajectory.num_turns and tool_messages[0].tool_call_id == first_call["id"]
    # The conversation sent back holds the assistant's tool_calls and the tool results.
    second = server.chat_requests[1]["messages"]
    assert second[2]["tool_calls"][0]["id"] == first_call["id"] and second[3]["role"] == "tool"


def test_environment_error_and_crash_still_save_a_trajectory(tasks, env):
    class KillsItsContainer:
        name = "killer"

        def act(self, messages, **kwargs):
            if len(messages) == 4:  # after the first observation: the container dies under the agent
                env.runtime.container.remove(force=True)
            return PolicyOutput(text="<tool: bash>\necho hi\n</tool>")

    trajectory = run_episode(env, KillsItsContainer(), tasks[0], AgentConfig(max_turns=8))
    assert trajectory.termination == "env_error" and "is gone" in trajectory.error
    assert 2 <= trajectory.num_turns <= 3 and trajectory.reward == 0.0
    assert trajectory.messages[-1].content.startswith("Environment error:")

    class Buggy:
        name = "buggy"

        def act(self, messages, **kwargs):
            raise ZeroDivisionError("a bug in the policy")

    crashed = run_episode(env, Buggy(), tasks[0], AgentConfig(max_turns=5))
    assert crashed.termination == "crashed" and "ZeroDivisionError" in crashed.error
    assert len(crashed.messages) == 2 and crashed.finished_at


def test_reference_and_replay_policies(tasks, env, tmp_path):
    reference = make_policy("reference")
    assert isinstance(reference, ReferencePolicy)
    recorded = run_episode(env, reference, tasks[2], AgentConfig(max_turns=12))
    assert recorded.termination == "submitted" and recorded.resolved
    assert not recorded.trainable  # text only: the reference policy has no tokens
    path = tmp_path / "t.jsonl"
    path.write_text(recorded.to_json() + "\n")
    replayed = run_episode(env, ReplayPolicy(path), tasks[2], AgentConfig(max_turns=12))
    assert replayed.actions() == recorded.actions() and replayed.resolved


def test_an_episode_runs_in_a_made_env_behind_gymnasium_wrappers(tasks):
    task = tasks[0]
    # make() adds OrderEnforcing and PassiveEnvChecker; the env's own budget (2 turns) is overridden.
    made = gymnasium.make("forager/SWE-v0", tasks=[], runtime="docker", max_turns=2)
    wrapped = gymnasium.wrappers.RecordEpisodeStatistics(made)
    try:
        trajectory = run_episode(wrapped, ReferencePolicy(), task, AgentConfig(max_turns=12))
    finally:
        wrapped.close()
    assert trajectory.termination == "submitted" and trajectory.resolved and trajectory.reward == 1.0, trajectory.error
    assert [m.role for m in trajectory.messages[:2]] == ["system", "user"]
    assert trajectory.messages[0].content.startswith("You are an expert software engineer")
    assert task.problem_statement.strip()[:40] in trajectory.messages[1].content
    assert "12 turns" in trajectory.messages[1].content  # the agent's budget, not the env's own
    assert [a["name"] for a in trajectory.actions()] == [c.name for c in reference_actions(task)]
    assert trajectory.num_turns == len(reference_actions(task)) == len(trajectory.messages[2:]) // 2
    assert trajectory.reward_details["resolution"] == "FULL" and "log_tail" in trajectory.reward_details
    assert "log" not in trajectory.reward_details
    assert trajectory.diff and trajectory.finished_at and trajectory.timings["grade"] > 0
    assert list(wrapped.length_queue) == [trajectory.num_turns] and list(wrapped.return_queue) == [1.0]


def test_trajectory_files_written_before_the_renames_still_load():
    message = {"role": "assistant", "content": "<tool: submit>\n</tool>",
               "tool_call": {"name": "submit", "arguments": {}}}
    old = json.dumps({"trajectory_id": "a#0", "task_id": "a", "messages": [message],
                      "reward_details": {"report": "FULL", "reward": 1.0, "resolved": True, "log_tail": "ok"}})
    trajectory = Trajectory.from_json(old)
    assert trajectory.messages[0].action == {"name": "submit", "arguments": {}}
    assert trajectory.actions() == [{"name": "submit", "arguments": {}}]
    assert '"action":' in trajectory.to_json() and '"tool_call":' not in trajectory.to_json()
    result = RewardResult.from_dict(trajectory.reward_details)
    assert result.resolution == "FULL" and result.log == "ok"


def test_prompts_come_from_configuration(tasks, env, tmp_path):
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("agent:\n  system_prompt: 'SYSTEM for {repo} in {workdir}. {tool_help}'\n"
                           "  task_prompt: 'TASK {instance_id}: {problem_statement}'\n  max_turns: 7\n")
    config = load_agent_config(config_file)
    assert config.max_turns == 7
    trajectory = run_episode(env, ReferencePolicy(), tasks[0], config)
    assert trajectory.messages[0].content.startswith("SYSTEM for forager/semverkit in /repo. Reply with")
    assert trajectory.messages[1].content.startswith(f"TASK {tasks[0].instance_id}: ")
    shipped = load_agent_config(Path(__file__).parents[1] / "configs" / "agent-cwm.yaml")
    assert (shipped.max_turns, shipped.max_context_tokens) == (128, 131072)
    config_file.write_text("agent:\n  task_prompt: 'fix {issue}'\n")
    with pytest.raises(ForagerError, match=r"unknown field\(s\) \['issue'\]"):
        load_agent_config(config_file)
    config_file.write_text("agent:\n  max_turns: lots\n")
    with pytest.raises(ForagerError, match="max_turns"):
        load_agent_config(config_file)


def test_trajectory_files_survive_a_torn_last_line(tmp_path, tasks):
    from forager.trajectories.store import TrajectoryWriter

    t = Trajectory(trajectory_id="a#0", task_id="a")
    with TrajectoryWriter(tmp_path) as writer:
        writer.append(t)
        with pytest.raises(ForagerError, match="another process"):
            TrajectoryWriter(tmp_path)
    with (tmp_path / "trajectories.jsonl").open("a") as handle:
        handle.write(t.to_json()[:40])  # a write torn by a crash
    assert [x.trajectory_id for x in read_trajectories([tmp_path])] == ["a#0"]
    with TrajectoryWriter(tmp_path) as writer:
        assert writer.repaired_bytes == 40 and writer.done() == {("a", 0)}
        writer.append(Trajectory(trajectory_id="a#1", task_id="a", sample=1))
    assert [x.trajectory_id for x in read_trajectories([tmp_path])] == ["a#0", "a#1"]
    (tmp_path / "trajectories.jsonl").write_text(t.to_json() + '\n{"not": "a trajectory"}\n')
    with pytest.raises(ForagerError, match=r"trajectories.jsonl:2: not a trajectory: .*trajectory_id: Field required"):
        read_trajectories([tmp_path])
    assert [x.trajectory_id for x in read_trajectories([tmp_path], strict=False)] == ["a#0"]


def test_a_tiny_local_transformers_model_drives_an_episode(tasks, env):
    pytest.importorskip("torch", reason="the hf policy needs torch and transformers (the dev extra installs them)")
    from forager.policies.hf import HFPolicy
    from forager.testing.tiny_model import build_tiny_model

    policy = HFPolicy(build_tiny_model(), temperature=1.0, seed=0, max_tokens=48)
    trajectory = run_episode(env, policy, tasks[0], AgentConfig(max_turns=3, max_tokens_per_turn=48,
                                                                max_context_tokens=4096))
    # Random weights say nothing useful: each turn is malformed or a harmless command, then the budget ends.
    assert trajectory.termination in ("out_of_turns", "submitted"), trajectory.error
    assert 1 <= trajectory.num_turns <= 3 and trajectory.trainable
    assert trajectory.policy["name"] == "hf"
    ids, mask, logprobs = trajectory.token_sequence()
    tokenizer = policy.tokenizer
    # The exact tokens: every assistant turn decodes to its text, and the whole sequence is the prompt
    # the model saw at its last turn followed by what it sampled.
    assistant = [m for m in trajectory.messages if m.role == "assistant"]
    for message in assistant:
        assert tokenizer.decode(message.token_ids, skip_special_tokens=True) == message.content
        assert len(message.logprobs) == len(message.token_ids) and all(lp <= 0 for lp in message.logprobs)
    assert sum(mask) == sum(len(m.token_ids) for m in assistant)
    rendered = tokenizer.apply_chat_template([m.chat() for m in trajectory.messages[:2]],
                                             add_generation_prompt=True, tokenize=False)
    first_prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[: len(first_prompt)] == first_prompt
