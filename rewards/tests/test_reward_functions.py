"""The rewards Forager ships: each function's arithmetic, found by name through the entry points, stacked
by RewardSpec, told apart by role, and a wrong name answered with the close ones."""

from __future__ import annotations

import pytest

from forager.core import ForagerError, Task
from forager.plugins import discover
from forager.rewards.functions import DEFAULT_REWARD, RewardContext, RewardSpec, load_reward, reward_role
from forager.rewards.grading import RewardConfig, RewardResult
from forager_rewards import outcome  # not `from ... import tests_passed`: pytest would collect it as a test
from forager_rewards.outcome import changed_lines, patch_similarity
from forager_rewards.shaping import format_penalty, length_penalty

FIX = "--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n-a = 1\n+a = 2\n b = 1\n"
TASK = Task(instance_id="t", image="i", base_commit="HEAD", problem_statement="p", patch=FIX,
            FAIL_TO_PASS=["test_x.py::test_a"])
UNTESTED = TASK.model_copy(update={"FAIL_TO_PASS": [], "PASS_TO_PASS": []})
CONFIG = RewardConfig(resolved=1.0, unresolved=-1.0)
PASSED = RewardResult(reward=1.0, resolved=True, resolution="FULL")
FAILED = RewardResult(reward=-1.0, resolved=False, resolution="NO", error="the test run crashed")
SHIPPED = {"test-pass": "reward", "patch-similarity": "reward", "format-penalty": "shaping",
           "length-penalty": "shaping"}


def context(task: Task = TASK, diff: str = FIX, result: RewardResult = PASSED, turns: int = 0,
            action_errors: int = 0) -> RewardContext:
    return RewardContext(task, diff, result, CONFIG, turns=turns, action_errors=action_errors)


def test_the_shipped_rewards_are_entry_points_of_forager_with_their_roles() -> None:
    found = {p.name: p for p in discover(refresh=True).of("rewards") if p.target.startswith("forager_rewards.")}
    assert set(found) == set(SHIPPED)
    assert all(p.origin.startswith("package forager ") for p in found.values())
    assert {name: reward_role(p.load()) for name, p in found.items()} == SHIPPED
    assert DEFAULT_REWARD == "test-pass" and RewardSpec().function == "test-pass"


def test_test_pass_is_the_graders_own_verdict() -> None:
    assert outcome.tests_passed(context(result=PASSED)) == 1.0
    assert outcome.tests_passed(context(result=FAILED)) == -1.0
    assert RewardSpec()(context(result=FAILED)) == (-1.0, {"test-pass": -1.0})


def test_patch_similarity_compares_changed_lines_above_a_threshold() -> None:
    assert changed_lines(FIX) == ["-a = 1", "+a = 2"]
    assert patch_similarity(context(UNTESTED, FIX, FAILED)) == 1.0
    assert patch_similarity(context(UNTESTED, "+b = 3\n", FAILED)) == -1.0
    half = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 3\n"  # one of the two changed lines: ratio 0.5
    assert patch_similarity(context(UNTESTED, half, FAILED), threshold=0.5) == 1.0
    assert patch_similarity(context(UNTESTED, half, FAILED), threshold=0.51) == -1.0
    no_reference = UNTESTED.model_copy(update={"patch": ""})
    assert patch_similarity(context(no_reference, "", FAILED), threshold=0.0) == -1.0


def test_patch_similarity_never_overrides_a_task_with_tests() -> None:
    """The reference fix itself, on a task whose test run failed: the tests decide, not the likeness."""
    assert patch_similarity(context(TASK, FIX, FAILED)) == -1.0
    assert patch_similarity(context(TASK, "+nothing alike\n", PASSED)) == 1.0
    assert RewardSpec("patch-similarity", {"threshold": 0.0})(context(TASK, FIX, FAILED))[0] == -1.0


def test_format_penalty_takes_per_error_up_to_most() -> None:
    assert format_penalty(context(action_errors=0), 1.0) == 1.0
    assert format_penalty(context(action_errors=2), 1.0) == pytest.approx(0.8)
    assert format_penalty(context(action_errors=2), 1.0, per_error=0.25) == pytest.approx(0.5)
    assert format_penalty(context(action_errors=9), 1.0) == pytest.approx(0.5)  # at most 0.5
    assert format_penalty(context(action_errors=9), -1.0, most=2.0) == pytest.approx(-1.9)


def test_length_penalty_takes_per_turn_beyond_the_free_turns_up_to_most() -> None:
    assert length_penalty(context(turns=16), 1.0) == 1.0
    assert length_penalty(context(turns=20), 1.0) == pytest.approx(0.96)
    assert length_penalty(context(turns=20), 1.0, per_turn=0.05, free_turns=18) == pytest.approx(0.9)
    assert length_penalty(context(turns=500), 1.0) == pytest.approx(0.5)  # at most 0.5
    assert length_penalty(context(turns=500), 0.0, most=1.0) == pytest.approx(-1.0)


def test_a_config_stacks_shaping_in_order_on_the_reward_function() -> None:
    spec, fields = RewardSpec.split({"unresolved": -1.0, "function": "test-pass", "shaping": [
        {"name": "format-penalty", "per_error": 0.1}, {"name": "length-penalty", "per_turn": 0.05, "free_turns": 18}]})
    assert fields == {"unresolved": -1.0}
    reward, parts = spec(context(turns=20, action_errors=2))
    assert parts == pytest.approx({"test-pass": 1.0, "format-penalty": 0.8, "length-penalty": 0.7})
    assert reward == pytest.approx(0.7)


@pytest.mark.parametrize(("settings", "message"), [
    ({"function": "test-pas"}, "unknown reward 'test-pas'; did you mean test-pass"),
    ({"function": "patch-similarty"}, "did you mean patch-similarity"),
    ({"shaping": [{"name": "lenght-penalty"}]}, "unknown reward shaping 'lenght-penalty'; did you mean length-penalty"),
    ({"function": "format-penalty"}, "'format-penalty' is a shaping term .*list it under reward.shaping"),
    ({"shaping": [{"name": "test-pass"}]}, "'test-pass' is a reward function .*not under reward.shaping"),
])
def test_a_wrong_name_or_role_is_a_clear_error_when_the_config_is_read(settings: dict, message: str) -> None:
    with pytest.raises(ForagerError, match=message):
        RewardSpec.split(settings)


def test_a_module_path_still_names_a_reward_of_ones_own() -> None:
    assert load_reward("forager_rewards.outcome:tests_passed", "reward") is outcome.tests_passed
    assert RewardSpec("forager_rewards.outcome:tests_passed")(context())[0] == 1.0
