"""Forager works installed from its wheel, far from a source checkout: the sample ships as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the files git knows (as a clean clone has them), not from build leftovers."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of Forager")
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("forager-*.whl")
    return built


def test_the_wheel_carries_the_sample_and_no_stray_code(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    for wanted in ["forager/assets/sample-repo/semverkit/version.py", "forager/assets/sample-bugs/bugs.json",
                   "forager/assets/sample.Dockerfile", "forager/assets/base-registry.Dockerfile",
                   "forager/envs/prompts.yaml", "forager/trajectories/view.html"]:
        assert wanted in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "bench/", "semverkit/"))]


def test_an_installed_forager_makes_the_env_outside_the_checkout(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    # System site-packages lend the dependencies (gymnasium, docker, ...): this machine has no index to
    # install them from, and they are not what is tested. Forager itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import gymnasium
        import forager

        assert "/venv/" in forager.__file__, forager.__file__  # the wheel's copy, not the checkout's
        env = gymnasium.make("forager/SWE-v0", runtime="local")
        obs, info = env.reset(seed=0)
        print(info["task_id"])
        print("semverkit" in obs, len(env.unwrapped.tasks))
        env.close()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FORAGER_HOME")}
    done = subprocess.run([str(python), "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**env, "FORAGER_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    task_id, flags = done.stdout.split("\n")[:2]
    assert task_id.startswith("semverkit__")
    assert flags == "True 4"
