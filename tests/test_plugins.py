"""Plug-ins: entry points and folders, Gymnasium registration, the list commands, bad plug-ins, and the
example environment of examples/custom-env driven by `forager collect --env` through a real HTTP policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forager.plugins import discover
from forager.testing import OpenAIServer
from forager.testing.openai_server import assistant_turns, by_conversation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom-env"
SOLUTIONS = {"Create hello.txt": ["echo hello > hello.txt"], "Make run.sh": ["chmod +x run.sh"],
             "Sort names.txt": ["sort names.txt > sorted.txt"]}


def _forager(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forager", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "acme_echo.py").write_text(textwrap.dedent('''
        """Test plug-ins: an env, a policy and a reward."""
        import gymnasium

        ENTRY_POINTS = {"forager.envs": {"acme/Echo-v0": "acme_echo:EchoEnv"},
                        "forager.policies": {"acme-done": "acme_echo:DonePolicy"},
                        "forager.rewards": {"acme-bonus": "acme_echo:bonus"}}


        class EchoEnv(gymnasium.Env):
            """Says back what you say; reward 1 for `done`."""

            observation_space = action_space = gymnasium.spaces.Text(100)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                if (options or {}).get("task") == "broken":
                    raise KeyError("no such echo")
                return "say done", {"task_id": "echo"}

            def step(self, action):
                if action == "crash":
                    raise ValueError("the echo env broke")
                if action == "nan":
                    return "", "not a number", True, False, {}
                return action, float(action == "done"), True, False, {}


        class DonePolicy:
            """Always says done."""


        def bonus(context, reward):
            """One more point."""
            return reward + 1
    '''))
    (folder / "broken_plugin.py").write_text("import no_such_module_anywhere\n")
    return folder


def test_a_folder_of_plugins_registers_its_env_and_reports_the_broken_module(plugin_folder: Path) -> None:
    import gymnasium

    from forager.plugins import register_env_plugins

    plugins = discover([plugin_folder], refresh=True)
    assert {(p.kind, p.name) for p in plugins.found} >= {("envs", "acme/Echo-v0"), ("policies", "acme-done"),
                                                          ("rewards", "acme-bonus")}
    broken, = [b for b in plugins.broken if b.name == "broken_plugin"]
    assert "no_such_module_anywhere" in broken.error
    assert plugins.get("envs", "acme/Echo-v0").description() == "Says back what you say; reward 1 for `done`."
    register_env_plugins([plugin_folder])
    env = gymnasium.make("acme/Echo-v0")
    assert env.reset()[0] == "say done" and env.step("done")[1] == 1.0
    with pytest.raises(Exception, match="did you mean acme/Echo-v0"):
        plugins.get("envs", "acme/Echo-v1")


def test_the_list_commands_show_builtins_plugins_and_failures(plugin_folder: Path) -> None:
    envs = _forager("--plugins", str(plugin_folder), "envs", "list")
    assert envs.returncode == 0, envs.stdout + envs.stderr
    assert "forager/SWE-v0" in envs.stdout and "acme/Echo-v0" in envs.stdout and "Says back what you say" in envs.stdout
    assert "failed:" in envs.stdout and "no_such_module_anywhere" in envs.stdout
    policies = _forager("policies", "list", env={"FORAGER_PLUGINS": str(plugin_folder)})
    assert "reference" in policies.stdout and "acme-done" in policies.stdout and "Always says done" in policies.stdout
    rewards = _forager("--plugins", str(plugin_folder), "rewards", "list")
    assert "acme-bonus" in rewards.stdout and "One more point" in rewards.stdout


def test_an_unknown_env_lists_close_ids_and_a_raising_or_lying_env_ends_the_episode(plugin_folder: Path,
                                                                                    tmp_path: Path) -> None:
    bad = _forager("--plugins", str(plugin_folder), "collect", "--env", "acme/Echo-v9", "--episodes", "1",
                   "--out", str(tmp_path / "none"))
    assert bad.returncode == 1 and "unknown environment 'acme/Echo-v9'; did you mean acme/Echo-v0" in bad.stdout

    from forager.agent.text_envs import make_text_env
    from forager.agent.loop import run_episode
    from forager.plugins import register_env_plugins
    from forager.policies.openai import OpenAIPolicy

    register_env_plugins([plugin_folder])
    for reply, error in (("crash", "ValueError: the echo env broke"), ("nan", "not a finite number: 'not a number'")):
        with OpenAIServer(reply) as server:
            trajectory = run_episode(make_text_env("acme/Echo-v0"), OpenAIPolicy(server.base_url, model="toy-model"),
                                     "echo")
        assert trajectory.termination == "env_error" and error in (trajectory.error or "")
        assert "acme/Echo-v0" in trajectory.error
        assert ("Traceback" in trajectory.error) == (reply == "crash")
    with OpenAIServer("done") as server:
        broken = run_episode(make_text_env("acme/Echo-v0"), OpenAIPolicy(server.base_url, model="toy-model"), "broken")
    assert broken.termination == "env_error" and "Traceback" in broken.error and "no such echo" in broken.error


def test_the_example_env_is_at_most_50_lines_and_passes_check_env() -> None:
    source = (EXAMPLE / "fix_command.py").read_text()
    assert len(source.splitlines()) <= 50
    sys.path.insert(0, str(EXAMPLE))
    try:
        from gymnasium.utils.env_checker import check_env

        import fix_command

        check_env(fix_command.FixCommandEnv(), skip_render_check=True)
    finally:
        sys.path.remove(str(EXAMPLE))


def _solver(messages: list[dict]) -> str:
    """The right commands for the task quoted in the conversation, then `submit`."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    steps = next(commands for goal, commands in SOLUTIONS.items() if prompt.startswith(goal))
    turn = assistant_turns(messages)
    return steps[turn] if turn < len(steps) else "submit"


