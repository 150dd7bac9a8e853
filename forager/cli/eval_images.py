"""`forager eval images`: SWE-bench instances' images, built offline from swebench's specs and local mirrors.

Registered by `forager/cli/eval.py` as `forager eval images`; run it alone with
`python -c "import typer; from forager.cli.eval_images import images_command; typer.run(images_command)" ...`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from forager.cli import console, docker_engine, table_console

if TYPE_CHECKING:
    from forager.eval.instances import InstanceImage


def images_command(
    dataset: Path = typer.Option(..., "--dataset", help="swebench rows: a JSON, JSONL or Parquet file (or a dataset directory)."),
    repos: Path = typer.Option(..., "--repos", help="Mirrors of the repositories, named OWNER__NAME: bare repos or work trees (also OWNER__NAME.git), or git bundles OWNER__NAME.bundle."),
    specs: str | None = typer.Option(None, "--specs", help="swebench specs: swebench 4.x's constants/python.py or wheel, or a JSON/YAML file {repo: {version: spec}} that may `extends:` one and add `extra_requirements` (default: the installed swebench's)."),
    instance_ids: list[str] = typer.Option([], "--instance-ids", help="Only these instances; repeatable."),
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Images built at once."),
    force: bool = typer.Option(False, help="Rebuild the layers even when their tags exist."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per instance instead of the table."),
) -> None:
    """Build every instance's image (the repository at base_commit, the spec's environment) and show what each took."""
    from forager.eval.instances import build_instance_images
    from forager.eval.runs import load_instances
    from forager.eval.specs import load_specs
    from forager.images.progress import BuildProgress

    rows = load_instances(str(dataset), instance_ids=instance_ids)
    table = load_specs(specs)
    client = docker_engine()  # no engine: say so now, not once per instance
    with BuildProgress([str(row["instance_id"]) for row in rows], console=console) as progress:
        images = build_instance_images(rows, table, repos, workers=workers, on_progress=progress.update, force=force)
    if not console.is_terminal:
        console.line()  # the live table's last frame ends without a newline when the output is not a terminal
    sizes = {image.tag: _size(client, image.tag) for image in images if image.tag}
    client.close()
    if as_json:
        for image in images:
            print(json.dumps({"instance_id": image.instance_id, "tag": image.tag, "cached": image.cached,
                              "build_s": image.build_s, "size": sizes.get(image.tag), "error": image.error,
                              "notes": image.notes, "log": image.log}))
    else:
        _show(images, sizes)
    if any(image.error for image in images):
        raise typer.Exit(1)


def _show(images: list[InstanceImage], sizes: dict[str | None, int]) -> None:
    from rich.table import Table

    out = table_console()
    table = Table("instance", "image", "build", "seconds", "size", "error")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for image in images:
        size = sizes.get(image.tag)
        table.add_row(image.instance_id, image.tag or "", "" if image.error else "cached" if image.cached else "cold",
                      f"{image.build_s:.1f}", f"{size / 1e6:.0f} MB" if size else "",
                      f"[red]{(image.error or '').splitlines()[0] if image.error else ''}[/]")
    out.print(table)
    for image in images:
        for note in image.notes:
            out.print(f"[dim]{image.instance_id}: {note}[/]")
        if image.error and image.log:
            out.print(f"[dim]{image.instance_id}: log {image.log}[/]")
    built = sum(1 for image in images if image.tag)
    out.print(f"{built} of {len(images)} instance image(s) ready")


def _size(client, tag: str | None) -> int:
    try:
        return int(client.images.get(tag).attrs.get("Size", 0))
    except Exception:  # noqa: BLE001 - a size is only shown
        return 0


__all__ = ["images_command"]
