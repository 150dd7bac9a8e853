"""The layers of an image: the scripts that make them, running one in a container and committing it.

A layer is one script run as root in a container of its parent, with its files copied in (never
bind-mounted, so the wheelhouse never lands in a layer), then committed. What the script says is
part of the layer's tag.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
import threading
from pathlib import Path
from typing import TextIO

import docker
import docker.errors

from forager.core import DEFAULT_TEST_COMMAND
from forager.home import forager_home
from forager.images.detect import InstallPlan
from forager.images.manifest import ImageBuildError, clip
from forager.images.resolve import Target
from forager.images.spec import Recipe
from forager.harness.install import INSTALLED_COMMIT, REINSTALL
from forager.runtime.base import owner_labels

USER, UID = "forager", 1000
VENV = "/opt/venv"
WORKDIR = "/repo"
GIT_EXCLUDES = ["*.egg-info/", "__pycache__/", "*.pyc", ".eggs/", "build/", ".pytest_cache/", ".hypothesis/",
                "*.so", ".coverage*"]

LayerFiles = dict[str, list[tuple[str, "Path | str", int]]]
"""Destination directory -> (name, a directory or a text, owner uid) entries to copy in."""

_probe_cache: dict[str, tuple[str, Target]] = {}


# -- layer scripts (run as root; what they say is part of the layer's tag) ------------------------------
def env_script(recipe: Recipe, online: bool) -> str:
    pip = f"{VENV}/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-deps"
    lines = ["set -eux", f"id -u {USER} >/dev/null 2>&1 || useradd --create-home --uid {UID} --shell /bin/bash {USER}"]
    if recipe.system_packages:
        lines += ["apt-get update -qq",
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                  + " ".join(shlex.quote(p) for p in recipe.system_packages), "rm -rf /var/lib/apt/lists/*"]
    lines.append(f"python3 -m venv {VENV}")
    if online:  # the locked pins, from the index the image can reach
        lines.append(f"{pip} -r /tmp/requirements.txt && rm -f /tmp/requirements.txt")
    else:  # offline: the host's wheelhouse, no index
        lines += [f"{pip} --no-index --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt",
                  "rm -rf /tmp/wheelhouse"]
    lines += [f"git config --system user.name {USER}", f"git config --system user.email {USER}@localhost",
              "git config --system --add safe.directory '*'", "git config --system init.defaultBranch main"]
    return "\n".join(lines)


def repo_script(recipe: Recipe, build_env: dict[str, str]) -> str:
    # --use-pep517: a setup.py-only project goes through setuptools' PEP 660 hook too, not `setup.py
    # develop` (which newer setuptools turns into a pip call that wants an index).
    install = recipe.install or (f"{VENV}/bin/python -m pip install --no-index --no-deps --no-build-isolation "
                                 "--use-pep517 --disable-pip-version-check -e .")
    return "\n".join([
        "set -eux", *(f"export {k}={shlex.quote(v)}" for k, v in build_env.items()), f"cd {WORKDIR}",
        f"printf '%s\\n' {' '.join(shlex.quote(p) for p in GIT_EXCLUDES)} >> .git/info/exclude",
        *recipe.pre_install, install,
        # The commit's files stay as they were (tasks diff against it): files the install rewrote
        # (a setuptools-scm `_version.py`) go back to the committed text.
        "changed=$(git diff --name-only)",
        'if [ -n "$changed" ]; then echo "restoring files the install rewrote: $changed"; git checkout -- .; fi',
        f"chown -R {USER}:{USER} {WORKDIR}",
        *_record_install(recipe, build_env, install),
    ])


def _record_install(recipe: Recipe, build_env: dict[str, str], install: str) -> list[str]:
    """Lines that write `REINSTALL` and `INSTALLED_COMMIT`, and let `USER` redo the project's install.

    The user may then add and remove entries of site-packages and the venv's bin (not change the other
    packages' files) and owns the project's own installed files. A version setuptools-scm was told to
    pretend is the image commit's, so the script at another commit lets git tell it instead.
    """
    exports = [f"export {k}={shlex.quote(v)}" for k, v in build_env.items()
               if not k.startswith("SETUPTOOLS_SCM_PRETEND_VERSION")]
    script = "\n".join([
        "#!/bin/bash", "# The project's install, again at the commit checked out (forager.tasks.checkout runs it).",
        "set -eu", "unset SETUPTOOLS_SCM_PRETEND_VERSION", *exports, f"cd {WORKDIR}", *recipe.pre_install, install,
        'if [ -n "$(git diff --name-only)" ]; then git checkout -- .; fi',
        f"git rev-parse HEAD > {INSTALLED_COMMIT}",
    ])
    site = f'"$({VENV}/bin/python -c \'import sysconfig; print(sysconfig.get_path("purelib"))\')"'
    return [
        f"mkdir -p {Path(REINSTALL).parent}", f"cat > {REINSTALL} <<'FORAGER_REINSTALL'\n{script}\nFORAGER_REINSTALL",
        f"chmod 755 {REINSTALL}", f"git -C {WORKDIR} rev-parse HEAD > {INSTALLED_COMMIT}",
        f"site={site}", f"chown {USER}:{USER} {INSTALLED_COMMIT} \"$site\" {VENV}/bin",
        'if [ -d "$site/__pycache__" ]; then chown ' + f'{USER}:{USER} "$site/__pycache__"; fi',
        'for info in "$site"/*.dist-info; do',
        '  if grep -qs \'"editable": *true\' "$info/direct_url.json"; then',
        f'    chown -R {USER}:{USER} "$info"',
        f'    (cd "$site" && cut -d, -f1 "$info/RECORD" | while read -r f; do '
        f'if [ -e "$f" ]; then chown -h {USER}:{USER} "$f"; fi; done)',
        "  fi", "done",
    ]


# -- running a layer -----------------------------------------------------------------------------
def commit_layer(client: docker.DockerClient, image: str, tag: str, script: str, files: LayerFiles,
                 changes: list[str], labels: dict[str, str], *, network: bool, stage: str, log_file: TextIO,
                 timeout: float) -> None:
    """Run `script` as root in a container from `image` with `files` copied in, and commit it as `tag`.

    The script's output goes to `log_file`; a failure raises ImageBuildError at `stage`.
    """
    _log(log_file, f"$ bash -c (in {image}, network {'on' if network else 'off'}):\n{script}")
    # The build container names its owner, so `forager gc` removes it if this process dies.
    container = client.containers.create(
        image, ["bash", "-c", script], user="0", labels={**labels, **owner_labels()}, working_dir="/",
        network_mode="bridge" if network else "none", entrypoint=[],
    )
    try:
        for dest, entries in files.items():
            container.put_archive(dest, tar_entries(entries))
        container.start()
        timer = threading.Timer(timeout, lambda: _kill(container))
        timer.start()
        try:
            for chunk in container.logs(stream=True, follow=True):
                log_file.write(chunk.decode("utf-8", "replace"))
            log_file.flush()
            status = container.wait()
        finally:
            timer.cancel()
        code = status.get("StatusCode")
        if code != 0:
            output = container.logs().decode("utf-8", "replace")
            reason = install_failure(output, code, timeout)
            raise ImageBuildError(stage, f"install error: {reason}", log_file.name, output[-2500:])
        repository, _, version = tag.partition(":")
        # A commit keeps the container's labels: blank the owner out, or every container of the
        # image would name this (soon dead) build process as its owner.
        blank_owner = "LABEL " + " ".join(f'{key}=""' for key in owner_labels() if key != "forager")
        container.commit(repository=repository, tag=version, changes=[*changes, blank_owner],
                         message=f"forager {stage} layer", author="forager")
        _log(log_file, f"committed {tag}")
    finally:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass


def probe_base(client, base: str) -> tuple[str, Target]:
    """The base image's id, Python version, machine and glibc (cached by image id)."""
    try:
        image = client.images.get(base)
    except docker.errors.ImageNotFound as err:
        raise ImageBuildError("detect", f"no base image {base}: build it with `forager images bootstrap`") from err
    if image.id in _probe_cache:
        return _probe_cache[image.id]
    cache = forager_home() / "images" / "bases" / f"{image.id.replace(':', '-')}.json"
    info = json.loads(cache.read_text()) if cache.is_file() else {}
    if "version" not in info:  # probes cached before the exact version was recorded are made again
        out = client.containers.run(
            image.id, ["python3", "-c", "import json, platform, sys; print(json.dumps({'python': '%d.%d' % "
                       "sys.version_info[:2], 'version': platform.python_version(), 'machine': platform.machine(), "
                       "'glibc': platform.libc_ver()[1]}))"],
            remove=True, network_mode="none", user="0", entrypoint=[],
        )
        info = json.loads(out.decode().strip().splitlines()[-1])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(info))
    probe = (image.id, Target(info["python"], info["machine"], info["glibc"] or "2.17", info["version"]))
    _probe_cache[image.id] = probe
    return probe


