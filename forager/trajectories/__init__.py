"""Trajectories at rest: the store (atomic appends, resumable), near-dedup, SFT export and the HTML viewer.

Depends on `forager.core` and `forager.files` only, so replay, the trainer and the evaluation read
trajectories without importing the agent, the envs or Docker.
"""

from forager.trajectories.store import TrajectoryFileError, TrajectoryWriter, read_trajectories, trajectory_files

__all__ = ["TrajectoryFileError", "TrajectoryWriter", "read_trajectories", "trajectory_files"]
