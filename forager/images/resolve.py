"""Resolve a project's environment on the host into a lock, and download it into a wheelhouse.

pip resolves the project directory itself (so dependencies computed by `setup.py` are found too), its
test extras, the detected test requirements, its build requirements and pytest, for the image's
Python and platform. The lock (name==version lines) is cached by the commit and the plan, so a
rebuild neither resolves nor downloads again; the wheelhouse is cached by the lock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from forager.files import atomic_write_text, content_digest
from forager.home import forager_home
from forager.images.detect import InstallPlan
from forager.images.manifest import ImageBuildError, clip

RESOLVER_VERSION = 2  # bump when what goes into a lock changes (2: the exact Python version)


@dataclass(frozen=True)
class Target:
    """The image's interpreter and platform, as pip needs them to pick wheels."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"
    version: str = ""
    """The exact interpreter version ("3.11.2"): pip checks `Requires-Python: >=3.11.5` against it, not 3.11.0."""

    def pip_options(self) -> list[str]:
        major, minor = (int(x) for x in (self.glibc or "2.17").split(".")[:2])
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        platforms += [f"manylinux2014_{self.machine}", f"manylinux2010_{self.machine}", f"manylinux1_{self.machine}",
                      f"linux_{self.machine}"]
        return ["--python-version", self.version or self.python, "--implementation", "cp", "--only-binary=:all:",
                *[o for p in platforms for o in ("--platform", p)]]


@dataclass(frozen=True)
class Lock:
    pins: list[str]
    """name==version of every package the environment holds (the project itself excluded)."""
    from_source: list[str]
    """The pins that have no wheel for the target: built into wheels on the host."""
    notes: list[str]
    key: str


def resolve_lock(root: Path, commit: str, plan: InstallPlan, target: Target, extra: list[str], log,
                 replace_requirements: bool = False, env: dict[str, str] | None = None,
                 pre_install: list[str] | None = None) -> Lock:
    """The environment's pins, from the cache or from pip's resolver; `root` holds the edits of `pre_install`
    (forager.images.pre_install), which are part of the cache key."""
    test_reqs = list(extra) if replace_requirements else [*plan.test_requirements, *extra]
    if replace_requirements and "pytest" not in {_name(r) for r in test_reqs}:
        test_reqs.append("pytest")
    inputs = {"commit": commit, "env": env or {}, "extras": plan.extras, "test": test_reqs,
              "build": plan.build_requires,
              "target": [target.version or target.python, target.machine, target.glibc], "version": RESOLVER_VERSION}
    if pre_install:  # only then: the keys of locks made before stay as they were
        inputs["pre_install"] = list(pre_install)
    key = content_digest(inputs, length=16)
    cached = forager_home() / "images" / "locks" / f"{key}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        log(f"lock {key} from the cache ({len(data['pins'])} packages)")
        return Lock(data["pins"], data["from_source"], data["notes"], key)
    project = f"{root}[{','.join(plan.extras)}]" if plan.extras else str(root)
    attempts = [("all detected requirements", [project, *test_reqs, *plan.build_requires])]
    core = [r for r in test_reqs if _name(r) == "pytest" or r in extra]
    if len(core) < len(test_reqs):
        attempts.append(("the project, its extras and pytest only", [project, *core, *plan.build_requires]))
    notes: list[str] = []
    errors: list[str] = []
    for what, requirements in attempts:
        for options, how in ((target.pip_options(), "wheels for the image's platform"),
                             ([], "sdists allowed, for the image's Python")):
            # the second: pip_target.py gives the image's Python to a resolution that may use sdists
            python = {} if options else {"FORAGER_PIP_PYTHON_VERSION": target.version or target.python}
            report = _dry_run(requirements, options, log, {**(env or {}), **python})
            if isinstance(report, str):
                errors.append(report)
                continue
            pins, from_source = [], []
            for item in report["install"]:
                url = item.get("download_info", {}).get("url", "")
                if url.startswith("file://") and Path(url[7:]).resolve() == root.resolve():
                    continue  # the project: installed editable in the repository layer
                pin = f"{item['metadata']['name']}=={item['metadata']['version']}"
                pins.append(pin)
                if not url.endswith(".whl"):
                    from_source.append(pin)
            if what != attempts[0][0]:
                dropped = sorted(set(test_reqs) - set(core))
                notes.append(clip(f"resolved without {', '.join(dropped)}: {errors[-1] if errors else ''}", 400))
            notes.append(f"resolved {len(pins)} packages with {how}")
            lock = Lock(sorted(pins, key=str.lower), sorted(from_source), notes, key)
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cached, json.dumps({"pins": lock.pins, "from_source": lock.from_source, "notes": notes,
                                              "inputs": inputs}, indent=1))
            return lock
    raise ImageBuildError("resolve", f"install error: pip cannot resolve the environment: {_why(errors)}")


