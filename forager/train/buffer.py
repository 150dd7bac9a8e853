"""The rollout buffer: finished groups wait here for the learner, which takes them as token-budget batches.

A group is the G episodes of one task, complete when all G have ended (an episode the infrastructure
failed is counted and left out: it says nothing about the policy). The learner's `take_batch` drops what
the staleness bound forbids, computes each group's advantages (`loss.group_advantages`) and returns
`TrainSample`s with the batch's statistics.

Staleness: a trajectory is as old as its oldest sampled turn; one whose oldest turn's version is below
`current_version - max_staleness` is dropped and counted. A group left with fewer than two members is
dropped whole (an advantage needs another member to compare with); a group whose rewards are all equal is
skipped (its advantages are all zero), as CWM does.

Admission: a rollout worker calls `admit()` before it starts a group and `put()` (or `abandon()`) when the
group ends. No group starts while the groups waiting plus those being sampled reach `max_buffered_groups`:
a slow learner stalls the rollouts instead of growing memory, and a group not yet started cannot go stale.

Synchronous mode (`max_staleness` 0): the gate is what the workers pass in `admit`. Groups start until the
waiting ones hold a batch's tokens; the groups in flight finish; `take_batch` then takes every waiting group
(the batch may pass the budget by the groups that were in flight) and closes the gate. It stays closed
while the learner steps and the weights sync, until `resume()`. No episode runs under two versions and no
group outlives its version, so nothing is stale. The gate is passed per group, not per episode: a group
whose episodes straddled a weight update would mix versions.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError, Trajectory
from forager.train.samples import LearnerError, TrainSample
from forager.train.sections import AlgorithmConfig

if TYPE_CHECKING:
    from forager.train.config import TrainConfig

WAKE_S = 0.5
"""Longest a waiter sleeps before it looks at its stop flag again (notifications usually come first)."""


@dataclass
class Group:
    """The G episodes of one task, all ended: the trajectories to train on, and how many the infrastructure failed."""

    task_id: str
    index: int
    """The group's number in the run (the task cursor's order)."""
    trajectories: list[Trajectory]
    infra_failures: int = 0


@dataclass
class BatchStats:
    """What one batch holds and what the rollouts did since the previous batch (episodes, drops)."""

    episodes: int = 0
    reward_sum: float = 0.0
    reward_squares: float = 0.0
    resolved: int = 0
    turns: int = 0
    completion_tokens: int = 0
    terminations: Counter = field(default_factory=Counter)
    infra_failures: int = 0
    groups: int = 0
    samples: int = 0
    tokens: int = 0
    """Every token of the batch's samples (prompts, observations, sampled tokens): what the learner packs."""
    model_tokens: int = 0
    masked: int = 0
    """Episodes left out of the loss by `algorithm.masked_terminations` (their rewards still count in the baseline)."""
    staleness: Counter = field(default_factory=Counter)
    """Samples by lag: the version taken at minus the version of the sample's oldest turn."""
    dropped: Counter = field(default_factory=Counter)
    """Trajectories dropped, by reason: `stale`, `group_too_small`, `untrainable`, `all_masked`."""
    skipped_zero_advantage: int = 0
    """Groups skipped because their rewards were all equal."""
    wait_s: float = 0.0
    """Seconds the learner waited in `take_batch`."""

    def add_episode(self, trajectory: Trajectory) -> None:
        self.episodes += 1
        self.reward_sum += trajectory.reward
        self.reward_squares += trajectory.reward ** 2
        self.resolved += trajectory.resolved
        self.turns += trajectory.num_turns
        self.completion_tokens += trajectory.completion_tokens
        self.terminations[trajectory.termination] += 1

    @property
    def reward_mean(self) -> float:
        return self.reward_sum / self.episodes if self.episodes else 0.0

    @property
    def reward_std(self) -> float:
        if not self.episodes:
            return 0.0
        return math.sqrt(max(0.0, self.reward_squares / self.episodes - self.reward_mean ** 2))

    def metrics(self) -> dict[str, float]:
        """Flat, namespaced numbers for the metrics line (`rollout/...`, `time/rollout_s`)."""
        n = max(self.episodes, 1)
        values: dict[str, float] = {
            "rollout/episodes": self.episodes, "rollout/reward_mean": self.reward_mean,
            "rollout/reward_std": self.reward_std, "rollout/resolved_share": self.resolved / n,
            "rollout/turns_mean": self.turns / n, "rollout/completion_tokens_mean": self.completion_tokens / n,
            "rollout/infra_failures": self.infra_failures, "rollout/groups": self.groups,
            "rollout/samples": self.samples, "rollout/tokens": self.tokens, "rollout/model_tokens": self.model_tokens,
            "rollout/masked": self.masked, "rollout/staleness_max": max(self.staleness, default=0),
            "rollout/staleness_mean": sum(k * v for k, v in self.staleness.items()) / max(self.samples, 1),
            "rollout/dropped_stale": self.dropped["stale"], "rollout/dropped": sum(self.dropped.values()),
            "rollout/skipped_zero_advantage_groups": self.skipped_zero_advantage, "time/rollout_s": self.wait_s,
        }
        values |= {f"rollout/termination/{name}": count for name, count in sorted(self.terminations.items())}
        values |= {f"rollout/dropped/{reason}": count for reason, count in sorted(self.dropped.items())}
        values |= {f"rollout/staleness/{lag}": count for lag, count in sorted(self.staleness.items())}
        return {key: float(value) for key, value in values.items()}