def test_the_example_installed_from_its_folder_collects_through_forager_collect(tmp_path: Path) -> None:
    """Installed as a package (its entry point) into a fresh target, found by `forager collect --env`, two
    episodes resolved through a real HTTP policy, the store written as for any collection."""
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    listed = _forager("envs", "list", env=env)
    assert "example/FixCommand-v0" in listed.stdout and "package forager-example-fix-command" in listed.stdout
    with OpenAIServer(by_conversation(_solver)) as server:
        run = _forager("collect", "--env", "example/FixCommand-v0", "--episodes", "2", "--policy", "openai",
                       "--base-url", server.base_url, "--model", "toy-model", "--workers", "2",
                       "--out", str(tmp_path / "out"), env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()]
    assert sorted(t["task_id"] for t in lines) == ["executable", "hello-file"]
    assert all(t["resolved"] and t["reward"] == 1.0 and t["termination"] == "submitted" for t in lines)
    assert all(t["kind"] == "example/FixCommand-v0" and t["messages"][0]["role"] == "system" for t in lines)


def test_two_steps_of_the_tiny_cpu_trainer_on_the_example_env(tmp_path: Path) -> None:
    """`env.id` names the plug-in: its task ids are the tasks, its rewards train the tiny model."""
    pytest.importorskip("torch")
    from forager.testing.tiny_model import build_tiny_model

    out = tmp_path / "run"
    run = _forager("--plugins", str(EXAMPLE), "train", "--config", str(ROOT / "configs" / "train" / "tiny-cpu.yaml"),
                   "--out", str(out), f"model.path={build_tiny_model()}", "env.id=example/FixCommand-v0",
                   "learner.steps=2", env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    episodes = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(episodes) >= 4 and {e["kind"] for e in episodes} == {"example/FixCommand-v0"}
    assert {e["task_id"] for e in episodes} <= {"executable", "hello-file", "sorted"}
    assert all(e["termination"] in ("submitted", "out_of_turns", "out_of_context") for e in episodes)


def test_rewards_stack_on_the_grader_and_a_plugin_reward_must_return_a_number(plugin_folder: Path) -> None:
    from forager.core import ForagerError, Task
    from forager.plugins import discover
    from forager.rewards.functions import RewardContext, RewardSpec
    from forager.rewards.grading import RewardConfig, RewardResult

    discover([plugin_folder], refresh=True)
    os.environ["FORAGER_PLUGINS"] = str(plugin_folder)
    try:
        fix = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"
        task = Task(instance_id="t", image="i", base_commit="HEAD", problem_statement="p", patch=fix,
                    FAIL_TO_PASS=["test_x.py::test_a"])
        config = RewardConfig(unresolved=-1.0)
        passed = RewardResult(reward=1.0, resolved=True, resolution="FULL")
        context = RewardContext(task, task.patch, passed, config, turns=20, action_errors=2)
        spec, fields = RewardSpec.split({"unresolved": -1.0, "shaping": [
            {"name": "format-penalty", "per_error": 0.1},
            {"name": "length-penalty", "per_turn": 0.05, "free_turns": 18}, {"name": "acme-bonus"}]})
        assert fields == {"unresolved": -1.0}
        reward, parts = spec(context)
        assert parts == pytest.approx({"test-pass": 1.0, "format-penalty": 0.8, "length-penalty": 0.7,
                                       "acme-bonus": 1.7})
        assert reward == pytest.approx(1.7)
        # The fallback: a task without tests is judged by the patch's likeness to the reference fix.
        failed = RewardResult(reward=-1.0, resolved=False, resolution="NO", error="the test run crashed")
        untested = task.model_copy(update={"FAIL_TO_PASS": [], "PASS_TO_PASS": []})
        similar, _ = RewardSpec("patch-similarity")(RewardContext(untested, task.patch, failed, config))
        unlike, _ = RewardSpec("patch-similarity")(RewardContext(untested, "+b = 3\n", failed, config))
        assert (similar, unlike) == (1.0, -1.0)
        # A task with tests never falls back, even when the run failed: the policy could make it fail on purpose.
        assert RewardSpec("patch-similarity")(RewardContext(task, task.patch, failed, config))[0] == -1.0
        with pytest.raises(ForagerError, match="did you mean format-penalty"):
            RewardSpec.split({"shaping": [{"name": "format-penalt"}]})
        (plugin_folder / "liar.py").write_text('ENTRY_POINTS = {"forager.rewards": {"liar": "liar:liar"}}\n'
                                               'def liar(context):\n    return "full marks"\n')
        discover(refresh=True)
        with pytest.raises(ForagerError, match="reward 'liar' returned 'full marks' \\(str\\), not a finite number"):
            RewardSpec("liar")(context)
    finally:
        del os.environ["FORAGER_PLUGINS"]
        discover(refresh=True)


def test_an_env_stacks_shaping_on_its_graded_reward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """forager/SWE-v0 with a format penalty: a malformed action, then the fix: 1 - 0.25."""
    import tempfile

    import gymnasium

    from forager.images.sample import sample_tasks

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local runtime's scratch clone goes here
    task = sample_tasks(None)[0]
    env = gymnasium.make("forager/SWE-v0", task=task, runtime="local", max_turns=5, reward={
        "shaping": [{"name": "format-penalty", "per_error": 0.25}]}).unwrapped
    try:
        env.reset()
        assert env.step("no tool call here")[0].startswith("Error:")
        env.runtime.write_file("fix.patch", task.patch)
        env.runtime.run_checked("git apply fix.patch && rm fix.patch")
        _, reward, terminated, _, info = env.step("<tool: submit>\n</tool>")
    finally:
        env.close()
    assert terminated and info["resolved"] and reward == pytest.approx(0.75)
    assert info["reward_details"]["reward_parts"] == pytest.approx({"test-pass": 1.0, "format-penalty": 0.75})
