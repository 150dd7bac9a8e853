"""`forager images prune`: remove Forager's env and repo images that no manifest entry uses and nothing
keeps (`keep_image`: the SWE-bench instance images, built without a manifest entry), and Forager's
dangling layers. Base and sample images are never touched."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from forager.files import atomic_write_text
from forager.home import forager_home
from forager.images.manifest import Manifest

KINDS = ("repo", "env")  # repo images first: an env tag goes only once nothing built on it needs the tag
_keep_lock = threading.Lock()


def kept_path() -> Path:
    return forager_home() / "images" / "kept.json"


def keep_image(tag: str, why: str) -> None:
    """Keep `tag` (and the env image it is built on) through `prune` without `--everything`; `why` is shown."""
    with _keep_lock:
        kept = kept_images()
        if kept.get(tag) != why:
            kept[tag] = why
            atomic_write_text(kept_path(), json.dumps(kept, indent=1, sort_keys=True) + "\n")


def kept_images() -> dict[str, str]:
    """Tag -> why, of the images `keep_image` asked to keep."""
    try:
        return dict(json.loads(kept_path().read_text()))
    except (OSError, ValueError):
        return {}


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    stale_entries: list[str] = field(default_factory=list)
    """Manifest entries whose image is gone (dropped from the manifest)."""
    dangling: int = 0
    reclaimed_bytes: int = 0


def prune_images(everything: bool = False, dry_run: bool = False, client: docker.DockerClient | None = None
                 ) -> PruneReport:
    """Remove unused env/repo images (all of them with `everything`) and Forager's dangling layers."""
    own = client is None
    client = client or docker.from_env(timeout=600)
    manifest = Manifest()
    report = PruneReport()
    try:
        entries = manifest.entries()
        present = {tag for image in client.images.list(filters={"label": "forager=1"}) for tag in image.tags}
        report.stale_entries = [e.tag for e in entries if e.tag not in present]
        live = [] if everything else [e for e in entries if e.tag in present]
        keep = {e.tag for e in live} | {e.env_image for e in live} | _kept_and_their_envs(client, everything)
        for kind in KINDS:
            for image in client.images.list(filters={"label": ["forager=1", f"forager.kind={kind}"]}):
                for tag in image.tags:
                    if tag in keep:
                        report.kept.append(tag)
                        continue
                    report.removed.append(tag)
                    if not dry_run:
                        try:
                            client.images.remove(tag)
                            if len(image.tags) == 1:
                                report.reclaimed_bytes += int(image.attrs.get("Size", 0))
                        except docker.errors.APIError:  # still used by a container: keep it
                            report.removed.remove(tag)
                            report.kept.append(tag)
        if not dry_run:
            result = client.images.prune(filters={"dangling": True, "label": "forager=1"})
            report.dangling = len(result.get("ImagesDeleted") or [])
            report.reclaimed_bytes += int(result.get("SpaceReclaimed") or 0)
            gone = report.stale_entries + ([e.tag for e in entries] if everything else [])
            if gone:
                manifest.remove(sorted(set(gone)))
        return report
    finally:
        if own:
            client.close()


def _kept_and_their_envs(client: docker.DockerClient, everything: bool) -> set[str]:
    if everything:  # nothing is kept, and what was is forgotten
        if kept_path().exists():
            atomic_write_text(kept_path(), "{}\n")
        return set()
    keep = set()
    for tag in kept_images():
        try:
            labels = client.images.get(tag).labels or {}
        except docker.errors.ImageNotFound:
            continue
        keep |= {tag, *([labels["forager.env"]] if labels.get("forager.env") else [])}
    return keep