def test_command_for(recipe: Recipe, install: InstallPlan | None = None) -> str:
    """The recipe's test command, else the default with what detection found: tox's setenv in front, lint
    plugins blocked; then the recipe's left-out tests."""
    if recipe.test_command or install is None:
        command = recipe.test_command or DEFAULT_TEST_COMMAND
    else:
        env = "".join(f"{name}={shlex.quote(value)} " for name, value in install.test_env.items())
        command = env + DEFAULT_TEST_COMMAND + "".join(f" {shlex.quote(a)}" for a in install.pytest_args)
    for item in recipe.ignore_tests:
        command += f" --deselect={shlex.quote(item)}" if "::" in item else f" --ignore={shlex.quote(item)}"
    return command


def tar_entries(entries: list[tuple[str, Path | str, int]]) -> bytes:
    """A tar of (name, directory or text, owner uid) entries; owners are set here, not by a chown layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content, uid in entries:
            def owned(info: tarfile.TarInfo, uid: int = uid) -> tarfile.TarInfo:
                info.uid = info.gid = uid
                info.uname = info.gname = ""
                return info
            if isinstance(content, Path):
                tar.add(content, arcname=name, filter=owned)
            else:
                data = content.encode()
                info = owned(tarfile.TarInfo(name))
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_failure(output: str, code: int | None, timeout: float) -> str:
    if code in (137, -9):
        return f"the step was killed (timed out after {timeout:g}s, or out of memory)"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # pip's own verdict first, then any error line, then the last line
    for pattern in (r"ERROR: (?!Exception)", r"(E:|fatal:|error:|\w+Error:)"):
        found = [line for line in lines if re.match(pattern, line) and "subprocess-exited-with-error" not in line]
        if found:
            return f"the step exited with {code}: {clip(found[-1], 400)}"
    return f"the step exited with {code}: {clip((lines or [''])[-1], 400)}"


def _kill(container) -> None:
    try:
        container.kill()
    except docker.errors.DockerException:
        pass


def _log(log_file: TextIO, message: str) -> None:
    log_file.write(message if message.endswith("\n") else message + "\n")
    log_file.flush()
