"""Forager: an open gym for training and evaluating software-engineering agents with RL."""

from forager.core import Observation, Task, load_tasks

__version__ = "0.1.0"
__all__ = ["Observation", "Task", "load_tasks", "__version__"]
