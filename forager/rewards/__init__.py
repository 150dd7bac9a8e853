"""Test-pass rewards: apply the agent's diff in a fresh runtime, run FAIL_TO_PASS and PASS_TO_PASS, grade."""

from forager.rewards.grading import RewardConfig, RewardResult, grade_patch, parse_pytest_report

__all__ = ["RewardConfig", "RewardResult", "grade_patch", "parse_pytest_report"]
