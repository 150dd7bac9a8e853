"""`forager images ...`: build, list, verify and prune executable repository images."""

from __future__ import annotations

import json

import typer

from forager.cli import console, dim, docker_engine, table_console

images_app = typer.Typer(help="Build executable repository images (no registry needed).", no_args_is_help=True)


@images_app.command("bootstrap")
def images_bootstrap(
    suite: str = typer.Option("bookworm", help="Debian suite: bullseye (Python 3.9), bookworm (3.11), trixie (3.13)."),
    from_registry: bool = typer.Option(False, help="Build FROM python:3.11-slim instead of debootstrap (bookworm)."),
    mirror: str | None = typer.Option(None, help="Debian mirror (default: the one this host's apt uses)."),
    force: bool = typer.Option(False, help="Rebuild even if the image exists."),
) -> None:
    """Build a Debian-based Python base image offline (debootstrap + docker import); builds do it when needed."""
    from forager.images.bootstrap import DEBIAN_SUITE, base_alias, bootstrap_base_image

    tag = bootstrap_base_image(docker_engine(), suite=suite, mirror=mirror, from_registry=from_registry, force=force,
                               log=dim)
    also = f"{base_alias(suite)}{', forager/base:latest' if suite == DEBIAN_SUITE else ''}"
    console.print(f"base image: [bold]{tag}[/] (also {also})")


@images_app.command("sample")
def images_sample(
    from_registry: bool = typer.Option(False, help="Base it on python:3.11-slim from a registry."),
    check: bool = typer.Option(False, help="Build nothing: fail, saying how to build it, if the image is missing."),
) -> None:
    """Build the sample repository's image (and the base image first, if needed)."""
    if check:
        from forager.images.forager_image import require_sample_image

        console.print(f"sample image: [bold]{require_sample_image(docker_engine())}[/]")
        return
    from forager.images.sample import build_sample_image

    tag = build_sample_image(docker_engine(), from_registry=from_registry, log=dim)
    console.print(f"sample image: [bold]{tag}[/] (also forager/sample:latest)")


@images_app.command("forager")
def images_forager(
    train: bool = typer.Option(False, help="Add the train extra (torch, transformers, ...): the trainer's image."),
    force: bool = typer.Option(False, help="Rebuild even if the images exist."),
) -> None:
    """Build Forager's own image from this checkout (the docker-compose stack's collector, Ray nodes, trainer)."""
    from forager.images.forager_image import build_forager_image

    image = build_forager_image(docker_engine(), train=train, force=force, log=dim)
    console.print(f"forager image: [bold]{image.tag}[/] (also {image.alias}; {image.size_bytes / 1e9:.1f} GB, "
                  f"{'cached' if image.cached else f'built in {image.build_s:.0f}s'})")


