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
    assert not [n for n in names if n.startswith(("tests/", "bench/", "semverkit/", "envs/", "examples/", "rewards/",
                                                      "policies/"))]
    # The shipped plug-ins, under names of their own, with their data and without their tests; declared as entry points.
    assert {"forager_envs/code_contests/env.py", "forager_envs/code_contests/problems.jsonl.gz"} <= set(names)
    assert {"forager_rewards/outcome.py", "forager_rewards/shaping.py", "forager_rewards/README.md"} <= set(names)
    assert {f"forager_policies/{path}" for path in ["README.md", "recipes/__init__.py", "recipes/cwm-32b.yaml",
            "recipes/qwen3-32b.yaml", "recipes/smollm2-135m.yaml", "prompts/__init__.py", "prompts/cwm.yaml",
            "prompts/minimal.yaml"]} <= set(names)
    assert not [n for n in names if n.startswith(("forager_envs/", "forager_rewards/", "forager_policies/"))
                and "/tests/" in n]
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    for line in ["forager/CodeContests-v0 = forager_envs.code_contests:CodeContestsEnv",
                 "test-pass = forager_rewards.outcome:tests_passed", "qwen3-32b = forager_policies.recipes:qwen3_32b",
                 "cwm = forager_policies.prompts:cwm"]:
        assert line in declared


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
        contests = gymnasium.make("forager/CodeContests-v0").unwrapped  # an entry point of the wheel's own
        print(type(contests).__module__, len(contests.task_ids) >= 30)
        from forager.envs.prompts import load_prompt_set
        from forager.policies import make_policy
        from forager.rewards.functions import RewardSpec

        RewardSpec.split({"function": "patch-similarity", "shaping": [{"name": "format-penalty"}]})
        cwm = load_prompt_set("cwm")
        print(make_policy("qwen3-32b").sampling["temperature"], "# Environment" in cwm["system_prompt"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FORAGER_HOME")}
    done = subprocess.run([str(python), "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**env, "FORAGER_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    task_id, flags, contests, shipped = done.stdout.split("\n")[:4]
    assert task_id.startswith("semverkit__")
    assert flags == "True 4"
    assert contests == "forager_envs.code_contests.env True"
    assert shipped == "0.6 True"  # rewards, a serving recipe and a prompt set, from the wheel's entry points
