"""Fetch a project on the host into a git repository at one commit, with no remotes and no later history.

A PyPI release's sdist and a plain directory become a one-commit repository made with a fixed author,
committer and date, so the same files always give the same commit id. A git source keeps its history
up to the chosen commit, and nothing else: no object a later commit or another ref reaches, whatever
the mirror's packs look like (`git_leaks`: a partial clone's promisor packs would keep them). Everything
is cached under $FORAGER_HOME/sources, so a rebuild needs no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from forager.core import ForagerError
from forager.files import content_digest, tree_digest
from forager.git import FIXED_IDENTITY, git_command
from forager.home import forager_home
from forager.images.git_leaks import Leaks, find_leaks, host_runner, keep_base_history
from forager.images.manifest import ImageBuildError
from forager.images.sdist import download_sdist, index_url
from forager.images.spec import ImageSpec, normalize_name

_GIT_ENV = {**FIXED_IDENTITY, "GIT_TERMINAL_PROMPT": "0", "GIT_NO_REPLACE_OBJECTS": "1"}
"""Reproducible commits, a clone of a private URL fails at once instead of asking for a password, and
the commit's files are its own (a replace ref could make them another commit's)."""
_SNAPSHOT_IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".tox", ".nox",
                                           ".venv", "venv", ".mypy_cache", "*.egg-info", "build", "dist")


@dataclass(frozen=True)
class FetchedSource:
    """A project's repository on the host, ready to be copied into an image."""

    root: Path
    commit: str
    name: str | None
    version: str | None
    description: str
    """Where it came from, for the manifest: the sdist file and its sha256, the URL, the directory."""
    git_digest: str = ""
    """What its `.git` holds (`git_content_digest`): part of the image's tag, as the commit is not all of it."""


def fetch_source(spec: ImageSpec, log) -> FetchedSource:
    """The spec's repository, from the cache when it was fetched before."""
    fetched = _fetch(spec, log)
    return replace(fetched, git_digest=git_content_digest(fetched.root))


def git_content_digest(root: Path) -> str:
    """A digest of what a repository's git directory holds: HEAD, the refs, the shallow boundary and the
    ids of every object. Two repositories at one commit that hold different objects differ here."""
    head = _git(root, "symbolic-ref", "-q", "HEAD", check=False) or _head(root)
    refs = _git(root, "for-each-ref", "--format=%(objectname) %(refname)")
    objects = sorted(_git(root, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)", "--unordered")
                     .split())
    shallow = root / ".git" / "shallow"
    return content_digest({"head": head, "refs": refs, "objects": objects,
                           "shallow": shallow.read_text() if shallow.is_file() else ""}, length=None)


def _fetch(spec: ImageSpec, log) -> FetchedSource:
    if spec.kind == "pypi":
        return _fetch_pypi(spec, log)
    if spec.kind == "git":
        return _fetch_git(spec.url or "", spec.rev, log)
    path = Path(spec.path or "")
    toplevel = _git(path, "rev-parse", "--show-toplevel", check=False).strip()
    if toplevel and Path(toplevel).resolve() == path.resolve():  # a subdirectory of a repository is a snapshot
        dirty = _git(path, "status", "--porcelain", "--untracked-files=no", check=False).strip()
        if dirty:
            log(f"note: {path} has uncommitted changes; the image holds its commit, not the work tree")
        commit = _git(path, "rev-parse", "--verify", "--quiet", f"{spec.rev or 'HEAD'}^{{commit}}", check=False).strip()
        if not commit:
            raise ImageBuildError("fetch", f"{path} has no commit {spec.rev!r}")
        return _fetch_git(toplevel, commit, log)
    if spec.rev:
        raise ImageBuildError("fetch", f"{path} is not a git repository, so @{spec.rev} names nothing")
    return _snapshot(path, log)


