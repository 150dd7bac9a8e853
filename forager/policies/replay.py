"""The replay policy: acts out the assistant messages of recorded trajectories, tokens included."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forager.core import Message, PolicyError, PolicyOutput, Task, Trajectory


class ReplayPolicy:
    """Replays, for each task, the assistant turns of one recorded trajectory (sample 0 by default).

    Useful to re-grade old episodes against new images or graders, and to check that an episode is
    reproducible. Past the end of the recording it submits.
    """

    name = "replay"

    def __init__(self, trajectories: Iterable[Trajectory] | str | Path, sample: int | None = None) -> None:
        if isinstance(trajectories, (str, Path)):
            from forager.trajectories.store import read_trajectories

            trajectories = read_trajectories([trajectories])
        self.recorded: dict[str, Trajectory] = {}
        for trajectory in trajectories:
            if sample is not None and trajectory.sample != sample:
                continue
            self.recorded.setdefault(trajectory.task_id, trajectory)
        if not self.recorded:
            raise PolicyError("the replay policy got no trajectories to replay")
        self.policy_version = 0

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        started = time.monotonic()
        if task is None or task.instance_id not in self.recorded:
            raise PolicyError(f"no recorded trajectory for task {task.instance_id if task else None!r}")
        turns = [m for m in self.recorded[task.instance_id].messages if m.role == "assistant"]
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn >= len(turns):
            return PolicyOutput(text="<tool: submit>\n</tool>", latency_s=time.monotonic() - started)
        recorded = turns[turn]
        return PolicyOutput(
            text=recorded.content, token_ids=recorded.token_ids, logprobs=recorded.logprobs,
            finish_reason=recorded.finish_reason or "stop", policy_version=recorded.policy_version or 0,
            tool_calls=recorded.tool_calls, latency_s=time.monotonic() - started,
        )
