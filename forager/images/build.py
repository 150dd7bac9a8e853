"""Build executable images of real Python projects: base -> Python environment -> repository.

    fetch       the source on the host: a git repository at one commit (forager.images.source)
    detect      the install plan from the project's files, then the recipe's overrides
    resolve     pip resolves the environment on the host into a lock (forager.images.resolve), from the
                files as the recipe's pre_install leaves them (forager.images.pre_install)
    wheelhouse  every locked package as a wheel on the host
    env         forager/env:HASH      venv + the locked packages, installed with --no-index
    repo        forager/repo-NAME:HASH  the repository at /repo, installed editable, owned by `forager`
    collect, verify                   the suite collected and run once inside the image -> manifest

Each layer is made by running one script in a container (files copied in, never bind-mounted) and
committing it, so the wheelhouse never lands in a layer. Tags hash their inputs: an unchanged input
never rebuilds, and images of one base share its layers (projects with equal locks share the env).
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker
import docker.errors

from forager.core import DEFAULT_TEST_COMMAND, ForagerError
from forager.files import content_digest
from forager.home import forager_home
from forager.images.bases import choose_base
from forager.images.detect import InstallPlan, detect_install
from forager.images.manifest import ImageBuildError, Manifest, ManifestEntry
from forager.images.pre_install import pre_installed_tree
from forager.images.resolve import Lock, Target, ensure_lock_wheelhouse, resolve_lock
from forager.images.source import FetchedSource, fetch_source
from forager.images.spec import ImageSpec, Recipe, normalize_name, parse_source, recipe_for
from forager.images.layers import (
    UID,
    USER,
    VENV,
    WORKDIR,
    commit_layer,
    env_script,
    repo_script,
    test_command_for,
)
from forager.images.verify import verify_image
from forager.runtime.docker import image_exists

BASE_IMAGE = "forager/base:latest"
ENV_REPOSITORY = "forager/env"
REPO_PREFIX = "forager/repo-"

StageCallback = Callable[[str, str, str], None]
"""(source, stage, detail): called as a build moves on; stage is one named at the top, `done`, `cached` or `failed`."""


@dataclass
class BuildOptions:
    recipe: str | None = None
    """A recipe (path or name in images/recipes) for every source; default: images/recipes/NAME.yaml if any."""
    base: str | None = None
    """The base image for every source; default: the base whose Python the project accepts (forager.images.bases)."""
    python: str | None = None
    """The Python (`3.9`) for every source, instead of the one chosen from `requires-python`."""
    online: bool = False
    """Install the environment from the package index inside the image instead of the host's wheelhouse."""
    min_pass_share: float = 0.8
    test_timeout: float = 900.0
    layer_timeout: float = 1800.0
    force: bool = False
    """Rebuild the layers and verify again even when their tags exist."""
    verify: bool = True


@dataclass
class BuildResult:
    source: str
    tag: str | None = None
    entry: ManifestEntry | None = None
    error: ImageBuildError | None = None
    cached: bool = False
    """Nothing was built or run: every layer and the manifest entry already existed."""
    build_s: float = 0.0
    log: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.entry is not None and self.entry.executable


def build_images(sources: list[str], options: BuildOptions | None = None, jobs: int = 2,
                 on_stage: StageCallback | None = None) -> list[BuildResult]:
    """Build every source, `jobs` at a time; results come back in the order of `sources`."""
    options = options or BuildOptions()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="forager-build") as pool:
        return list(pool.map(lambda s: build_image(s, options, on_stage), sources))


def build_image(source: str | ImageSpec, options: BuildOptions | None = None,
                on_stage: StageCallback | None = None) -> BuildResult:
    """Build (or find) one image and verify it; a failure is a result with `error`, never an exception."""
    options = options or BuildOptions()
    spec = source if isinstance(source, ImageSpec) else None
    text = spec.source if spec else str(source)
    log_path = _log_path(text)
    build = _Build(text, options, log_path, on_stage or (lambda *_: None))
    result = BuildResult(text, log=str(log_path))
    started = time.monotonic()
    try:
        build.run(spec, result)
    except ImageBuildError as err:
        if not err.log_path:
            err = ImageBuildError(err.stage, err.reason, log_path, err.detail)
        result.error = err
    except (ForagerError, docker.errors.DockerException, OSError) as err:
        result.error = ImageBuildError(build.stage, f"{type(err).__name__}: {err}", log_path)
        build.log(traceback.format_exc())
    finally:
        result.build_s = time.monotonic() - started
        result.stage_s = build.stage_s
        Manifest().record_build(text, result.error, result.entry is not None, result.tag, str(log_path))
        if result.error:
            build.log(f"FAILED at {result.error.stage}: {result.error.reason}")
            build.notify("failed", f"{result.error.stage}: {result.error.reason}")
        else:
            build.notify("cached" if result.cached else "done", result.tag or "")
        build.close()
    return result


