"""No action crashes the env: 10,000 generated actions on the local runtime, 300 on Docker.

Every action goes through `SWEEnv.step`; none may raise, every observation must fit the
observation space (and be encodable), and none may end the episode as the environment's fault.
The strategies (forager/testing/fuzz.py) aim at what broke it once. Grading is stubbed: the fuzz
is of the tools and parsers, not of the grader. `bench/fuzz.py` prints the same figures as JSON.
"""

from __future__ import annotations

import gymnasium
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forager.envs  # noqa: F401 - registers forager/SWE-v0
from forager.testing.fuzz import FuzzStats, action_strategy, prepare, step_all
from tests.conftest import HAVE_DOCKER

BATCH = 20
"""Actions per hypothesis example: one env serves them all, so the per-example overhead is small.
(Docker's 300 take smaller batches: hypothesis's first examples are its simplest, so more of them
spread the actions wider.)"""


def _fuzz(kind: str, examples: int, batch: int = BATCH) -> FuzzStats:
    env = gymnasium.make("forager/SWE-v0", runtime=kind, max_turns=10**9, command_timeout=5).unwrapped
    stats = FuzzStats()
    try:
        prepare(env)

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(action_strategy(docker=kind == "docker"), min_size=batch, max_size=batch))
        def run(actions):
            step_all(env, actions, stats)

        run()
        # The env still works after all that: the shell answers, in the repository.
        obs, *_ = env.step("<tool: bash>\necho alive\n</tool>")
        assert "alive" in obs
    finally:
        env.close()
    print(f"\n{kind}: {stats.actions} actions in {stats.seconds:.1f}s ({stats.actions_per_s:.0f}/s), "
          f"slowest {stats.slowest_s:.2f}s, {stats.resets} resets\n{dict(sorted(stats.outcomes.items()))}")
    return stats


def _check(stats: FuzzStats, actions: int) -> None:
    assert stats.actions >= actions
    assert not stats.exceptions, "\n".join(stats.exceptions[:20])
    assert not stats.oversized, "\n".join(stats.oversized[:20])
    assert not stats.env_errors, "\n".join(stats.env_errors[:20])
    assert stats.slowest_s < 15, f"one step took {stats.slowest_s:.1f}s"  # a FIFO once blocked a step 60 s


@pytest.mark.timeout(600)
def test_ten_thousand_actions_never_crash_the_local_env():
    _check(_fuzz("local", 10_000 // BATCH), 10_000)


@pytest.mark.docker
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAVE_DOCKER, reason="needs the sample image")
def test_three_hundred_actions_never_crash_the_docker_env():
    _check(_fuzz("docker", 300 // 5, batch=5), 300)
