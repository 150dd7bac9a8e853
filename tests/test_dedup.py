"""Near-duplicate removal: MinHash over actions, greedy by preference, per repository."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from forager.trajectories.dedup import (
    MinHasher,
    action_text,
    dedup_files,
    dedup_trajectories,
    estimated_similarity,
    exact_jaccard,
    minhash_similarity,
    repo_of,
)
from forager.trajectories.store import TrajectoryFileError, read_trajectories
from forager.core import Task, Trajectory, TrajectoryMessage

WORDS = [f"w{i}" for i in range(5000)]


def make(tid: str, commands: list[str], repo: str = "org/a", resolved: bool = False, reward: float = 0.0,
         sample: int = 0) -> Trajectory:
    messages = [TrajectoryMessage(role="system", content="You are an agent."),
                TrajectoryMessage(role="user", content="Fix the bug.")]
    for command in commands:
        messages.append(TrajectoryMessage(role="assistant", content=f"<tool: bash>\n{command}\n</tool>", loss_mask=1,
                                          action={"name": "bash", "arguments": {"command": command}}))
        messages.append(TrajectoryMessage(role="user", content="output"))
    return Trajectory(trajectory_id=f"{tid}#{sample}", task_id=tid, sample=sample, repo=repo, messages=messages,
                      resolved=resolved, reward=reward, num_turns=len(commands), termination="submitted")


def random_commands(rng: random.Random, n: int = 40, words: int = 12) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def test_near_identical_pair_keeps_the_resolved_one():
    rng = random.Random(1)
    commands = random_commands(rng)
    edited = list(commands)
    edited[7] = "python -m pytest tests/test_other.py -x"
    first = make("org__a-1", commands, reward=-1.0)
    second = make("org__a-1", edited, resolved=True, reward=1.0, sample=1)
    assert exact_jaccard(first, second) > 0.8

    result = dedup_trajectories([first, second])
    assert [t.trajectory_id for t in result.kept] == ["org__a-1#1"]
    [(dropped, kept, similarity)] = result.dropped
    assert (dropped, kept) == ("org__a-1#0", "org__a-1#1")
    assert similarity >= 0.5
    assert result.repos == {"org/a": (1, 1)}


def test_different_trajectories_are_both_kept():
    rng = random.Random(2)
    a, b = make("t-1", random_commands(rng)), make("t-2", random_commands(rng))
    result = dedup_trajectories([a, b])
    assert [t.trajectory_id for t in result.kept] == ["t-1#0", "t-2#0"]
    assert result.dropped == []


def test_different_repositories_are_never_compared():
    commands = random_commands(random.Random(3))
    same = [make("x-1", commands, repo="org/a"), make("x-2", commands, repo="org/b")]
    assert len(dedup_trajectories(same).kept) == 2
    # without `repo`, the task id up to its first `__` names the repository
    fallback = [make("django__django-1", commands, repo=""), make("flask__flask-2", commands, repo=""),
                make("django__django-3", commands, repo="")]
    assert repo_of(fallback[0]) == "django"
    result = dedup_trajectories(fallback)
    assert [t.task_id for t in result.kept] == ["django__django-1", "flask__flask-2"]
    assert result.dropped[0][:2] == ("django__django-3#0", "django__django-1#0")


def test_preference_is_reward_then_fewer_turns_then_file_order():
    commands = random_commands(random.Random(4))
    longer = commands + ["ls"]
    trajs = [make("t-1", commands, reward=0.0), make("t-1", longer, reward=0.5, sample=1),
             make("t-1", commands, reward=0.5, sample=2), make("t-1", commands, reward=0.5, sample=3)]
    result = dedup_trajectories(trajs)
    assert [t.trajectory_id for t in result.kept] == ["t-1#2"]  # highest reward, fewest turns, first in file
    assert {d.kept_id for d in result.dropped} == {"t-1#2"}


def _mutated(rng: random.Random, words: list[str], share: float) -> list[str]:
    return [rng.choice(WORDS) if rng.random() < share else w for w in words]


def test_minhash_estimate_is_close_to_exact_jaccard():
    rng = random.Random(5)
    errors, exacts = [], []
    for _ in range(40):
        base = [rng.choice(WORDS) for _ in range(rng.randint(100, 600))]
        other = _mutated(rng, base, rng.uniform(0.0, 0.15))
        a, b = make("a-1", [" ".join(base)]), make("b-1", [" ".join(other)])
        exact = exact_jaccard(a, b)
        errors.append(abs(minhash_similarity(a, b) - exact))
        exacts.append(exact)
    assert min(exacts) < 0.3 and max(exacts) > 0.8  # the pairs span the range
    assert max(errors) <= 0.1
    assert np.mean(errors) < 0.05


def test_minhash_is_deterministic_and_seeded():
    traj = make("t-1", random_commands(random.Random(6)))
    one, two = MinHasher(seed=0), MinHasher(seed=0)
    assert np.array_equal(one.fingerprint(traj), two.fingerprint(traj))
    assert not np.array_equal(one.fingerprint(traj), MinHasher(seed=1).fingerprint(traj))
    rng = random.Random(7)
    runs = [random_commands(rng, n=10) for _ in range(30)]
    trajs = [make(f"t-{i % 5}", commands, sample=i) for i, commands in enumerate(runs)]
    trajs += [make(f"t-{i % 5}", commands[:-1], sample=100 + i) for i, commands in enumerate(runs[:10])]
    first, second = dedup_trajectories(trajs, seed=3), dedup_trajectories(trajs, seed=3)
    assert len(first.dropped) == 10
    assert [t.trajectory_id for t in first.kept] == [t.trajectory_id for t in second.kept]
    assert first.dropped == second.dropped


def test_every_kept_pair_is_below_the_threshold_and_banding_agrees_with_exhaustive():
    rng = random.Random(8)
    originals = [[rng.choice(WORDS) for _ in range(300)] for _ in range(30)]
    trajs = []
    for n in range(240):
        words = _mutated(rng, rng.choice(originals), rng.uniform(0.0, 0.12))  # 5-gram Jaccard 0.3 to 1
        trajs.append(make(f"t-{n}", [" ".join(words)], repo=f"org/{n % 2}", reward=rng.choice([0.0, 1.0])))
    exhaustive = dedup_trajectories(trajs)
    banded = dedup_trajectories(trajs, exhaustive_below=0)
    assert [t.trajectory_id for t in banded.kept] == [t.trajectory_id for t in exhaustive.kept]
    assert len(exhaustive.kept) >= 60 and len(exhaustive.dropped) >= 30
    hasher = MinHasher()
    for a, b in itertools.combinations(exhaustive.kept, 2):
        if a.repo == b.repo:
            assert estimated_similarity(hasher.fingerprint(a), hasher.fingerprint(b)) < 0.5
    kept_ids = {t.trajectory_id for t in exhaustive.kept}
    assert all(d.kept_id in kept_ids and d.similarity >= 0.5 for d in exhaustive.dropped)
    assert len(exhaustive.kept) + len(exhaustive.dropped) == len(trajs)


def test_action_text_is_canonical_and_exact_jaccard_edges():
    call = TrajectoryMessage(role="assistant", content="x",
                             action={"name": "str_replace", "arguments": {"path": "a.py", "old_str": "x = 1",
                                                                         "new_str": "x = 2"}})
    same = TrajectoryMessage(role="assistant", content="different reasoning",
                             action={"name": "str_replace", "arguments": {"new_str": "x = 2", "path": "a.py",
                                                                         "old_str": "x = 1"}})
    malformed = TrajectoryMessage(role="assistant", content="I will run ls", action=None)
    a = Trajectory(trajectory_id="a#0", task_id="a", messages=[call, malformed])
    b = Trajectory(trajectory_id="b#0", task_id="b", messages=[same, malformed])
    assert action_text(a) == action_text(b)
    assert "<<malformed>>" in action_text(a) and "I will run ls" in action_text(a)
    empty = Trajectory(trajectory_id="e#0", task_id="e")
    assert exact_jaccard(empty, empty) == 1.0 and exact_jaccard(a, empty) == 0.0
    assert minhash_similarity(empty, empty) == 1.0 and minhash_similarity(a, empty) == 0.0
    assert exact_jaccard("a b c", "a b c d", ngram=2) == pytest.approx(2 / 3)


def test_dedup_files_reads_a_directory_and_writes_the_kept_lines(tmp_path):
    rng = random.Random(9)
    commands = random_commands(rng)
    runs = tmp_path / "runs"
    runs.mkdir()
    trajs = [make("t-1", commands), make("t-2", random_commands(rng)), make("t-1", commands, resolved=True, sample=1)]
    (runs / "trajectories.jsonl").write_text(trajs[0].to_json() + "\n\n" + trajs[1].to_json() + "\n")
    (runs / "more.jsonl").write_text(trajs[2].to_json() + "\n")
    task = Task(instance_id="t-1", problem_statement="p", image="img")
    (runs / "tasks.jsonl").write_text(task.model_dump_json() + "\n")
    (runs / "notes.txt").write_text("not json")

    assert [t.trajectory_id for t in read_trajectories([runs])] == ["t-1#1", "t-1#0", "t-2#0"]
    out = tmp_path / "out" / "dedup.jsonl"
    result = dedup_files([runs], out)
    assert result.kept_ids == ["t-1#1", "t-2#0"]
    assert result.dropped[0][:2] == ("t-1#0", "t-1#1")
    lines = out.read_text().splitlines()
    assert lines == [trajs[2].to_json(), trajs[1].to_json()]  # unchanged, in input order
    assert sorted(p.name for p in out.parent.iterdir()) == ["dedup.jsonl"]  # no temporary file left


def test_unreadable_inputs_name_the_file_and_line(tmp_path):
    good = make("t-1", ["ls"]).to_json()
    path = tmp_path / "trajectories.jsonl"
    path.write_text(good + "\n" + good + "\n" + '{"trajectory_id": "x#0", "messages": []}\n')
    with pytest.raises(TrajectoryFileError, match=r"trajectories\.jsonl:3: not a trajectory: task_id: Field required"):
        read_trajectories([path])
    path.write_text(good + "\n{not json\n")
    with pytest.raises(TrajectoryFileError, match=r"trajectories\.jsonl:2: not a trajectory: .*JSON"):
        dedup_files([tmp_path], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(TrajectoryFileError, match="no such file"):
        read_trajectories([tmp_path / "missing.jsonl"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrajectoryFileError, match="no trajectory files"):
        read_trajectories([empty])
    with pytest.raises(ValueError, match="threshold"):
        dedup_trajectories([], threshold=0.0)


def test_an_unfinished_last_line_is_skipped(tmp_path):
    good = make("t-1", ["ls"]).to_json()
    path = tmp_path / "trajectories.jsonl"
    path.write_text(good + "\n" + good[:50])  # a writer killed mid-line
    assert [t.trajectory_id for t in read_trajectories([tmp_path])] == ["t-1#0"]
    assert dedup_files([path], tmp_path / "out.jsonl").kept_ids == ["t-1#0"]