@dataclass(frozen=True)
class _Plan:
    """What detection and the recipe decided for one build."""

    install: InstallPlan
    name: str
    version: str | None
    recipe: Recipe
    base: str
    base_id: str
    target: Target
    build_env: dict[str, str]
    test_command: str


class _Build:
    """One build's state: its log file, its current stage and the stage timings."""

    def __init__(self, source: str, options: BuildOptions, log_path: Path, on_stage: StageCallback) -> None:
        self.source, self.options, self.on_stage = source, options, on_stage
        self.log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.stage = "fetch"
        self.stage_s: dict[str, float] = {}
        self._stage_start = time.monotonic()

    def log(self, message: str) -> None:
        if message:
            self.log_file.write(message if message.endswith("\n") else message + "\n")
            self.log_file.flush()

    def notify(self, stage: str, detail: str = "") -> None:
        self.on_stage(self.source, stage, detail)

    def enter(self, stage: str, detail: str = "") -> None:
        now = time.monotonic()
        self.stage_s[self.stage] = round(self.stage_s.get(self.stage, 0.0) + now - self._stage_start, 3)
        self.stage, self._stage_start = stage, now
        self.log(f"\n== {stage} {detail} ({datetime.now(timezone.utc).isoformat(timespec='seconds')})")
        self.notify(stage, detail)

    def close(self) -> None:
        self.stage_s[self.stage] = round(self.stage_s.get(self.stage, 0.0) + time.monotonic() - self._stage_start, 3)
        self.stage_s.pop("manifest", None)
        self.log_file.close()

    # -- the pipeline ------------------------------------------------------------------------------
    def run(self, spec: ImageSpec | None, result: BuildResult) -> None:
        self.enter("fetch", self.source)
        spec = spec or parse_source(self.source)
        client = docker.from_env(timeout=600)
        try:
            self._run(spec, client, result)
        finally:
            client.close()

    def _run(self, spec: ImageSpec, client: docker.DockerClient, result: BuildResult) -> None:
        fetched = fetch_source(spec, self.log)
        self.log(f"source {fetched.description} -> {fetched.root} at {fetched.commit}")
        self.enter("detect")
        plan = self._plan(spec, fetched, client)
        self.enter("resolve")
        # The install sees the files as the recipe's pre_install leaves them, so resolution must too.
        root = pre_installed_tree(client, plan.base, fetched, plan.recipe.pre_install, self.log)
        lock = resolve_lock(root, fetched.commit, plan.install, plan.target, plan.recipe.requirements,
                            self.log, replace_requirements=plan.recipe.replace_requirements, env=plan.build_env,
                            pre_install=plan.recipe.pre_install)
        self.log("lock:\n  " + "\n  ".join(lock.pins))

        # A layer's tag hashes what it is made from: its parent, its script and the files copied in.
        env_layer_script = env_script(plan.recipe, online=self.options.online)
        env_tag = f"{ENV_REPOSITORY}:" + content_digest({"base": plan.base_id, "pins": lock.pins,
                                                          "script": env_layer_script})
        repo_layer_script = repo_script(plan.recipe, plan.build_env)
        tag = repo_tag(plan.name, env_tag, fetched, repo_layer_script, plan.build_env)
        result.tag = tag
        labels = {"forager": "1", "forager.name": plan.name, "forager.version": plan.version or "",
                  "forager.source": spec.source, "forager.source_kind": spec.kind,
                  "forager.base_commit": fetched.commit, "forager.python": plan.target.python,
                  "forager.base": plan.base, "forager.env": env_tag, "forager.test_command": plan.test_command}
        with _tag_lock(tag):
            repo_cached = image_exists(client, tag) and not self.options.force
            if not repo_cached:
                with _tag_lock(env_tag):
                    if not image_exists(client, env_tag) or self.options.force:
                        wheels = None
                        if not self.options.online:
                            self.enter("wheelhouse", f"{len(lock.pins)} packages")
                            wheels = ensure_lock_wheelhouse(lock, plan.target, self.log, plan.build_env)
                        self.enter("env", env_tag)
                        self._env_layer(client, plan.base, env_tag, env_layer_script, lock, wheels, plan.recipe,
                                        plan.target)
                self.enter("repo", tag)
                self._repo_layer(client, env_tag, tag, repo_layer_script, fetched, plan.build_env, labels)
        self._verify(client, tag, labels, plan, lock, fetched, repo_cached, result)

    def _plan(self, spec: ImageSpec, fetched: FetchedSource, client: docker.DockerClient) -> _Plan:
        """The install plan, the recipe's overrides and the base image's Python: what the layers are made of."""
        install = detect_install(fetched.root)
        name = normalize_name(spec.name or install.name or fetched.name or fetched.root.name)
        recipe, recipe_path = (spec.recipe, spec.recipe_path) if spec.recipe else recipe_for(name, self.options.recipe)
        recipe = recipe or Recipe()
        if recipe_path:
            self.log(f"recipe {recipe_path}: {recipe.model_dump(exclude_defaults=True)}")
        version = recipe.version or spec.version or install.version or fetched.version
        if recipe.extras is not None:
            install.extras = list(recipe.extras)
        self.log("install plan: " + install.model_dump_json(indent=1))
        if not install.has_tests and not recipe.test_command:
            raise ImageBuildError("detect", "no tests collected: the source has no test files (test_*.py, *_test.py); "
                                  "a source release may leave them out: build from the git repository instead")
        if install.missing_test_support and not recipe.test_command:
            raise ImageBuildError("detect", install.missing_test_support)
        chosen = choose_base(client, fetched.root, install, base=recipe.base or self.options.base,
                             python=recipe.python or self.options.python, log=self.log,
                             on_bootstrap=lambda suite: self.enter("base", suite))
        base, base_id, target = chosen.base, chosen.base_id, chosen.target
        if chosen.install is not install:
            install = chosen.install
            if recipe.extras is not None:
                install.extras = list(recipe.extras)
            self.log("install plan for the base's Python: " + install.model_dump_json(indent=1))
        build_env = {"SETUPTOOLS_SCM_PRETEND_VERSION": version} if install.vcs_version and version else {}
        build_env.update(recipe.env)
        return _Plan(install, name, version, recipe, base, base_id, target, build_env,
                     test_command_for(recipe, install))

    def _verify(self, client: docker.DockerClient, tag: str, labels: dict[str, str], plan: _Plan, lock: Lock,
                fetched: FetchedSource, repo_cached: bool, result: BuildResult) -> None:
        """Collect and run the suite in the image and write its manifest entry (unless one already holds)."""
        recipe = plan.recipe
        min_share = recipe.min_pass_share if recipe.min_pass_share is not None else self.options.min_pass_share
        previous = Manifest().get(tag)
        if repo_cached and previous and previous.test_command.startswith(plan.test_command) \
                and (previous.min_pass_share == min_share or not self.options.verify):
            self.log(f"{tag}: the image and its manifest entry exist; nothing to do")
            result.cached, result.entry = True, previous
            self._raise_if_not_executable(previous)
            return
        if not self.options.verify:
            return
        self.enter("collect", tag)
        timeout = recipe.test_timeout or self.options.test_timeout
        verification = verify_image(tag, plan.test_command, min_pass_share=min_share, timeout=timeout, client=client,
                                    log=self.log, on_run=lambda n: self.enter("verify", f"{n} tests"))
        self.log(verification.log[-20000:])
        self.enter("manifest")
        entry = _entry(client, tag, labels, verification, min_share, self.log_file.name)
        entry.requirements = lock.pins
        entry.notes = [*plan.install.notes, *lock.notes, f"source: {fetched.description}"]
        entry.stage_s = {k: v for k, v in self.stage_s.items() if k != "manifest"}
        entry.build_s = round(sum(entry.stage_s.values()), 2)
        Manifest().put(entry)
        result.entry = entry
        self._raise_if_not_executable(entry)

    def _raise_if_not_executable(self, entry: ManifestEntry) -> None:
        if not entry.executable and entry.failure:
            stage, _, reason = entry.failure.partition(": ")
            raise ImageBuildError(stage, reason, entry.log)

    # -- layers --------------------------------------------------------------------------------------
    def _env_layer(self, client, base: str, tag: str, script: str, lock: Lock, wheels: Path | None, recipe: Recipe,
                   target: Target) -> None:
        files = {"/tmp": [("wheelhouse", wheels, 0)]} if wheels is not None else \
            {"/tmp": [("requirements.txt", "\n".join(lock.pins) + "\n", 0)]}
        network = bool(recipe.system_packages) or self.options.online
        labels = {"forager": "1", "forager.kind": "env", "forager.python": target.python, "forager.base": base}
        changes = [f"ENV PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
                   f"ENV VIRTUAL_ENV={VENV}", 'CMD ["bash"]']
        commit_layer(client, base, tag, script, files, changes, labels, network=network, stage="env",
                     log_file=self.log_file, timeout=self.options.layer_timeout)

    def _repo_layer(self, client, env_tag: str, tag: str, script: str, fetched: FetchedSource,
                    build_env: dict[str, str], labels: dict[str, str]) -> None:
        files = {"/": [("repo", fetched.root, UID)]}
        changes = [*(f"ENV {k}={json.dumps(v)}" for k, v in build_env.items()), f"USER {USER}", f"WORKDIR {WORKDIR}",
                   'CMD ["bash"]']
        commit_layer(client, env_tag, tag, script, files, changes, {**labels, "forager.kind": "repo"},
                     network=False, stage="repo", log_file=self.log_file, timeout=self.options.layer_timeout)


