"""The task cursor: which task each group samples, which groups are open, and a small state to resume from.

Group n samples task `order(epoch)[n % len(tasks)]` with `epoch = n // len(tasks)`: every task once per
epoch, in an order shuffled by the seed, so a run's sequence of groups is fixed by its tasks and seed. The
G episodes of group n are samples `epoch * G + k` (k = 0..G-1) of their task, so every trajectory id
(`task#sample`, as the agent loop names it) is unique in the run.

`state()` is a small JSON-able dict for the loop's checkpoint: the groups started and finished, the groups
open (started, not finished: run again first on resume), the ids of their members already done, and the
store offset from which those members (and anything later) can be read back. On resume, a member whose
trajectory is already in the store is taken from it instead of being sampled again.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forager.core import ForagerError, Task, Trajectory, task_id_of
from forager.train.buffer import Group


@dataclass
class OpenGroup:
    """A group being sampled: its task, the sample number of each slot, the slots not handed out, those ended."""

    index: int
    task: Task | str
    """A Task of forager/SWE-v0, or a plug-in env's task id."""
    samples: list[int]
    todo: list[int]
    store_offset: int
    """The store's size when the group opened: its members are appended after it."""
    ended: dict[int, Trajectory | None] = field(default_factory=dict)
    """Slot -> its trajectory, or None when the infrastructure failed the episode."""

    def trajectory_id(self, slot: int) -> str:
        return f"{task_id_of(self.task)}#{self.samples[slot]}"


class TaskCursor:
    """Hands out the groups' episode slots in the run's fixed order; thread-safe; resumable from `state()`."""

    def __init__(self, tasks: Sequence[Task] | Sequence[str], group_size: int, *, seed: int = 0,
                 state: Mapping[str, Any] | None = None, stored: Mapping[str, Trajectory] | None = None) -> None:
        """`stored`: trajectories already in the run's store, by id (from `state["store_offset"]` on)."""
        ids = [task_id_of(task) for task in tasks]
        if not ids:
            raise ForagerError("no tasks to train on: check env.tasks (and env.limit)")
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise ForagerError(f"task ids must be unique; repeated: {', '.join(repeated[:5])}")
        self.tasks, self.group_size, self.seed = list(tasks), group_size, seed
        self._lock = threading.Lock()
        self._orders: dict[int, list[int]] = {}
        self._next = 0
        self._finished = 0
        self._open: dict[int, OpenGroup] = {}
        self._reopen: list[int] = []
        self._stored = dict(stored or {})
        if state:
            self._restore(state)

    def order(self, epoch: int) -> list[int]:
        """Task indices in the order the groups of `epoch` take them."""
        if epoch not in self._orders:
            self._orders[epoch] = random.Random(f"{self.seed}:{epoch}").sample(range(len(self.tasks)), len(self.tasks))
        return self._orders[epoch]

    def task_of(self, index: int) -> tuple[Task | str, int]:
        """Group `index`'s task and epoch."""
        epoch, position = divmod(index, len(self.tasks))
        return self.tasks[self.order(epoch)[position]], epoch

    # -- handing out slots -----------------------------------------------------------------------------
    def take_slot(self) -> tuple[OpenGroup, int] | None:
        """The next slot of an open group, or None when every open group's slots are handed out."""
        with self._lock:
            for group in self._open.values():
                if group.todo:
                    return group, group.todo.pop(0)
        return None

    def open_group(self, store_offset: int) -> tuple[OpenGroup, int | None]:
        """Open the next group (one to run again first) and take its first slot; None: nothing left to sample
        (every member was in the store), so the group is complete: hand it to `record` with no trajectory."""
        with self._lock:
            if self._reopen:
                index = self._reopen.pop(0)
            else:
                index, self._next = self._next, self._next + 1
            task, epoch = self.task_of(index)
            samples = [epoch * self.group_size + k for k in range(self.group_size)]
            group = OpenGroup(index, task, samples, list(range(self.group_size)), store_offset)
            for slot in range(self.group_size):
                stored = self._stored.pop(group.trajectory_id(slot), None)
                if stored is not None:
                    group.ended[slot] = stored
                    group.todo.remove(slot)
            self._open[index] = group
            return group, (group.todo.pop(0) if group.todo else None)

    def record(self, group: OpenGroup, slot: int | None, trajectory: Trajectory | None,
               infrastructure: bool = False) -> Group | None:
        """Slot `slot` of `group` ended with `trajectory`; the finished Group once all G have ended."""
        with self._lock:
            if slot is not None:
                group.ended[slot] = None if infrastructure else trajectory
            if len(group.ended) < self.group_size:
                return None
            del self._open[group.index]
            self._finished += 1
        kept = [t for _, t in sorted(group.ended.items()) if t is not None]
        return Group(task_id_of(group.task), group.index, kept, self.group_size - len(kept))

    def open_groups(self) -> list[OpenGroup]:
        """Groups started and not finished (each was admitted by the buffer)."""
        with self._lock:
            return list(self._open.values())

    # -- state -------------------------------------------------------------------------------------------
    def state(self, store_size: int) -> dict[str, Any]:
        """The cursor as a small dict for a checkpoint; `store_size`: the run's store's size now."""
        with self._lock:
            open_groups = sorted([*self._open, *self._reopen])
            done = sorted(group.trajectory_id(slot) for group in self._open.values()
                          for slot, t in group.ended.items() if t is not None)
            offset = min((g.store_offset for g in self._open.values()), default=store_size)
            return {"seed": self.seed, "tasks": len(self.tasks), "group_size": self.group_size,
                    "groups_started": self._next, "groups_finished": self._finished, "open_groups": open_groups,
                    "trajectories_done": done, "store_offset": offset}

    def _restore(self, state: Mapping[str, Any]) -> None:
        mine = {"seed": self.seed, "tasks": len(self.tasks), "group_size": self.group_size}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ForagerError(f"the saved task cursor is for another run ({theirs}, this one: {mine}): resume with "
                               "the same tasks, seed and rollout.group_size, or start a new out_dir")
        self._next = int(state["groups_started"])
        self._finished = int(state["groups_finished"])
        self._reopen = [int(index) for index in state.get("open_groups", [])]
