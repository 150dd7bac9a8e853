"""Forager: an open gym for training and evaluating software-engineering agents with RL."""

from forager.core import Observation, Task, load_tasks
from forager.envs import ENV_ID, SWEEnv  # registers forager/SWE-v0

__version__ = "0.1.0"
__all__ = ["ENV_ID", "Observation", "SWEEnv", "Task", "load_tasks", "__version__"]