@dataclass
class Batch:
    """The learner's next step: its samples (advantages set), the groups they came from, and the stats."""

    samples: list[TrainSample]
    groups: list[Group]
    stats: BatchStats
    policy_version: int
    """The learner's version when the batch was taken (staleness is measured against it)."""


@dataclass
class _Waiting:
    group: Group
    members: list[tuple[TrainSample, Trajectory]]

    def tokens(self, masked: Sequence[str]) -> int:
        return sum(len(s.token_ids) for s, t in self.members if t.termination not in masked)


class RolloutGate:
    """Open: rollout workers may start groups. Closed (synchronous mode, while the learner steps and the weights
    sync): they wait in `RolloutBuffer.admit`. It shares the buffer's lock, so opening it wakes them."""

    def __init__(self, condition: threading.Condition) -> None:
        self._condition = condition
        self._open = True

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        with self._condition:
            self._open = False

    def open(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()


class RolloutBuffer:
    """Complete groups for the learner, bounded in number, filtered by staleness, taken as token-budget batches."""

    def __init__(self, *, group_size: int, tokens_per_batch: int, max_staleness: int = 0,
                 max_buffered_groups: int = 16, algorithm: AlgorithmConfig | None = None) -> None:
        if group_size < 2 or tokens_per_batch < 1 or max_staleness < 0 or max_buffered_groups < 1:
            raise ForagerError(f"bad rollout buffer settings: group_size {group_size} (>= 2), tokens_per_batch "
                               f"{tokens_per_batch} (>= 1), max_staleness {max_staleness} (>= 0), "
                               f"max_buffered_groups {max_buffered_groups} (>= 1)")
        self.group_size, self.tokens_per_batch = group_size, tokens_per_batch
        self.max_staleness, self.max_buffered_groups = max_staleness, max_buffered_groups
        self.algorithm = algorithm or AlgorithmConfig()
        self.synchronous = max_staleness == 0
        self._condition = threading.Condition()
        self.gate = RolloutGate(self._condition)
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._closed = False
        self._pending = BatchStats()
        self.totals: Counter[str] = Counter()
        """Counts over the whole run: `groups_started`, `groups_put`, `groups_taken`, `episodes`, `samples`,
        `infra_failures`, `skipped_zero_advantage`, and `dropped/<reason>`."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> RolloutBuffer:
        return cls(group_size=config.rollout.group_size, tokens_per_batch=config.learner.tokens_per_batch,
                   max_staleness=config.sync.max_staleness, max_buffered_groups=config.rollout.max_buffered_groups,
                   algorithm=config.algorithm)

    # -- the rollout side ------------------------------------------------------------------------
    def admit(self, stop: threading.Event | None = None) -> bool:
        """Wait until a new group may start (gate open, room in the buffer); False when stopped or closed."""
        with self._condition:
            while not self._admissible():
                if self._closed or (stop is not None and stop.is_set()):
                    return False
                self._condition.wait(WAKE_S)
            self._in_flight += 1
            self.totals["groups_started"] += 1
            return True

    def put(self, group: Group) -> None:
        """A group admitted earlier has ended: keep it for the learner, or count why it cannot be trained on."""
        members, untrainable = [], 0
        for trajectory in group.trajectories:
            try:
                members.append((TrainSample.from_trajectory(trajectory, 0.0), trajectory))
            except LearnerError:
                untrainable += 1
        with self._condition:
            self._release()
            self.totals["groups_put"] += 1
            for trajectory in group.trajectories:
                self._pending.add_episode(trajectory)
            self._pending.infra_failures += group.infra_failures
            self.totals["episodes"] += len(group.trajectories)
            self.totals["infra_failures"] += group.infra_failures
            self._drop("untrainable", untrainable)
            entry = _Waiting(group, members)
            if self._usable(entry):
                self._waiting.append(entry)
            self._condition.notify_all()

    def abandon(self) -> None:
        """A group admitted earlier will not end (the workers stopped): free its place."""
        with self._condition:
            self._release()
            self._condition.notify_all()

    def resume(self) -> None:
        """Open the gate again: in synchronous mode, once the learner has stepped and the engines have its weights."""
        self.gate.open()

    def wake(self) -> None:
        """Wake every waiter, so one whose stop flag is set returns now."""
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        """No group starts any more; `take_batch` returns what is left, then None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def waiting(self) -> int:
        """Groups waiting for the learner."""
        with self._condition:
            return len(self._waiting)

    def waiting_groups(self) -> list[Group]:
        """The groups waiting for the learner (a checkpoint hands them to the resumed run's cursor)."""
        with self._condition:
            return [entry.group for entry in self._waiting]

    @property
    def in_flight(self) -> int:
        """Groups admitted and not yet ended."""
        with self._condition:
            return self._in_flight

    # -- the learner side ------------------------------------------------------------------------
    def take_batch(self, current_version: int, timeout: float | None = None, *, partial: bool = True) -> Batch | None:
        """The next batch at learner version `current_version`: groups up to `tokens_per_batch` (at least one).

        Waits until the waiting groups hold a full batch (or fill the buffer), or `timeout` seconds pass, or the
        buffer is closed; then returns what there is, None if nothing. `partial=False`: a timeout returns None
        unless the batch is full (the training loop's way to wait in slices and still take whole batches).
        Synchronous: waits for the groups in flight too, takes every waiting group and closes the gate (see the
        module's docstring)."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        with self._condition:
            while True:
                self._drop_stale(current_version)
                if self._ready():
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if self._closed or (left is not None and left <= 0):
                    break
                self._condition.wait(WAKE_S if left is None else min(left, WAKE_S))
            if not partial and not self._closed and not self._ready():
                return None
            if self.synchronous and self._waiting:
                self.gate.close()
                self._condition.wait_for(lambda: self._in_flight == 0)
                self._drop_stale(current_version)
            if not self._waiting:
                return None
            chosen = self._choose()
            stats, self._pending = self._pending, BatchStats()
            self._condition.notify_all()  # room for new groups
        return self._build(chosen, stats, current_version, time.monotonic() - started)

    # -- inside the lock ---------------------------------------------------------------------------
    def _release(self) -> None:
        if self._in_flight == 0:
            raise ForagerError("a group ended that was never admitted: call admit() before starting a group")
        self._in_flight -= 1

    def _tokens(self) -> int:
        return sum(entry.tokens(self.algorithm.masked_terminations) for entry in self._waiting)

    def _admissible(self) -> bool:
        if self._closed or not self.gate.is_open:
            return False
        if len(self._waiting) + self._in_flight >= self.max_buffered_groups:
            return False
        return not (self.synchronous and self._tokens() >= self.tokens_per_batch)

    def _ready(self) -> bool:
        full = self._tokens() >= self.tokens_per_batch or len(self._waiting) >= self.max_buffered_groups
        return full and (self._in_flight == 0 or not self.synchronous)

    def _drop(self, reason: str, count: int) -> None:
        if count:
            self._pending.dropped[reason] += count
            self.totals[f"dropped/{reason}"] += count

    def _usable(self, entry: _Waiting) -> bool:
        """Whether a group can still train; if not, count why (its members are dropped, or it is skipped)."""
        members = entry.members
        if len(members) < 2:
            self._drop("group_too_small", len(members))
            return False
        if all(t.termination in self.algorithm.masked_terminations for _, t in members):
            self._drop("all_masked", len(members))
            return False
        rewards = {t.reward for _, t in members}
        if len(rewards) == 1 and self.algorithm.skip_zero_advantage_groups:
            self._pending.skipped_zero_advantage += 1
            self.totals["skipped_zero_advantage"] += 1
            return False
        return True

    def _drop_stale(self, current_version: int) -> None:
        """Drop the trajectories older than the bound, and the groups that leaves unusable."""
        oldest_allowed = current_version - self.max_staleness
        kept = []
        for entry in self._waiting:
            fresh = [(s, t) for s, t in entry.members if s.policy_version >= oldest_allowed]
            if len(fresh) < len(entry.members):
                self._drop("stale", len(entry.members) - len(fresh))
                entry.members = fresh
                if not self._usable(entry):
                    continue
            kept.append(entry)
        self._waiting = kept

    def _choose(self) -> list[_Waiting]:
        """First in, first out, up to the token budget (at least one group); every group when synchronous."""
        if self.synchronous:
            chosen, self._waiting = self._waiting, []
            return chosen
        chosen, tokens = [], 0
        masked = self.algorithm.masked_terminations
        while self._waiting and (not chosen or tokens + self._waiting[0].tokens(masked) <= self.tokens_per_batch):
            entry = self._waiting.pop(0)
            tokens += entry.tokens(masked)
            chosen.append(entry)
        return chosen

    # -- outside the lock --------------------------------------------------------------------------
    def _build(self, chosen: list[_Waiting], stats: BatchStats, version: int, waited: float) -> Batch:
        """The samples of the chosen groups with their advantages, and the batch's numbers."""
        from forager.train.loss import group_advantages  # torch: only where advantages are computed

        algo = self.algorithm
        samples: list[TrainSample] = []
        for entry in chosen:
            rewards = [t.reward for _, t in entry.members]
            advantages, _ = group_advantages(rewards, [0] * len(rewards), baseline=algo.baseline,
                                             std_normalize=algo.std_normalize)
            for (sample, trajectory), advantage in zip(entry.members, advantages.tolist()):
                if trajectory.termination in algo.masked_terminations:
                    stats.masked += 1
                    continue
                samples.append(replace(sample, advantage=float(advantage)))
                stats.staleness[version - sample.policy_version] += 1
        stats.groups, stats.samples, stats.wait_s = len(chosen), len(samples), waited
        stats.tokens = sum(len(s.token_ids) for s in samples)
        stats.model_tokens = sum(s.model_tokens for s in samples)
        with self._condition:
            self.totals["groups_taken"] += len(chosen)
            self.totals["samples"] += len(samples)
        return Batch(samples, [entry.group for entry in chosen], stats, version)

    def counts(self) -> dict[str, Any]:
        """The run's totals and what is waiting now, for a status line."""
        with self._condition:
            return {**self.totals, "waiting": len(self._waiting), "in_flight": self._in_flight,
                    "gate_open": self.gate.is_open}
