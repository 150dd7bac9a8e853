"""code-contests: programs judged on hidden tests in a sandbox (see README.md)."""

from .env import CodeContestsEnv, Judge, SingleTurnCodeContestsEnv, extract_program, load_problems

__all__ = ["CodeContestsEnv", "Judge", "SingleTurnCodeContestsEnv", "extract_program", "load_problems"]
