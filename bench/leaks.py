"""What leak-proof checkouts cost: `checkout_task` of an issue-fix task (base history only, proven) and the
leak check alone (`leaked_objects`), on the sample image and on a generated history.

    python bench/leaks.py [--commits 5000] [--repeat 3]

Cases: `sample` (the sample image's repository, in Docker, when the engine answers), `history` (a
generated repository of --commits commits, 200 files, 3 files changed per commit, checked out 100
commits back, in a local runtime: the gc path), `promisor` (the same history as a plain clone of a
blob-less partial clone: the rebuild path). Medians over --repeat runs. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forager.core import Task
from forager.runtime import DockerRuntime, LocalRuntime
from forager.runtime.docker import docker_available
from forager.tasks.checkout import checkout_task, leaked_objects


def fast_import_stream(commits: int, files: int = 200, lines: int = 50) -> bytes:
    """A `git fast-import` stream: the first commit adds every file, each later one changes three lines."""
    rng = random.Random(0)
    text = {f"pkg/mod{i}.py": [f"x{j} = {j}" for j in range(lines)] for i in range(files)}
    out: list[str] = []
    for n in range(commits):
        changed = list(text) if n == 0 else [f"pkg/mod{rng.randrange(files)}.py" for _ in range(3)]
        for path in changed[:3] if n else []:
            text[path][rng.randrange(lines)] = f"y = {rng.random()}"
        message = f"commit {n}"
        out += ["commit refs/heads/main", f"committer dev <dev@example.com> {1_600_000_000 + n * 60} +0000",
                f"data {len(message)}", message]
        for path in changed:
            body = "\n".join(text[path]) + "\n"
            out += [f"M 100644 inline {path}", f"data {len(body.encode())}", body.rstrip("\n")]
        out.append("")
    return ("\n".join(out) + "\n").encode()


def make_history(root: Path, commits: int) -> tuple[Path, Path]:
    """(a full repository, a plain clone of a blob-less partial clone of it that fetched every blob since)."""
    full = root / "full"
    subprocess.run(["git", "init", "-q", "-b", "main", str(full)], check=True)
    subprocess.run(["git", "-C", str(full), "fast-import", "--quiet"], input=fast_import_stream(commits), check=True)
    subprocess.run(f"cd {full} && git checkout -q main && git gc -q && git config uploadpack.allowFilter true",
                   shell=True, check=True)
    subprocess.run(f"cd {root} && git clone -q --filter=blob:none file://{full} partial && cd partial && "
                   "git config --unset remote.origin.partialclonefilter && git fetch -q --refetch origin && "
                   f"cd .. && git clone -q partial promisor", shell=True, check=True)
    return full, root / "promisor"


def measure(open_runtime, base: str, repeat: int) -> dict[str, float]:
    checkout_ms, check_ms = [], []
    for _ in range(repeat):
        with open_runtime() as rt:
            commit = rt.run_checked(f"git rev-parse {base}").strip()
            task = Task(instance_id="bench", problem_statement="", local_repo="/", base_commit=commit)
            started = time.perf_counter()
            checkout_task(rt, task)
            checkout_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            assert leaked_objects(rt).clean
            check_ms.append((time.perf_counter() - started) * 1000)
    return {"checkout_ms": round(statistics.median(checkout_ms)), "leak_check_ms": round(statistics.median(check_ms))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, float] | int] = {"commits": args.commits}
    if docker_available():
        results["sample"] = measure(lambda: DockerRuntime("forager/sample:latest", "/repo"), "HEAD", args.repeat)
        print("sample", results["sample"], flush=True)
    with tempfile.TemporaryDirectory(prefix="forager-bench-leaks-") as tmp:
        full, promisor = make_history(Path(tmp), args.commits)
        objects = subprocess.run(["git", "-C", str(full), "count-objects", "-v"], capture_output=True, text=True)
        results["objects"] = int(next(line.split()[1] for line in objects.stdout.splitlines()
                                      if line.startswith("in-pack")))
        for name, repo in (("history", full), ("promisor", promisor)):
            results[name] = measure(lambda repo=repo: LocalRuntime(repo), "HEAD~100", args.repeat)
            print(name, results[name], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
