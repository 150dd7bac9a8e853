"""Issue-fix mining in a project's image: seconds per commit, one container reset between commits
against a fresh container per commit.

    python bench/mine_image.py [--fixes 8] [--image IMG [--repo PATH]]

Without --image it writes a src-layout project whose history has `--fixes` bug-fix commits (each with
its test) and as many commits that are no task, builds its image (`forager.images.build`), and mines
it both ways. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forager.images.build import BuildOptions, build_image
from forager.tasks.issue_fix import MineConfig, MineReport, mine_repository

_GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "dev",
            "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "dev",
            "GIT_COMMITTER_EMAIL": "dev@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin"}


def write_project(root: Path, fixes: int) -> None:
    """A package `benchkit` under src/ with `fixes` off-by-one bugs, fixed one commit at a time."""
    def commit(message: str, n: int) -> None:
        date = f"2024-01-01T{n // 60:02d}:{n % 60:02d}:00Z"
        subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=_GIT_ENV)
        subprocess.run(["git", "commit", "-qm", message], cwd=root, check=True,
                       env={**_GIT_ENV, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})

    def module(fixed: int) -> str:
        return "".join(f"def f{i}(x):\n    return x + {1 if i < fixed else 2}\n\n\n" for i in range(fixes))

    (root / "src" / "benchkit").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = '
                                         '"setuptools.build_meta"\n\n[project]\nname = "benchkit"\nversion = "0.1.0"\n')
    (root / "src" / "benchkit" / "__init__.py").write_text("")
    (root / "src" / "benchkit" / "core.py").write_text(module(0))
    (root / "tests" / "test_core.py").write_text("from benchkit.core import *  # noqa: F403\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True, env=_GIT_ENV)
    commit("Add benchkit", 0)
    for i in range(fixes):
        (root / "src" / "benchkit" / "core.py").write_text(module(i + 1))
        with open(root / "tests" / "test_core.py", "a") as tests:
            tests.write(f"\n\ndef test_f{i}():\n    assert f{i}(1) == 2  # noqa: F405\n")
        commit(f"Fix f{i} (fixes #{i + 1})", 2 * i + 1)
        (root / f"NOTES-{i}.md").write_text(f"note {i}\n")
        commit(f"Note {i}", 2 * i + 2)


def mine(repo: Path | None, image: str, fresh: bool) -> tuple[MineReport, float]:
    started = time.monotonic()
    report = mine_repository(repo, MineConfig(image=image, fresh_runtime=fresh))
    return report, time.monotonic() - started


def figures(report: MineReport, wall: float) -> dict[str, float | int]:
    ran = [o.duration_s for o in report.outcomes if o.ran_tests]
    return {"tasks": len(report.tasks), "commits": report.commits_seen, "commits_tested": len(ran),
            "wall_s": round(wall, 2), "per_tested_commit_s_median": round(statistics.median(ran), 3) if ran else 0.0,
            "per_commit_s_mean": round(wall / max(1, report.commits_seen), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixes", type=int, default=8)
    parser.add_argument("--image", default=None, help="mine this image instead of the generated project's")
    parser.add_argument("--repo", type=Path, default=None, help="with --image: read the history here")
    args = parser.parse_args()

    repo, image = args.repo, args.image
    if image is None:
        repo = Path(tempfile.mkdtemp(prefix="bench-mine-")) / "benchkit"
        repo.mkdir()
        write_project(repo, args.fixes)
        built = build_image(str(repo), BuildOptions())
        if not built.ok:
            raise SystemExit(f"the image did not build: {built.error}")
        image = built.tag or ""
    results = {}
    for name, fresh in (("reuse", False), ("fresh", True)):
        report, wall = mine(repo, image, fresh)
        results[name] = figures(report, wall)
        print(f"{name:6s} {results[name]['tasks']} tasks from {report.commits_seen} commits in {wall:.1f}s; "
              f"a commit whose tests ran: {results[name]['per_tested_commit_s_median']:.2f}s median")
    print(json.dumps({"image": image, **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}}))


if __name__ == "__main__":
    main()