def _fetch_pypi(spec: ImageSpec, log) -> FetchedSource:
    name, version = spec.name or "", spec.version or ""
    cache = forager_home() / "sources" / "pypi" / f"{normalize_name(name)}-{version}"
    sdist = next((p for p in sorted(cache.glob("*")) if _is_archive(p)), None) if cache.is_dir() else None
    if sdist is None:
        partial = Path(tempfile.mkdtemp(prefix="sdist-", dir=_mkdir(cache.parent)))
        archives = _download(name, version, partial, log)
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        sdist = cache / archives[0].name
    digest = content_digest(sdist.read_bytes(), length=None)
    target = forager_home() / "sources" / "repos" / f"pypi-{normalize_name(name)}-{version}-{digest[:12]}"
    if not (target / ".git").is_dir():
        log(f"unpacking {sdist.name} into a one-commit repository")
        with tempfile.TemporaryDirectory(prefix="unpack-", dir=_mkdir(target.parent)) as tmp:
            _unpack(sdist, Path(tmp))
            entries = [p for p in Path(tmp).iterdir()]
            top = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
            for egg in [*top.glob("*.egg-info"), *top.glob("src/*.egg-info")]:
                shutil.rmtree(egg)  # setuptools writes these again at install time
            _commit_tree(top, target, f"{name} {version}\n\nFrom the source release {sdist.name} (sha256 {digest}).")
    return FetchedSource(target, _head(target), name, version, f"pypi {sdist.name} sha256:{digest}")


def _download(name: str, version: str, partial: Path, log) -> list[Path]:
    """The sdist from the index's simple API, else through `pip download` (which builds its metadata)."""
    try:
        log(f"downloading the source release {name}=={version} from {index_url()}")
        return [download_sdist(name, version, partial)]
    except (OSError, LookupError, ValueError) as err:
        for leftover in partial.iterdir():
            leftover.unlink()
        log(f"({err}); trying pip download")
    # `--no-binary NAME`, not `:all:`: the sdist of this project only, its build backend may be a wheel
    log(f"$ pip download --no-deps --no-binary {name} {name}=={version}")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name,
         "--disable-pip-version-check", "--dest", str(partial), f"{name}=={version}"],
        capture_output=True, text=True, check=False)
    log(result.stdout + result.stderr)
    archives = [p for p in partial.iterdir() if _is_archive(p)]
    if result.returncode != 0 or not archives:
        shutil.rmtree(partial, ignore_errors=True)
        why = _last_error(result.stderr) or "no source archive was downloaded"
        raise ImageBuildError("fetch", f"cannot download the source release {name}=={version}: {why}")
    return archives


