"""code-contests: the sandboxed judge and whole episodes through the agent loop, in real containers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forager.agent.loop import run_episode
from forager.agent.text_envs import make_text_env
from forager.policies.openai import OpenAIPolicy
from forager.runtime.docker import docker_available
from forager.testing import OpenAIServer
from forager.testing.openai_server import episode
from forager_envs.code_contests import CodeContestsEnv, Judge, extract_program, load_problems

pytestmark = pytest.mark.skipif(not docker_available(), reason="needs a Docker engine and forager/base:latest")

ADD = {"id": "add", "title": "Add", "statement": "Read two integers a and b; print a + b.", "time_limit_s": 1,
       "memory_mb": 64, "difficulty": "easy", "solution": "a, b = map(int, input().split())\nprint(a + b)\n",
       "examples": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}],
       "tests": [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in [(0, 0), (-3, 3), (10**18, 1), (7, 8)]]}


def code(program: str, submit: bool = False) -> str:
    return f"Here it is{' - SUBMIT' if submit else ''}:\n```python\n{program}```\n"


@pytest.fixture(scope="module")
def judge():
    j = Judge(warm=2)
    yield j
    j.close()


def test_the_judge_tells_ok_wrong_slow_memory_hungry_crashing_and_offline(judge: Judge) -> None:
    tests = ADD["tests"][:1]
    programs = {
        "OK": ADD["solution"],
        "WA": "print(42)\n",
        "TLE": "while True:\n    pass\n",
        "MLE": "x = bytearray(512 << 20)\nprint(0)\n",
        "RE": "raise SystemExit(3)\n",
    }
    for verdict, program in programs.items():
        assert judge.run(program, tests, 1, 64)[0]["verdict"] == verdict, verdict
    offline = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint(0)\n"
    result = judge.run(offline, tests, 3, 64)[0]
    assert result["verdict"] == "RE" and ("unreachable" in result["error"] or "OSError" in result["error"])


def test_reference_solutions_pass_their_hidden_tests_in_the_sandbox(judge: Judge) -> None:
    problems = load_problems()
    assert len(problems) >= 30
    for problem in list(problems.values())[::4]:  # every fourth; bench/code_contests.py judges them all
        verdicts = judge.run(problem["solution"], problem["examples"] + problem["tests"], problem["time_limit_s"],
                             problem["memory_mb"])
        assert [v["verdict"] for v in verdicts] == ["OK"] * len(verdicts), problem["id"]


def test_a_multi_turn_episode_tries_the_examples_then_submits(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(ADD) + "\n")
    env = CodeContestsEnv(problems=path)
    replies = [code("a, b = map(int, input().split())\nprint(a - b)\n"), code(ADD["solution"], submit=True)]
    with OpenAIServer(episode(replies)) as server:
        trajectory = run_episode(env, OpenAIPolicy(server.base_url, model="toy-model"), "add")
    env.close()
    assert trajectory.termination == "submitted" and trajectory.resolved and trajectory.reward == 1.0
    feedback = trajectory.messages[3].content  # the examples' verdicts after the first reply
    assert "example 1: WA" in feedback and "expected:\n3" in feedback and "got:\n-1" in feedback
    assert trajectory.reward_details["passed"] == 4 and trajectory.reward_details["sandbox_s"] > 0
    assert "10**18" not in json.dumps([m.content for m in trajectory.messages])  # hidden tests stay hidden


def test_single_turn_judges_the_first_reply_and_a_reply_without_code_scores_nothing() -> None:
    env = make_text_env("forager/CodeContests-SingleTurn-v0")
    problem_id = env.unwrapped.task_ids[0]
    wrong = code("print('no idea')\n")
    with OpenAIServer(episode([wrong])) as server:
        trajectory = run_episode(env, OpenAIPolicy(server.base_url, model="toy-model"), problem_id)
    assert trajectory.termination == "submitted" and trajectory.reward == 0.0 and not trajectory.resolved
    assert trajectory.num_turns == 1 and "WA" in trajectory.reward_details["verdicts"]
    obs, _ = env.reset(options={"task": problem_id})
    _, reward, terminated, _, info = env.step("I would rather not.")
    assert terminated and reward == 0.0 and info["reward_details"]["error"] == "no ```python block in the reply"
    env.close()
    assert extract_program("```py\nprint(1)\n```\nthen\n```python\nprint(2)\n```") == "print(2)\n"


def test_a_program_cannot_read_the_expected_outputs_nor_outlive_its_test(judge: Judge) -> None:
    """The judge in the container never holds the answers; a program that looks for them finds none, and a
    process it leaves behind (even in a session of its own) is killed before the next test starts."""
    snoop = ("import glob\nseen = []\nfor path in glob.glob('/tmp/**', recursive=True):\n"
             "    try:\n        seen.append(open(path, errors='replace').read())\n    except OSError:\n        pass\n"
             "print('FOUND' if any('4242' + '42' in text for text in seen) else 'none')\n")  # not in its own text
    assert judge.run(snoop, [{"input": "1 2\n", "output": "424242\n"}], 2, 64)[0]["output"].strip() == "none"
    linger = ("import os, sys, time\n"
              "if sys.stdin.read().strip() == 'first':\n"
              "    if os.fork() == 0:\n        os.setsid()\n        os.close(1)\n        os.close(2)\n        time.sleep(1)\n"
              "        open('/tmp/late', 'w').write('x')\n        os._exit(0)\n    print('ok')\n"
              "else:\n    time.sleep(2)\n    print('late' if os.path.exists('/tmp/late') else 'ok')\n")
    tests = [{"input": "first\n", "output": "ok\n"}, {"input": "second\n", "output": "ok\n"}]
    verdicts = judge.run(linger, tests, 4, 64)
    assert [v["verdict"] for v in verdicts] == ["OK", "OK"], verdicts
