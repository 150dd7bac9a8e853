"""`forager gc`: clean up after Forager processes that are gone."""

from __future__ import annotations

import typer

from forager.cli import console


def gc(
    all_: bool = typer.Option(False, "--all", help="Remove every Forager container and scratch directory."),
    docker_host: list[str] = typer.Option(
        [], "--docker-host", help="Clean this Docker engine (tcp://, ssh://, unix://) instead of the default one; "
        "repeatable. Containers this machine's processes started are judged by their owner; others go only with "
        "--all."),
) -> None:
    """Remove containers and scratch directories whose owning Forager process is gone."""
    from rich.markup import escape

    from forager.runtime.gc import collect_garbage

    report = collect_garbage(everything=all_, docker_hosts=docker_host)
    for line in (report.docker_error or "").splitlines():
        console.print(f"[yellow]docker:[/] {escape(line)}")
    console.print(f"removed {len(report.containers)} container(s) and {len(report.directories)} scratch "
                  f"director{'y' if len(report.directories) == 1 else 'ies'}; {report.kept} still owned by live processes")
