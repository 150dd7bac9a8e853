"""The learning demo: a tiny model learns, from the test-pass reward alone, which edit fixes a planted bug.

`configs/train/cpu-demo.yaml` trains the model `forager-demo` on the task source `demo`; both are built here,
on this machine, with nothing from a hub.

- The task: the repository `forager/assets/demo-repo` (five arithmetic functions, one test each) with one
  planted bug (`total` subtracts the tax). The problem statement only says that a test fails.
- The model: the tiny random model (`forager.testing.tiny_model`), behaviour-cloned on episodes of a scripted
  agent that runs the tests, makes one of five plausible one-line edits of `calc.py` (`EDITS`), and submits.
  The demonstrations are real episodes of the agent loop in the task's environment, token for token as the
  engine renders them, one per edit and repetition, weighted equally: the model learns the tool format and
  the observations, and no preference among the edits. It resolves about one episode in five.
- Training: GRPO through the whole loop (rollouts in the environment, the learner, the weight sync) has to
  find that the edit of `total` is the one whose tests pass. The reward mean goes from about 0.2 to about 1.

It is a small lesson (one decision inside a three-turn episode) chosen so that it is learnt in minutes on two
CPU cores; what it shows is that every part of the path is real and the reward rises because of the updates.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forager.agent.config import AgentConfig
from forager.agent.loop import make_env, run_episode
from forager.core import ForagerError, Task, Trajectory
from forager.files import atomic_directory, content_digest
from forager.git import FIXED_IDENTITY, run_git
from forager.home import forager_home
from forager.images.sample import SampleRepo, asset_repo, reverse_patch
from forager.policies.hf import HFPolicy

DEMO_MODEL = "forager-demo"
"""The `model.path` that names the demo's model (built on first use under `$FORAGER_HOME/models`)."""
DEMO_TASKS = "demo"
"""The `env.tasks` that names the demo's task."""
RECIPE_VERSION = 1
BUG = ("price + tax", "price - tax")
"""The planted bug: (the line's correct text, the text the task starts from)."""
EDITS: tuple[tuple[str, str], ...] = (
    ("price - tax", "price + tax"),
    ("width * height", "width + height"),
    ("value / 2", "value // 2"),
    ("base ** exp", "base * exp"),
    ("sum(values) / len(values)", "sum(values) // len(values)"),
)
"""(old, new) of the edits the scripted agent chooses from; each applies, only the first fixes the bug."""
TEST_COMMAND = "python -m pytest -q --tb=no -rf test_calc.py | grep FAILED"
"""Its output names the failing test and nothing that changes between runs (no timings, no paths)."""
PROBLEM = "A test in test_calc.py fails. Find the bug in calc.py and fix it, then submit."
TESTS = ["total", "area", "half", "power", "mean"]
DEMOS_PER_EDIT = 2
SFT_STEPS = 800
SFT_LR = 3e-3
"""Peak learning rate of the behaviour cloning, decayed to 1/30 of it (cosine): a sharp format, few broken calls."""
SEED = 0
DONE_MARKER = "forager-demo-model.json"


def demo_repo() -> SampleRepo:
    return asset_repo("demo-repo", forager_home() / "demo", "calc 1.0")


def demo_tasks() -> list[Task]:
    """The demo's one task: the bug in `total`, graded by the five tests."""
    repo = demo_repo()
    setup = _edit_patch(repo, *BUG)
    return [Task(
        instance_id="calc__total-subtracts-tax", repo="forager/calc", local_repo=str(repo.path),
        base_commit=repo.commit, problem_statement=PROBLEM, setup_patch=setup, patch=reverse_patch(repo, setup),
        FAIL_TO_PASS=["test_calc.py::test_total"], PASS_TO_PASS=[f"test_calc.py::test_{t}" for t in TESTS[1:]],
        kind="mutate-fix", metadata={"source": "forager.train.demo"})]


def script(edit: tuple[str, str]) -> list[str]:
    """The scripted agent's three turns with one of `EDITS`: run the tests, edit, submit."""
    old, new = edit
    arguments = json.dumps({"path": "calc.py", "old_str": old, "new_str": new})
    return [f"Let me run the tests.\n<tool: bash>\n{TEST_COMMAND}\n</tool>",
            f"Let me fix calc.py.\n<tool: str_replace>\n{arguments}\n</tool>",
            "<tool: submit>\n</tool>"]