@images_app.command("build")
def images_build(
    sources: list[str] = typer.Argument(..., help="NAME==VERSION (PyPI sdist), a git URL[@COMMIT], or a directory."),
    recipe: str | None = typer.Option(None, help="Recipe file or name in images/recipes (default: NAME.yaml)."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Builds at a time."),
    base: str | None = typer.Option(None, help="Base image (default: the one whose Python the project accepts)."),
    python: str | None = typer.Option(None, help="Python version (3.9, 3.11, 3.13) instead of requires-python's."),
    min_pass_share: float = typer.Option(0.8, help="Share of the tests that ran that must pass."),
    test_timeout: float = typer.Option(900.0, help="Seconds the whole suite may take when verifying."),
    online: bool = typer.Option(False, help="Install from the package index inside the image, not the wheelhouse."),
    force: bool = typer.Option(False, help="Rebuild and verify again even when the tags exist."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per source."),
) -> None:
    """Build executable images of Python projects: fetch, detect, wheelhouse, env and repo layers, verify."""
    from forager.images.build import BuildOptions, build_images
    from forager.images.progress import BuildProgress

    options = BuildOptions(recipe=recipe, base=base, python=python, online=online, min_pass_share=min_pass_share,
                           test_timeout=test_timeout, force=force)
    docker_engine().close()  # no engine: say so now, not once per source
    with BuildProgress(sources, console=console) as progress:
        results = build_images(sources, options, jobs=jobs, on_stage=progress.update)
    for r in results:
        e = r.entry
        if as_json:
            print(json.dumps({"source": r.source, "tag": r.tag, "ok": r.ok, "cached": r.cached,
                              "build_s": round(r.build_s, 2), "log": r.log,
                              "error": {"stage": r.error.stage, "reason": r.error.reason} if r.error else None,
                              "collected": e.collected if e else 0, "passed": e.passed if e else 0}))
        elif r.error:
            console.print(f"[red]failed[/] {r.source} at [bold]{r.error.stage}[/]: {r.error.reason}\n  log: {r.log}")
        else:
            console.print(f"[green]ok[/] {r.source} -> [bold]{r.tag}[/] ({e.passed}/{e.collected} tests pass"
                          f"{', cached' if r.cached else ''}, {r.build_s:.1f}s)" if e else f"built {r.tag}")
    if any(r.error for r in results):
        raise typer.Exit(1)


@images_app.command("list")
def images_list(as_json: bool = typer.Option(False, "--json", help="Print the manifest entries as JSON lines.")) -> None:
    """The images in the manifest (source, Python, tests collected and passing, size, build time), then the
    builds that failed before they had an image."""
    from rich.table import Table

    from forager.images.manifest import Manifest

    manifest = Manifest()
    entries, failures = manifest.entries(), manifest.failures()
    if as_json:
        for e in entries:
            print(e.model_dump_json(exclude={"tests", "baseline"}))
        for f in failures:
            print(json.dumps({"failed_build": True, **f.model_dump(mode="json")}))
        return
    out = table_console()
    table = Table("tag", "source", "python", "tests", "passing", "ok", "size", "build")
    table.columns[0].no_wrap = True
    for e in entries:
        table.add_row(e.tag, e.source, e.python, str(e.collected), f"{e.passed} ({e.pass_share:.0%})",
                      "[green]yes[/]" if e.executable else "[red]no[/]", f"{e.image_size / 1e6:.0f} MB",
                      f"{e.build_s:.0f}s")
    out.print(table)
    for e in entries:
        if e.failure:
            out.print(f"[red]{e.tag}[/]: {e.failure} (log: {e.log})")
    if failures:
        failed = Table("failed build", "stage", "reason", "when", "log", title="builds that failed before an image")
        failed.columns[0].no_wrap = True
        for f in failures:
            failed.add_row(f.source, f.stage, f.reason, f.created, f.log)
        out.print(failed)


@images_app.command("verify")
def images_verify(
    tag: str = typer.Argument(..., help="An image tag (forager/repo-NAME:HASH)."),
    min_pass_share: float | None = typer.Option(None, help="Share that must pass (default: the entry's)."),
    test_timeout: float = typer.Option(900.0, help="Seconds the whole suite may take."),
) -> None:
    """Collect and run an image's tests again, and update its manifest entry."""
    from forager.images.build import verify_tag

    entry = verify_tag(tag, min_pass_share, test_timeout, log=dim)
    verdict = "[green]executable[/]" if entry.executable else f"[red]not executable[/] ({entry.failure})"
    console.print(f"{tag}: {verdict}; {entry.passed} passed, {entry.failed} failed, {entry.skipped} skipped of "
                  f"{entry.collected} collected in {entry.suite_duration_s:.1f}s")
    if not entry.executable:
        raise typer.Exit(1)


@images_app.command("prune")
def images_prune(
    all_: bool = typer.Option(False, "--all", help="Remove every env and repo image and empty the manifest."),
    dry_run: bool = typer.Option(False, help="Only say what would go."),
) -> None:
    """Remove Forager's env and repo images that no manifest entry uses, and Forager's dangling layers."""
    from forager.images.prune import prune_images

    report = prune_images(everything=all_, dry_run=dry_run, client=docker_engine())
    for tag in report.removed:
        console.print(f"{'would remove' if dry_run else 'removed'} {tag}")
    console.print(f"{len(report.removed)} image tag(s) {'to remove' if dry_run else 'removed'}, {report.dangling} "
                  f"dangling layer(s), {report.reclaimed_bytes / 1e6:.0f} MB reclaimed; {len(report.kept)} kept; "
                  f"{len(report.stale_entries)} manifest entr{'y' if len(report.stale_entries) == 1 else 'ies'} "
                  "without an image")
