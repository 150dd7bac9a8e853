"""Near-duplicate removal of trajectories within each repository, by MinHash over their actions.

CWM near-deduplicated its agent trajectories per repository by MinHash over the concatenated
actions and kept pairs below Jaccard 0.5. Here a trajectory's actions (`Trajectory.actions()`) are
written as one canonical text (`action_text`), cut into word 5-grams (`shingles`), and summarised by
a 128-value MinHash signature. Trajectories are kept greedily in order of preference (resolved
first, then higher reward, then fewer turns, then file order); one is dropped when its estimated
Jaccard similarity with an already kept trajectory of the same repository reaches the threshold, so
every kept pair of a repository is below it (as MinHash estimates it).

A repository with up to `exhaustive_below` trajectories is compared exhaustively (every candidate
against every kept signature, vectorised). A larger one finds candidates by LSH banding, with bands
sized so that a pair at the threshold shares a band with probability >= 99.5% (higher above it);
candidates are confirmed with the MinHash estimate, so banding can miss a duplicate but never drops
a trajectory that is not one.

Trajectory files are read with `forager.trajectories.store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from forager.core import Trajectory
from forager.files import atomic_output
from forager.trajectories.store import iter_trajectory_lines, trajectory_files

log = logging.getLogger(__name__)

NGRAM = 5
"""Words per shingle."""
BAND_RECALL = 0.995
"""Least probability that LSH banding makes a pair at the threshold a candidate."""
EXHAUSTIVE_BELOW = 2000
"""Repositories with at most this many trajectories are compared exhaustively, not by banding."""

_U64 = np.uint64
_NGRAM_MULTIPLIER = _U64(0x100000001B3)
_SIGNATURE_EMPTY = np.iinfo(np.uint32).max
_SHINGLE_CHUNK = 4096  # shingles hashed at once: bounds the (chunk, num_perm) temporary to 4 MiB


# -- MinHash ----------------------------------------------------------------------------------------
def action_text(trajectory: Trajectory) -> str:
    """The trajectory's actions as one canonical text.

    Per action: `<NAME>`, then each argument sorted by key as a `KEY:` line followed by its value
    (strings as they are, so commands and code keep their words; other values as sorted JSON).
    """
    parts: list[str] = []
    for action in trajectory.actions():
        parts.append(f"<{action.get('name')}>")
        arguments = action.get("arguments")
        if not isinstance(arguments, dict):
            arguments = {} if arguments is None else {"": arguments}
        for key in sorted(arguments, key=str):
            value = arguments[key]
            parts.append(f"{key}:")
            parts.append(value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False))
    return "\n".join(parts)


def word_ngrams(text: str, ngram: int = NGRAM) -> set[tuple[str, ...]]:
    """The set of whitespace-word n-grams (one shorter gram when the text has fewer than n words)."""
    words = text.split()
    n = min(ngram, len(words))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)} if words else set()


def exact_jaccard(a: Trajectory | str, b: Trajectory | str, ngram: int = NGRAM) -> float:
    """Exact Jaccard similarity of two trajectories' (or texts') word n-gram sets; 1.0 when both are empty."""
    sa = word_ngrams(a if isinstance(a, str) else action_text(a), ngram)
    sb = word_ngrams(b if isinstance(b, str) else action_text(b), ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class MinHasher:
    """Word n-gram shingles and their MinHash signatures, deterministic for a given seed.

    Words are hashed once each (8-byte BLAKE2b, cached), n-grams combine their words' hashes
    polynomially, and each of the `num_perm` hash functions is a multiply-add-shift over the
    mixed shingle hash: `((a * x + b) mod 2**64) >> 32` with a random odd `a`.
    """

    def __init__(self, num_perm: int = 128, ngram: int = NGRAM, seed: int = 0, cache_size: int = 1 << 21):
        if num_perm < 1 or ngram < 1:
            raise ValueError("num_perm and ngram must be at least 1")
        rng = np.random.default_rng(seed % (1 << 64))  # any int, negative ones too
        self.num_perm = num_perm
        self.ngram = ngram
        self._a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * _U64(2) + _U64(1)  # (P,) odd
        self._b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)  # (P,)
        self._words: dict[str, int] = {}
        self._cache_size = cache_size

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._words
        if len(cache) > self._cache_size:
            cache.clear()
        values = []
        for word in words:
            h = cache.get(word)
            if h is None:
                h = cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"),
                                                                 digest_size=8).digest(), "little")
            values.append(h)
        return np.array(values, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """The distinct hashed word n-grams of a text, as sorted uint64 values."""
        words = text.split()
        if not words:
            return np.empty(0, dtype=np.uint64)
        hashes = self._word_hashes(words)  # (W,)
        n = min(self.ngram, len(words))
        count = len(words) - n + 1
        grams = hashes[:count].copy()  # (W-n+1,)
        for k in range(1, n):
            grams = grams * _NGRAM_MULTIPLIER + hashes[k:k + count]
        return np.unique(_mix64(grams))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The MinHash signature of a shingle set, shape (num_perm,), uint32; all max when the set is empty."""
        sig = np.full(self.num_perm, _SIGNATURE_EMPTY, dtype=np.uint32)
        for start in range(0, len(shingles), _SHINGLE_CHUNK):
            values = shingles[start:start + _SHINGLE_CHUNK, None] * self._a[None, :]  # (S, P)
            np.add(values, self._b[None, :], out=values)  # in place: a second (S, P) temporary costs 8x
            # the high half of the minimum is the minimum of the high halves
            np.minimum(sig, (values.min(axis=0) >> _U64(32)).astype(np.uint32), out=sig)
        return sig

    def fingerprint(self, trajectory: Trajectory) -> np.ndarray:
        """The MinHash signature of a trajectory's actions."""
        return self.signature(self.shingles(action_text(trajectory)))