def build_demo_model(agent: AgentConfig, path: str | Path | None = None, *, log: Any = print) -> Path:
    """The demo's model directory for episodes under `agent` (its prompts and budgets are in the key), built once."""
    from forager.policies.models import models_dir
    from forager.testing.tiny_model import build_tiny_model, recipe_hash

    recipe = {"version": RECIPE_VERSION, "tiny": recipe_hash(), "agent": agent.model_dump(), "edits": EDITS,
              "bug": BUG, "problem": PROBLEM, "tests": TEST_COMMAND, "demos": DEMOS_PER_EDIT,
              "sft": [SFT_STEPS, SFT_LR, "cosine/30", SEED], "repo": demo_repo().commit}
    target = Path(path) if path is not None else models_dir() / f"{DEMO_MODEL}-{content_digest(recipe)}"
    if (target / DONE_MARKER).exists():
        return target
    tiny = build_tiny_model()
    with atomic_directory(target, DONE_MARKER) as staging:
        log(f"building the demo model: {len(EDITS) * DEMOS_PER_EDIT} scripted episodes, then {SFT_STEPS} "
            "steps of behaviour cloning (once, about a minute)")
        demos = demonstrations(tiny, agent)
        loss = _clone(tiny, demos, staging)
        (staging / DONE_MARKER).write_text(json.dumps({"recipe": recipe, "demonstrations": len(demos),
                                                       "final_loss": loss}))
    return target


class _ScriptedTokens(HFPolicy):
    """The tiny model's prompts, rendered as the engine renders them, answered with a script's tokens."""

    name = "demo-script"

    def __init__(self, model: Path, agent: AgentConfig) -> None:
        super().__init__(model, max_tokens=agent.max_tokens_per_turn, max_context=agent.max_context_tokens)
        self.turns: list[str] = []
        self.end = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)

    def _sample(self, prompt: list[int], budget: int) -> tuple[list[int], list[float]]:
        text = self.turns.pop(0) if self.turns else script(EDITS[0])[-1]
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.end]
        return ids, [0.0] * len(ids)


def demonstrations(model: Path, agent: AgentConfig) -> list[Trajectory]:
    """`DEMOS_PER_EDIT` real episodes of the scripted agent per edit; raises if the premise does not hold
    (the first edit resolves the task, no other does)."""
    task = demo_tasks()[0]
    teacher = _ScriptedTokens(model, agent)
    env = make_env(agent, runtime="local")
    demos = []
    try:
        for index, edit in enumerate(EDITS):
            for repeat in range(DEMOS_PER_EDIT):
                teacher.turns = script(edit)
                trajectory = run_episode(env, teacher, task, agent, sample=repeat)
                if trajectory.resolved != (index == 0) or trajectory.termination != "submitted":
                    raise ForagerError(f"the demo's scripted episode with edit {edit} ended {trajectory.termination}, "
                                       f"resolved={trajectory.resolved} ({trajectory.error or 'no error'}): the demo "
                                       "task is broken on this machine")
                demos.append(trajectory)
    finally:
        env.close()
    return demos


def _clone(model: Path, demos: list[Trajectory], out: Path) -> float:
    """Behaviour cloning: cross-entropy on the script's tokens of every demonstration, all in each step; the
    model and tokenizer saved to `out`. Returns the final loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sequences = [demo.token_sequence()[:2] for demo in demos]
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width)
    for row, (tokens, loss_mask) in enumerate(sequences):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = torch.tensor(loss_mask, dtype=torch.float)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        random.seed(SEED)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).train()
        optimizer = torch.optim.AdamW(lm.parameters(), lr=SFT_LR, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, SFT_STEPS, eta_min=SFT_LR / 30)
        for _ in range(SFT_STEPS):
            logits = lm(input_ids=ids, use_cache=False).logits[:, :-1].float()  # position t predicts t + 1
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            loss = -(logprobs * mask[:, 1:]).sum() / mask[:, 1:].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    lm.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return float(loss.detach())


def _edit_patch(repo: SampleRepo, old: str, new: str) -> str:
    """The diff that replaces `old` by `new` in calc.py at the repository's commit."""
    scratch = Path(tempfile.mkdtemp(prefix="forager-demo-"))
    try:
        clone = scratch / "repo"
        run_git(scratch, "clone", "-q", str(repo.path), str(clone), env=FIXED_IDENTITY)
        source = clone / "calc.py"
        text = source.read_text()
        if text.count(old) != 1:
            raise ForagerError(f"the demo repository's calc.py holds {old!r} {text.count(old)} times, not once")
        source.write_text(text.replace(old, new))
        return run_git(clone, "diff", env=FIXED_IDENTITY)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
