"""Images of real projects: cold and cached build time, image size, shared disk, tests collected and passing,
and for each project the stage it reached (or failed at) and why.

    python bench/images.py [--projects bench/projects.yaml] [--jobs 2] [--only NAME ...] [--keep-home] [--cold-only]

`--projects bench/projects-pypi20.yaml`: 20 popular PyPI projects chosen by the rule stated in that file.

Cold: a fresh $FORAGER_HOME (so the sdist download, the resolution and the wheelhouse count too) and
the projects' repo and env images removed from the engine first; the base image stays. Cached: the
same builds again. Shared disk: the bytes the images of one base occupy once their common layers are
counted once, against the sum of their sizes. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forager.images.build import BuildOptions, build_images  # noqa: E402
from forager.runtime.docker import docker_client  # noqa: E402


def remove_images(client, sources: list[str]) -> int:
    """The repo images built from `sources`, and the env images under them."""
    removed = 0
    envs = set()
    for image in client.images.list(filters={"label": ["forager=1", "forager.kind=repo"]}):
        if image.labels.get("forager.source") in sources:
            envs.add(image.labels.get("forager.env"))
            for tag in image.tags:
                client.images.remove(tag, force=True)
                removed += 1
    for tag in envs - {None}:
        try:
            client.images.remove(tag, force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - already gone, or shared and still used
            pass
    client.images.prune(filters={"dangling": True, "label": "forager=1"})
    return removed


def shared_disk(client, results) -> tuple[int, int]:
    """(sum of the images' sizes, bytes they occupy with each layer counted once).

    An image's size includes its parents'; a repo image is its env image plus one layer, an env image
    its base plus one layer, so the layers counted once are: each base, each distinct env's own layer,
    each repo's own layer."""
    size = lambda tag: int(client.images.get(tag).attrs["Size"])  # noqa: E731
    repos = {r.tag: client.images.get(r.tag).labels for r in results if r.tag}
    envs = {labels["forager.env"]: labels["forager.base"] for labels in repos.values()}
    total = sum(size(tag) for tag in repos)
    unique = sum(size(base) for base in set(envs.values()))
    unique += sum(size(env) - size(base) for env, base in envs.items())
    unique += sum(size(tag) - size(labels["forager.env"]) for tag, labels in repos.items())
    return total, unique


def project_row(r, again, recipe: str | None, reached: str) -> dict:
    """One project's figures: how far its cold build got, why it stopped, its times and tests."""
    e = r.entry
    failed_stage = r.error.stage if r.error else None
    return {
        "project": r.source, "recipe": recipe, "ok": r.ok, "cached_ok": again.cached and again.ok,
        "python": e.python if e else None, "stage_reached": "done" if r.ok else failed_stage or reached,
        "failed_stage": failed_stage, "reason": r.error.reason if r.error else None,
        "cold_s": round(r.build_s, 1), "cached_s": round(again.build_s, 2),
        "image_size_mb": round(e.image_size / 1e6, 1) if e else None,
        "tests": e.collected if e else 0, "passing": e.passed if e else 0, "skipped": e.skipped if e else 0,
        "pass_share": e.pass_share if e else 0.0, "tag": r.tag,
        "error": f"{r.error.stage}: {r.error.reason}" if r.error else None,
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'project':28s} {'py':>5s} {'stage':>10s} {'cold':>8s} {'cached':>8s} {'size':>7s} {'tests':>6s} "
          f"{'pass':>6s} {'share':>6s}  {'recipe':8s} status")
    for row in rows:
        print(f"{row['project']:28s} {row['python'] or '-':>5s} {row['stage_reached']:>10s} {row['cold_s']:7.1f}s "
              f"{row['cached_s']:7.2f}s {row['image_size_mb'] or 0:5.0f}MB {row['tests']:6d} {row['passing']:6d} "
              f"{row['pass_share']:6.1%}  {row['recipe'] or '-':8s} {'ok' if row['ok'] else row['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", default=str(Path(__file__).with_name("projects.yaml")))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="Only these sources (NAME==VERSION).")
    parser.add_argument("--keep-home", action="store_true", help="Reuse $FORAGER_HOME (sdists, locks, wheels).")
    parser.add_argument("--cold-only", action="store_true", help="Skip the second (cached) round of builds.")
    args = parser.parse_args()

    projects = yaml.safe_load(Path(args.projects).read_text())["projects"]
    sources = [p["source"] for p in projects if not args.only or p["source"] in args.only]
    recipes = {p["source"]: p.get("recipe") for p in projects}
    if not args.keep_home:
        os.environ["FORAGER_HOME"] = tempfile.mkdtemp(prefix="forager-bench-images-")
    client = docker_client()
    removed = remove_images(client, sources)
    print(f"FORAGER_HOME={os.environ.get('FORAGER_HOME', '~/.cache/forager')}; removed {removed} image tags first")

    reached: dict[str, str] = {}

    def on_stage(label: str, source: str, stage: str, detail: str) -> None:
        if stage in ("done", "cached", "failed"):
            print(f"  {label:6s} {source:28s} {stage} {detail[:100]}", flush=True)
        elif label == "cold":
            reached[source] = stage

    def run(label: str):
        started = time.monotonic()
        results = []
        # one build_images call per recipe, so every source gets its own
        for recipe in sorted({recipes[s] or "" for s in sources}):
            batch = [s for s in sources if (recipes[s] or "") == recipe]
            results += build_images(batch, BuildOptions(recipe=recipe or None), jobs=args.jobs,
                                    on_stage=lambda src, stage, detail: on_stage(label, src, stage, detail))
        return results, time.monotonic() - started

    cold, cold_wall = run("cold")
    cached, cached_wall = run("cached") if not args.cold_only else (cold, 0.0)
    rows = [project_row(r, {c.source: c for c in cached}[r.source], recipes[r.source], reached.get(r.source, "fetch"))
            for r in cold]
    total, unique = shared_disk(client, [r for r in cold if r.tag and r.entry])
    print_table(rows)
    shared = 1 - unique / total if total else 0.0
    print(f"\ncold: {cold_wall:.0f}s wall for {len(sources)} projects ({args.jobs} at a time); cached: "
          f"{cached_wall:.1f}s wall; disk: {unique / 1e6:.0f} MB for images summing {total / 1e6:.0f} MB "
          f"({shared:.0%} shared)")
    failed_at: dict[str, int] = {}
    for row in rows:
        if row["failed_stage"]:
            failed_at[row["failed_stage"]] = failed_at.get(row["failed_stage"], 0) + 1
    print(json.dumps({
        "projects_file": Path(args.projects).name, "projects": len(rows), "executable": sum(r["ok"] for r in rows),
        "image_built": sum(bool(r["image_size_mb"]) for r in rows), "failed_at": failed_at,
        "without_recipe": sum(1 for r in rows if not r["recipe"]), "jobs": args.jobs,
        "cold_wall_s": round(cold_wall, 1), "cached_wall_s": round(cached_wall, 2),
        "images_total_mb": round(total / 1e6, 1), "images_unique_mb": round(unique / 1e6, 1),
        "shared_disk_share": round(shared, 3), "tests_collected": sum(r["tests"] for r in rows),
        "tests_passing": sum(r["passing"] for r in rows), "per_project": rows,
    }))


if __name__ == "__main__":
    main()