def repo_tag(name: str, env_tag: str, fetched: FetchedSource, script: str, build_env: dict[str, str]) -> str:
    """The repo layer's tag: its parent, the commit, what the `.git` holds (two copies of one commit can
    hold different objects, a later fix among them), its script and the build's variables."""
    return f"{REPO_PREFIX}{name}:" + content_digest({"env": env_tag, "commit": fetched.commit,
                                                     "git": fetched.git_digest, "script": script,
                                                     "env_vars": build_env})


def verify_tag(tag: str, min_pass_share: float | None = None, timeout: float = 900.0, log=print) -> ManifestEntry:
    """Verify an existing image again (collect, run the suite) and update its manifest entry."""
    client = docker.from_env(timeout=600)
    try:
        try:
            labels = client.images.get(tag).labels or {}
        except docker.errors.ImageNotFound as err:
            raise ForagerError(f"no image {tag!r} on this Docker engine; `forager images list` shows the built ones") \
                from err
        previous = Manifest().get(tag)
        share = min_pass_share if min_pass_share is not None else previous.min_pass_share if previous else 0.8
        command = labels.get("forager.test_command") or DEFAULT_TEST_COMMAND
        verification = verify_image(tag, command, min_pass_share=share, timeout=timeout, client=client, log=log)
        entry = _entry(client, tag, labels, verification, share, previous.log if previous else "")
        if previous:
            entry.requirements, entry.notes = previous.requirements, previous.notes
            entry.build_s, entry.stage_s = previous.build_s, previous.stage_s
        Manifest().put(entry)
        return entry
    finally:
        client.close()


