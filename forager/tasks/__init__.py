"""Tasks: the store (JSONL, JSON, Parquet, swebench and SWE-smith rows, hub datasets), generation
(mutate-fix, issue-fix mining), checkout into a runtime and validation.

Reading and writing task files (`load_tasks`, `write_tasks`) needs neither Docker nor gymnasium.
"""

from forager.tasks.store import load_tasks, write_tasks

__all__ = ["load_tasks", "write_tasks"]