def _fetch_git(url: str, rev: str | None, log) -> FetchedSource:
    mirror = forager_home() / "sources" / "git" / content_digest(url, length=16)
    commit = None
    if mirror.is_dir() and rev:
        commit = _git(mirror, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip() or None
    if commit is None:
        if not mirror.is_dir():
            _mirror(url, rev, mirror, log)
        else:
            log(f"$ git fetch {url}")
            _git(mirror, "fetch", "--quiet", "--prune", "origin", check=False)
        commit = _git(mirror, "rev-parse", "--verify", "--quiet", f"{rev or 'HEAD'}^{{commit}}", check=False).strip()
        if not commit and rev:  # a mirror made from the commit alone, or one whose whole fetch fails
            _fetch_rev(mirror, url, rev, log)
            commit = _git(mirror, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip()
        if not commit:
            raise ImageBuildError("fetch", f"{url} has no commit {rev!r}; give a commit id, a tag or a branch")
    name = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "repo"
    target = forager_home() / "sources" / "repos" / f"git-{normalize_name(name)}-{commit[:12]}"
    if (target / ".git").is_dir():
        if not _leaks(target).clean:  # made before the cleaning was leak-proof
            log(f"{target} holds objects outside its history: cleaning it again")
            _keep_history(target, log)
    else:
        log(f"checking out {commit} (history up to it, no remotes)")
        with tempfile.TemporaryDirectory(prefix="clone-", dir=_mkdir(target.parent)) as tmp:
            work = Path(tmp) / "repo"
            _git(Path(tmp), "clone", "--quiet", "--no-checkout", str(mirror), str(work))
            _git(work, "checkout", "--quiet", "-B", "main", commit)
            _keep_history(work, log)  # tags of earlier commits stay (versioning tools read them)
            try:
                work.rename(target)
            except OSError:  # another build made it first
                pass
    return FetchedSource(target, _head(target), None, None, f"git {url}@{commit}")


def _mirror(url: str, rev: str | None, mirror: Path, log) -> None:
    """`git clone --mirror`; when that fails and a commit is asked for, the commit's history and the tags
    alone (a partial snapshot can lack objects that only other refs reach, its pull requests' say)."""
    log(f"$ git clone --mirror {url}")
    partial = Path(tempfile.mkdtemp(prefix="mirror-", dir=_mkdir(mirror.parent)))
    out = _git(partial.parent, "clone", "--quiet", "--mirror", url, str(partial), check=False, fail="keep-errors")
    if not (partial / "HEAD").exists():
        shutil.rmtree(partial, ignore_errors=True)
        if not rev:
            raise ImageBuildError("fetch", f"cannot clone {url}: {_last_error(out)}")
        log(f"note: cannot clone {url} whole ({_last_error(out)}): fetching {rev} and the tags alone")
        partial = Path(tempfile.mkdtemp(prefix="mirror-", dir=_mkdir(mirror.parent)))
        _git(partial, "init", "--quiet", "--bare")
        _git(partial, "remote", "add", "origin", url)
        _fetch_rev(partial, url, rev, log)
    try:
        partial.rename(mirror)
    except OSError:  # another build made it first
        shutil.rmtree(partial, ignore_errors=True)


def _fetch_rev(repo: Path, url: str, rev: str, log) -> None:
    """The history of `rev` from `url` into `repo`, with the tags when they come (versioning tools read them)."""
    log(f"$ git fetch {url} {rev} (and the tags)")
    if git_command(repo, "fetch", "--quiet", url, rev, "+refs/tags/*:refs/tags/*", env=_GIT_ENV).returncode != 0:
        _git(repo, "fetch", "--quiet", url, rev, check=False)
    fetched = (_git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip()
               or _git(repo, "rev-parse", "--verify", "--quiet", "FETCH_HEAD^{commit}", check=False).strip())
    if fetched:
        _git(repo, "update-ref", f"refs/forager/{fetched}", fetched)  # FETCH_HEAD is not a ref: keep it reachable


def _keep_history(repo: Path, log) -> None:
    """HEAD's history and earlier tags only, proven (`git_leaks`); an ImageBuildError if that fails."""
    try:
        kept = keep_base_history(host_runner(repo, _GIT_ENV))
    except ForagerError as err:
        raise ImageBuildError("fetch", str(err)) from err
    if kept.note:
        log(f"note: {kept.note}")


def _leaks(repo: Path) -> Leaks:
    try:
        return find_leaks(host_runner(repo, _GIT_ENV))
    except ForagerError as err:
        raise ImageBuildError("fetch", str(err)) from err


def _snapshot(path: Path, log) -> FetchedSource:
    with tempfile.TemporaryDirectory(prefix="snapshot-", dir=_mkdir(forager_home() / "sources" / "repos")) as tmp:
        copy = Path(tmp) / "tree"
        shutil.copytree(path, copy, ignore=_SNAPSHOT_IGNORED, symlinks=True)
        target = forager_home() / "sources" / "repos" / f"dir-{normalize_name(path.name)}-{tree_digest(copy)}"
        if not (target / ".git").is_dir():
            log(f"snapshot of {path} (not a git repository) as a one-commit repository")
            _commit_tree(copy, target, f"{path.name}\n\nSnapshot of {path}.")
    return FetchedSource(target, _head(target), None, None, f"directory {path}")


def _commit_tree(tree: Path, target: Path, message: str) -> None:
    """Make `tree` a one-commit repository (every file, even those its .gitignore names) and move it to `target`."""
    _git(tree, "init", "--quiet", "-b", "main")
    _git(tree, "add", "--all", "--force")
    _git(tree, "commit", "--quiet", "--no-verify", "-m", message)
    try:
        tree.rename(target)
    except OSError:  # another build made it first
        shutil.rmtree(tree, ignore_errors=True)


def _unpack(archive: Path, dest: Path) -> None:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def _head(repo: Path) -> str:
    return _git(repo, "rev-parse", "HEAD").strip()


def _git(cwd: Path, *args: str, check: bool = True, fail: str = "fetch") -> str:
    result = git_command(cwd, *args, env=_GIT_ENV)
    if check and result.returncode != 0:
        raise ImageBuildError(fail, f"git {' '.join(args[:3])} failed: {_last_error(result.stderr)}")
    if result.returncode != 0 and fail == "keep-errors":
        return result.stdout + result.stderr
    return result.stdout if result.returncode == 0 else ""


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(ERROR|error|fatal)\b", line)]
    return (errors or lines or [""])[-1][:500]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