def _entry(client, tag: str, labels: dict[str, str], verification, min_share: float, log: str) -> ManifestEntry:
    image = client.images.get(tag)
    return ManifestEntry(
        tag=tag, name=labels.get("forager.name") or tag.split(":")[0].rsplit("/", 1)[-1],
        version=labels.get("forager.version") or None, source=labels.get("forager.source", tag),
        source_kind=labels.get("forager.source_kind", "image"), commit=labels.get("forager.base_commit", ""),
        python=labels.get("forager.python", ""), workdir=WORKDIR, test_command=verification.test_command,
        env_image=labels.get("forager.env", ""), base_image=labels.get("forager.base", ""),
        tests=verification.tests, baseline=verification.baseline, collected=len(verification.tests),
        passed=verification.passed, failed=verification.failed, skipped=verification.skipped,
        pass_share=round(verification.pass_share, 4), min_pass_share=min_share,
        executable=verification.failure is None,
        failure=f"{verification.failure_stage}: {verification.failure}" if verification.failure else None,
        collection_errors=verification.collection_errors, suite_duration_s=round(verification.duration_s, 2),
        image_size=int(image.attrs.get("Size", 0)), log=log,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


# -- helpers -----------------------------------------------------------------------------------------
_tag_locks: dict[str, threading.Lock] = {}
_tag_locks_guard = threading.Lock()


def _tag_lock(tag: str) -> threading.Lock:
    """One build of a tag at a time in this process (two projects with one lock share an env layer)."""
    with _tag_locks_guard:
        return _tag_locks.setdefault(tag, threading.Lock())


def _log_path(source: str) -> Path:
    directory = forager_home() / "logs" / "images"
    directory.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", source.strip("/"))[-60:] or "image"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return directory / f"{stamp}-{slug}-{content_digest(f'{time.time_ns()}{source}', length=6)}.log"


__all__ = ["BuildOptions", "BuildResult", "InstallPlan", "build_image", "build_images", "verify_tag"]