def estimated_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity estimated from two MinHash signatures (the share of equal values)."""
    return float(np.count_nonzero(a == b)) / len(a)


def minhash_similarity(a: Trajectory, b: Trajectory, num_perm: int = 128, seed: int = 0) -> float:
    """Estimated Jaccard similarity of two trajectories' actions."""
    hasher = MinHasher(num_perm=num_perm, seed=seed)
    return estimated_similarity(hasher.fingerprint(a), hasher.fingerprint(b))


# -- selection --------------------------------------------------------------------------------------
class Duplicate(NamedTuple):
    dropped_id: str
    kept_id: str
    similarity: float
    """Estimated Jaccard similarity of the two trajectories' actions."""


class RepoCount(NamedTuple):
    kept: int
    dropped: int


def repo_of(trajectory: Trajectory) -> str:
    """The repository a trajectory belongs to: `repo`, else the task id up to its first `__`.

    SWE-bench ids are `owner__name-N`, Forager's mutate-fix ids `name__operator__function__hash`.
    """
    return trajectory.repo or trajectory.task_id.split("__", 1)[0]


def preference(trajectory: Trajectory, position: int) -> tuple[bool, float, int, int]:
    """Sort key of the greedy selection: resolved first, then higher reward, fewer turns, file order."""
    turns = trajectory.num_turns or sum(m.role == "assistant" for m in trajectory.messages)
    return (not trajectory.resolved, -trajectory.reward, turns, position)


