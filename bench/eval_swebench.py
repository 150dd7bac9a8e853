"""SWE-bench evaluation figures on instances the project makes (the sample bugs as issue-fix commits).

    python bench/eval_swebench.py [--workers 1 4] [--samples 2]

1. Instance images built offline from a mirror and a spec file: seconds per instance cold (every layer
   built again) and cached, and disk: each image's size, and what the instances add beyond the layers
   they share.
2. Grading one prediction (the gold patch) the official way (`forager.eval.swebench`), against a bare
   `docker run` of the same image, patch and eval script with nothing of Forager around it.
3. Episodes per minute of `forager eval swebench`'s collection with the reference policy, and of the
   whole evaluation (episodes, then every prediction graded), at each worker count.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forager.agent.collect import CollectConfig, collect
from forager.eval.instances import build_instance_images, instance_task
from forager.eval.runs import grade_predictions
from forager.eval.specs import load_specs
from forager.eval.swebench import eval_script, grade_prediction
from forager.policies.spec import PolicySpec
from forager.runtime.docker import docker_client
from forager.runtime.registry import open_runtime
from forager.testing.swebench_instances import make_sample_instances


def build(made, force: bool) -> list[dict]:
    specs = load_specs(made.specs)
    started = time.monotonic()
    images = build_instance_images(made.rows, specs, made.repos, workers=1, force=force)
    wall = time.monotonic() - started
    failed = [i for i in images if i.error]
    if failed:
        raise SystemExit(f"build failed: {failed[0].instance_id}: {failed[0].error}")
    return [{"instance": i.instance_id, "tag": i.tag, "seconds": round(i.build_s, 1), "cached": i.cached,
             "wall_share": round(i.build_s / wall, 2) if wall else 0} for i in images]


def disk(tags: list[str]) -> dict:
    """Each image's size, and the bytes of the layers no other of these images has (what an instance adds)."""
    client = docker_client()
    layers: dict[str, set[str]] = {}
    sizes = {}
    for tag in tags:
        image = client.images.get(tag)
        sizes[tag] = image.attrs["Size"]
        layers[tag] = set(image.attrs["RootFS"]["Layers"])
    history = {tag: client.images.get(tag).history() for tag in tags}
    shared = set.intersection(*layers.values()) if layers else set()
    own = {tag: sum(h["Size"] for h in history[tag][:len(layers[tag] - shared)]) for tag in tags}
    return {"image_mb": round(statistics.mean(sizes.values()) / 2**20, 1),
            "own_layers_mb": round(statistics.mean(own.values()) / 2**20, 2),
            "all_images_mb": round((sum(own.values()) + min(sizes.values()) - min(own.values())) / 2**20, 1)}


def bare_run(task, patch: str, folder: Path) -> float:
    """`docker run` of the image with the patch applied and the eval script run, nothing else."""
    (folder / "patch.diff").write_text(patch)
    (folder / "eval.sh").write_text(eval_script(task))
    for path in (folder, folder / "patch.diff", folder / "eval.sh"):  # readable by the image's user
        path.chmod(0o755)
    started = time.monotonic()
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "1000", "-v", f"{folder}:/x:ro", task.image, "bash", "-c",
                    f"cd {task.workdir} && git apply --verbose /x/patch.diff && bash /x/eval.sh"],
                   capture_output=True, check=True, timeout=900)
    return time.monotonic() - started


def grading(tasks: dict, made, rounds: int = 3) -> dict:
    opener = functools.partial(open_runtime, kind="docker")
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for row in made.rows:
                task = tasks[row["instance_id"]]
                result = grade_prediction(task, row["patch"], opener)
                assert result.resolved and result.swebench_resolved, (row["instance_id"], result.error)
                ours.append(result.duration_s)
                bare.append(bare_run(task, row["patch"], Path(tmp)))
    return {"grade_s_p50": round(statistics.median(ours), 2), "bare_docker_run_s_p50": round(statistics.median(bare), 2),
            "ratio": round(statistics.median(ours) / statistics.median(bare), 2)}


def throughput(tasks: dict, made, workers: int, samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        started = time.monotonic()
        stats = collect(list(tasks.values()), out, policy=PolicySpec(), config=CollectConfig(
            samples_per_task=samples, workers=workers, runtime="docker", warm_pool=min(workers, 4)))
        collected = time.monotonic() - started
        preds = [{"instance_id": r["instance_id"], "model_patch": r["patch"]} for r in made.rows]
        for k in range(samples):
            grade_predictions(tasks, preds, out, sample=k, workers=workers)
        total = time.monotonic() - started
    episodes = stats.done
    return {"workers": workers, "episodes": episodes, "resolved": stats.resolved,
            "episodes_per_min": round(episodes / collected * 60, 1),
            "eval_episodes_per_min": round(episodes / total * 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forager-bench-eval-") as tmp:
        made = make_sample_instances(Path(tmp))
        cold = build(made, force=True)
        cached = build(made, force=False)
        print(f"images: cold {[c['seconds'] for c in cold]} s, cached {[c['seconds'] for c in cached]} s", flush=True)
        sizes = disk([c["tag"] for c in cold])
        print(f"disk: {sizes}", flush=True)
        specs = load_specs(made.specs)
        tasks = {row["instance_id"]: instance_task(row, specs.get(row["repo"], row["version"]), image["tag"])
                 for row, image in zip(made.rows, cold)}
        graded = grading(tasks, made)
        print(f"grading: {graded}", flush=True)
        runs = [throughput(tasks, made, workers, args.samples) for workers in args.workers]
        for run in runs:
            print(f"{run['workers']} worker(s): {run['episodes_per_min']} episodes/min collecting, "
                  f"{run['eval_episodes_per_min']}/min with grading", flush=True)
    print(json.dumps({"benchmark": "eval_swebench", "instances": len(made.rows),
                      "build_cold_s": statistics.median(c["seconds"] for c in cold),
                      "build_cached_s": statistics.median(c["seconds"] for c in cached), "disk": sizes,
                      "grading": graded, "throughput": runs}))


if __name__ == "__main__":
    main()
