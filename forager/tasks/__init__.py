"""Tasks: loading, and putting a task's repository in its starting state."""

from forager.tasks.checkout import checkout_task

__all__ = ["checkout_task"]