def band_shape(threshold: float, num_perm: int, recall: float = BAND_RECALL) -> tuple[int, int]:
    """(bands, rows per band) with the most rows whose chance of a candidate at `threshold` is >= `recall`."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class _Exhaustive:
    """Every kept signature of a repository, compared at once."""

    def __init__(self, sigs: np.ndarray, capacity: int):
        self._sigs = sigs
        self._kept = np.empty((capacity, sigs.shape[1]), dtype=sigs.dtype)  # (K, P)
        self._index: list[int] = []

    def most_similar(self, i: int) -> tuple[int, int] | None:
        """(kept index, equal values) of the most similar kept trajectory, None when none is kept."""
        if not self._index:
            return None
        equal = np.count_nonzero(self._kept[:len(self._index)] == self._sigs[i], axis=1)  # (K,)
        best = int(equal.argmax())
        return self._index[best], int(equal[best])

    def add(self, i: int) -> None:
        self._kept[len(self._index)] = self._sigs[i]
        self._index.append(i)


class _Banded:
    """LSH buckets of kept signatures: a candidate shares all rows of at least one band."""

    def __init__(self, sigs: np.ndarray, members: Sequence[int], bands: int, rows: int):
        self._sigs = sigs
        block = sigs[np.asarray(members)][:, :bands * rows].reshape(len(members), bands, rows).astype(np.uint64)
        keys = block[:, :, 0]  # (M, B)
        for r in range(1, rows):
            keys = keys * _NGRAM_MULTIPLIER + block[:, :, r]
        self._keys = dict(zip(members, _mix64(keys).tolist()))
        self._buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]

    def most_similar(self, i: int) -> tuple[int, int] | None:
        candidates: set[int] = set()
        for bucket, key in zip(self._buckets, self._keys[i]):
            candidates.update(bucket.get(key, ()))
        if not candidates:
            return None
        index = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        equal = np.count_nonzero(self._sigs[index] == self._sigs[i], axis=1)
        best = int(equal.argmax())
        return int(index[best]), int(equal[best])

    def add(self, i: int) -> None:
        for bucket, key in zip(self._buckets, self._keys[i]):
            bucket.setdefault(key, []).append(i)


@dataclass
class _Selection:
    kept: list[int]
    """Positions of the kept trajectories, in input order."""
    dropped: list[Duplicate]
    repos: dict[str, RepoCount]


def _select(ids: Sequence[str], repos: Sequence[str], ranks: Sequence[tuple], sigs: np.ndarray, threshold: float,
            exhaustive_below: int) -> _Selection:
    num_perm = sigs.shape[1]
    # an estimate is (equal values) / num_perm: compare counts to stay clear of float rounding
    needed = int(np.ceil(threshold * num_perm - 1e-9))
    groups: dict[str, list[int]] = {}
    for i in sorted(range(len(ids)), key=ranks.__getitem__):
        groups.setdefault(repos[i], []).append(i)
    bands, rows = band_shape(threshold, num_perm)
    kept: list[int] = []
    dropped: list[Duplicate] = []
    counts: dict[str, RepoCount] = {}
    for repo, members in groups.items():
        index = (_Exhaustive(sigs, len(members)) if len(members) <= exhaustive_below
                 else _Banded(sigs, members, bands, rows))
        n_kept = 0
        for i in members:
            match = index.most_similar(i)
            if match is not None and match[1] >= needed:
                dropped.append(Duplicate(ids[i], ids[match[0]], match[1] / num_perm))
                continue
            index.add(i)
            kept.append(i)
            n_kept += 1
        counts[repo] = RepoCount(n_kept, len(members) - n_kept)
    return _Selection(sorted(kept), dropped, dict(sorted(counts.items())))


def _check(threshold: float, num_perm: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, not {num_perm}")


@dataclass
class DedupResult:
    kept: list[Trajectory]
    """The kept trajectories, in input order."""
    dropped: list[Duplicate] = field(default_factory=list)
    repos: dict[str, RepoCount] = field(default_factory=dict)
    """Per repository: how many were kept and dropped."""


def dedup_trajectories(trajs: Sequence[Trajectory], threshold: float = 0.5, num_perm: int = 128, seed: int = 0,
                       exhaustive_below: int = EXHAUSTIVE_BELOW) -> DedupResult:
    """Keep trajectories greedily by preference, dropping each near-duplicate of a kept one of its repository."""
    _check(threshold, num_perm)
    hasher = MinHasher(num_perm=num_perm, seed=seed)
    sigs = np.stack([hasher.fingerprint(t) for t in trajs]) if trajs else np.empty((0, num_perm), np.uint32)
    selection = _select([t.trajectory_id for t in trajs], [repo_of(t) for t in trajs],
                        [preference(t, n) for n, t in enumerate(trajs)], sigs, threshold, exhaustive_below)
    return DedupResult([trajs[i] for i in selection.kept], selection.dropped, selection.repos)


@dataclass
class DedupFilesResult:
    out_path: Path
    kept_ids: list[str]
    """The kept trajectories' ids, in the order written."""
    dropped: list[Duplicate]
    repos: dict[str, RepoCount]


def dedup_files(inputs: Iterable[str | Path], out_path: str | Path, threshold: float = 0.5, num_perm: int = 128,
                seed: int = 0, exhaustive_below: int = EXHAUSTIVE_BELOW) -> DedupFilesResult:
    """Deduplicate the trajectories in the inputs and write the kept lines, unchanged and in input order, to `out_path`.

    Two passes over the files, so only signatures stay in memory; the output appears atomically
    (a temporary file in the same directory, then a rename).
    """
    _check(threshold, num_perm)
    out_path = Path(out_path)
    hasher = MinHasher(num_perm=num_perm, seed=seed)
    ids: list[str] = []
    repos: list[str] = []
    ranks: list[tuple] = []
    sigs: list[np.ndarray] = []
    where: list[tuple[Path, int]] = []
    files = trajectory_files(inputs)
    for line in iter_trajectory_lines(files):
        t = line.trajectory
        ranks.append(preference(t, len(ids)))
        ids.append(t.trajectory_id)
        repos.append(repo_of(t))
        sigs.append(hasher.fingerprint(t))
        where.append((line.path, line.lineno))
    matrix = np.stack(sigs) if sigs else np.empty((0, num_perm), np.uint32)
    selection = _select(ids, repos, ranks, matrix, threshold, exhaustive_below)
    keep = {where[i] for i in selection.kept}
    with atomic_output(out_path) as out:
        for path in files:
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if (path, lineno) in keep:
                        out.write(line.rstrip("\r\n") + "\n")
    return DedupFilesResult(out_path, [ids[i] for i in selection.kept], selection.dropped, selection.repos)


