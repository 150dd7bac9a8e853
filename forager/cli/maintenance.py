"""`forager gc`: clean up after Forager processes that are gone."""

from __future__ import annotations

import typer

from forager.cli import console


def gc(all_: bool = typer.Option(False, "--all", help="Remove every Forager container and scratch directory.")) -> None:
    """Remove containers and scratch directories whose owning Forager process is gone."""
    from forager.runtime.gc import collect_garbage

    report = collect_garbage(everything=all_)
    if report.docker_error:
        console.print(f"[yellow]docker:[/] {report.docker_error}")
    console.print(f"removed {len(report.containers)} container(s) and {len(report.directories)} scratch "
                  f"director{'y' if len(report.directories) == 1 else 'ies'}; {report.kept} still owned by live processes")
