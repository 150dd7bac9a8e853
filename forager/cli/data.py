"""`forager dedup`, `forager export` and `forager view`: what to do with collected trajectories."""

from __future__ import annotations

from pathlib import Path

import typer

from forager.cli import console, fail


def dedup(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(..., help="Where to write the kept trajectories (JSONL; not inside an input directory)."),
    threshold: float = typer.Option(0.5, help="Drop a trajectory whose estimated Jaccard similarity with a kept one of its repository is at least this."),
    num_perm: int = typer.Option(128, help="MinHash permutations."),
    seed: int = typer.Option(0, help="Seed of the MinHash permutations."),
) -> None:
    """Near-deduplicate trajectories per repository by MinHash over their actions (CWM: kept pairs below 0.5)."""
    from rich.table import Table

    from forager.trajectories.dedup import dedup_files

    if not 0.0 < threshold <= 1.0:
        fail(f"--threshold must be in (0, 1], not {threshold}")
    if num_perm < 1:
        fail(f"--num-perm must be at least 1, not {num_perm}")
    result = dedup_files(inputs, out, threshold=threshold, num_perm=num_perm, seed=seed)
    table = Table("repository", "kept", "dropped")
    for repo, count in result.repos.items():
        table.add_row(repo or "(none)", str(count.kept), str(count.dropped))
    console.print(table)
    total_dropped = len(result.dropped)
    console.print(f"kept {len(result.kept_ids)} of {len(result.kept_ids) + total_dropped} trajectories "
                  f"({total_dropped} near-duplicates dropped) -> {out}")
    if out.suffix == ".jsonl" and any(p.is_dir() and p.resolve() == out.resolve().parent for p in inputs):
        console.print(f"[yellow]note:[/] {out} is inside an input directory: reading that directory again "
                      "reads both the original and the deduplicated trajectories")


def export_command(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(..., help="Output prefix: writes PREFIX.jsonl and/or PREFIX.parquet."),
    format: str = typer.Option("both", "--format", help="jsonl, parquet or both."),  # noqa: A002
    mask_observations: float = typer.Option(
        1.0, help="Share of observations (tool outputs) masked from the loss: 1.0 masks them all (plain SFT); "
                  "CWM's mid-training masked 0.5 and trained on the rest."),
    resolved_only: bool = typer.Option(False, help="Only resolved trajectories."),
    min_reward: float | None = typer.Option(None, help="Only trajectories with at least this reward."),
    terminations: str | None = typer.Option(None, help="Only these endings, comma-separated (e.g. submitted,out_of_turns)."),
    tokens: bool = typer.Option(False, help="Also write input_ids and assistant_masks (needs token ids in every trajectory)."),
    seed: int = typer.Option(0, help="Seed of the observation masking."),
) -> None:
    """Write an SFT dataset (chat messages with a per-message loss weight) from trajectories."""
    from forager.trajectories.export import ExportFilter, export_dataset

    formats = {"both": ["jsonl", "parquet"], "jsonl": ["jsonl"], "parquet": ["parquet"]}.get(format)
    if formats is None:
        fail(f"--format must be jsonl, parquet or both, not {format!r}")
    if not 0.0 <= mask_observations <= 1.0:
        fail(f"--mask-observations is a share in [0, 1], not {mask_observations}")
    wanted = frozenset(t.strip() for t in terminations.split(",") if t.strip()) if terminations else None
    result = export_dataset(inputs, out, formats=formats, mask_observations=mask_observations, seed=seed,
                            filter=ExportFilter(resolved_only, min_reward, wanted), tokens=tokens)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items()))
    console.print(f"exported {result.rows} trajectories" + (f" (left out: {skipped})" if skipped else ""))
    observed = result.observations_trained + result.observations_masked
    if observed:
        console.print(f"observations: {result.observations_masked} masked, {result.observations_trained} trained")
    for path in result.paths:
        console.print(f"wrote {path}")


def view(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Trajectory JSONL files, or directories of them."),
    out: Path = typer.Option(Path("trajectories.html"), help="The HTML file to write."),
    title: str | None = typer.Option(None, help="Page title (default: the inputs)."),
) -> None:
    """Write one self-contained HTML page to browse trajectories (no network needed to open it)."""
    from forager.trajectories.view import write_view

    path = write_view(inputs, out, title=title)
    console.print(f"wrote {path}")
    console.print(path.resolve().as_uri())