def project_requirements(root: Path, extras: list[str], target: Target, log,
                         env: dict[str, str] | None = None) -> list[str] | None:
    """The project's own requirements as pip builds its metadata (its Requires-Dist with `extras`, markers
    evaluated for `target`, markers then dropped), cached by `root`; None when pip cannot tell."""
    key = content_digest({"root": str(root), "head": _head_files(root), "extras": extras, "env": env or {},
                          "target": [target.version or target.python, target.machine], "version": RESOLVER_VERSION},
                         length=16)
    cached = forager_home() / "images" / "requires" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())["requires"]
    project = f"{root}[{','.join(extras)}]" if extras else str(root)
    report = _dry_run([project], ["--no-deps"], log,
                      {**(env or {}), "FORAGER_PIP_PYTHON_VERSION": target.version or target.python})
    if isinstance(report, str):
        log(f"note: pip cannot read the project's requirements: {_why([report])}")
        return None
    requires = next((item["metadata"].get("requires_dist") or [] for item in report["install"]), [])
    markers = {"python_version": target.python, "python_full_version": target.version or f"{target.python}.0",
               "platform_machine": target.machine, "sys_platform": "linux", "platform_system": "Linux",
               "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    kept = []
    for text in requires:
        requirement = Requirement(text)
        if requirement.marker is None or any(requirement.marker.evaluate({**markers, "extra": extra})
                                             for extra in ["", *extras]):
            requirement.marker = None
            kept.append(str(requirement))
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cached, json.dumps({"requires": kept, "root": str(root)}, indent=1))
    return kept


def _head_files(root: Path) -> list[str]:
    """What decides a repository's metadata beside its path: its packaging files as they are now."""
    names = ("setup.py", "setup.cfg", "pyproject.toml")
    return [content_digest((root / n).read_bytes(), length=None) if (root / n).is_file() else "" for n in names]


def ensure_lock_wheelhouse(lock: Lock, target: Target, log, env: dict[str, str] | None = None) -> Path:
    """Every pinned package as a wheel in one directory (requirements.txt lists the pins)."""
    # strings only, no dict: sorting keys changes nothing, so the cached wheelhouses keep their names
    digest = content_digest([lock.pins, target.python, target.machine, target.glibc], length=16)
    directory = forager_home() / "wheelhouse" / f"lock-{digest}"
    if (directory / "requirements.txt").is_file():
        log(f"wheelhouse {directory} from the cache")
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{directory.name}-", dir=directory.parent))
    binary = [p for p in lock.pins if p not in lock.from_source]
    if binary:
        _pip(["download", "--no-deps", "--dest", str(partial), *target.pip_options(), *binary], log, "wheelhouse")
    if lock.from_source:
        _pip(["wheel", "--no-deps", "--wheel-dir", str(partial), *lock.from_source], log, "wheelhouse", env)
    (partial / "requirements.txt").write_text("\n".join(lock.pins) + "\n")
    try:
        partial.rename(directory)
    except OSError:  # another build made the same one
        shutil.rmtree(partial, ignore_errors=True)
    return directory


def _dry_run(requirements: list[str], options: list[str], log, env: dict[str, str]) -> dict | str:
    """pip's resolution as a report, or pip's error."""
    with tempfile.TemporaryDirectory(prefix="forager-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *options]
        if options:
            cmd += ["--target", str(Path(tmp) / "target")]
        try:
            _pip([*cmd, *requirements], log, "resolve", env)
        except ImageBuildError as err:
            return err.detail
        return json.loads(report.read_text())


def _pip(args: list[str], log, stage: str, env: dict[str, str] | None = None) -> None:
    # For another interpreter, pip's Requires-Python checks and markers must see its version (pip_target.py)
    targeted = "--python-version" in args or "FORAGER_PIP_PYTHON_VERSION" in (env or {})
    pip = [str(Path(__file__).with_name("pip_target.py"))] if targeted else ["-m", "pip"]
    cmd = [sys.executable, *pip, *args[:1], "--disable-pip-version-check", *args[1:]]
    log("$ " + "".join(f"{k}={v} " for k, v in (env or {}).items()) + " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    log(result.stdout + result.stderr)
    if result.returncode != 0:
        raise ImageBuildError(stage, f"install error: pip {args[0]} failed: {_why([result.stderr])}",
                              detail=result.stderr[-3000:])


def _why(errors: list[str]) -> str:
    text = "\n".join(errors)
    if match := re.search(r"requires a different Python: (\S+) not in '([^']+)'", text):
        return f"the project requires Python {match[2]}, the image has {match[1]} (a recipe can set `python`/`base`)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The project's own exception (a setup.py that raises) says more than pip's summary of it.
    for pattern in (r"\w+(Error|Exception): ", r"ERROR: (?!Exception)", r"error: (?!subprocess-exited)"):
        found = [line for line in lines if re.match(pattern, line)]
        if found:
            return clip(found[-1], 500)
    return clip((lines or ["unknown error"])[-1], 500)


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else ""

