"""code-contests: write a program that passes hidden tests, judged in a container without a network.

Each problem (problems.jsonl.gz: a statement, two public examples, 6-10 hidden tests, a reference
solution, time and memory limits) is one task. The agent replies with a Python 3 program in a
```python block. Multi-turn (forager/CodeContests-v0): a reply without `SUBMIT` runs the program on
the public examples and shows the verdicts; a reply with `SUBMIT` (or the last turn) is judged on
the hidden tests. Single-turn (forager/CodeContests-SingleTurn-v0): the first reply is judged.
Reward 1 when every hidden test passes, else 0; `info["reward_details"]` has the verdicts
(OK, WA, TLE, MLE, RE) and the seconds spent in the sandbox.

Every judgement runs in a fresh container of a Forager base image (python3) from a warm pool: no
network, no capabilities, the container's own limits, and per test a wall-clock limit and an
address-space limit set by a small judge script inside, which kills whatever a test left running.
Only the inputs enter the container: the expected outputs stay in this process, which compares.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import string
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from forager.core import ForagerError
from forager.runtime.docker import DockerLimits
from forager.runtime.pool import WarmPool

PROBLEMS = Path(__file__).with_name("problems.jsonl.gz")
IMAGE = "forager/base:latest"
LIMITS = DockerLimits(memory="1g", cpus=1.0, pids=64)
MAX_PROGRAM_BYTES = 64 << 10
CODE_BLOCK = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)
SYSTEM_PROMPT = ("You solve programming problems. Reply with one complete Python 3 program that reads standard "
                 "input and writes standard output, in a ```python code block.")

JUDGE = r'''
import json, os, resource, signal, subprocess, sys, time
job = json.load(open(sys.argv[1]))
os.remove(sys.argv[1])
with open("/tmp/solution.py", "w") as f:
    f.write(job["program"])
limit = job["memory_mb"] << 20
def confine():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def ancestors():
    pid, seen = os.getpid(), set()
    while pid > 1:
        seen.add(pid)
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    return seen
keep = ancestors()
def sweep():  # every process a test left behind, even one that left its session
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in keep:
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
runs = []
for stdin in job["inputs"]:
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "/tmp/solution.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=confine, start_new_session=True)
    try:
        out, err = child.communicate(stdin.encode(), timeout=job["time_limit_s"])
        status = child.returncode
    except subprocess.TimeoutExpired:
        out, err, status = b"", b"", None
    sweep()
    child.wait()
    runs.append({"status": status, "seconds": round(time.monotonic() - started, 3),
                 "output": out.decode(errors="replace"), "error": err.decode(errors="replace")[-2000:]})
print(json.dumps(runs))
'''


@functools.lru_cache(maxsize=4)
def load_problems(path: Path = PROBLEMS) -> dict[str, dict[str, Any]]:
    """The problems by id (read once), from JSON lines, gzipped or not."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    problems = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {problem["id"]: problem for problem in problems}


def extract_program(reply: str) -> str | None:
    """The last ```python block of a reply, or None."""
    blocks = CODE_BLOCK.findall(reply)
    return blocks[-1] if blocks else None


class Judge:
    """Runs programs on tests in fresh containers from a warm pool, one container per judgement."""

    def __init__(self, image: str = IMAGE, limits: DockerLimits = LIMITS, warm: int = 1) -> None:
        self.image, self.limits = image, limits
        self.pool = WarmPool(warm)

    def run(self, program: str, tests: list[dict[str, str]], time_limit_s: float, memory_mb: int) -> list[dict]:
        """Each test's verdict, time, output and error tail. Only the inputs enter the container: the expected
        outputs stay here, where the program cannot read them, and the comparison is made here too."""
        job = json.dumps({"program": program, "inputs": [t["input"] for t in tests], "time_limit_s": time_limit_s,
                          "memory_mb": memory_mb})
        budget = 60 + len(tests) * (time_limit_s + 2)
        with self.pool.take(self.image, "/tmp", limits=self.limits, command_timeout=budget) as runtime:
            runtime.put_file("/tmp/job.json", job.encode())
            runtime.put_file("/tmp/judge.py", JUDGE.encode())
            try:
                report = runtime.run_checked("python3 /tmp/judge.py /tmp/job.json", budget)
                runs = json.loads(report.strip().splitlines()[-1])
            except (RuntimeError, ValueError, IndexError) as err:
                raise ForagerError(f"the judge did not report: {str(err)[-500:]}") from err
        return [{**run, "verdict": _verdict(run, test)} for run, test in zip(runs, tests)]

    def close(self) -> None:
        self.pool.close()


class CodeContestsEnv(gym.Env):
    """Write a Python program that passes a problem's hidden tests; multi-turn: try it on the public examples first."""

    metadata = {"render_modes": []}
    single_turn = False

    def __init__(self, max_turns: int = 4, image: str = IMAGE, problems: str | Path | None = None) -> None:
        self.observation_space = gym.spaces.Text(1 << 20, charset=string.printable)
        self.action_space = gym.spaces.Text(MAX_PROGRAM_BYTES * 2, charset=string.printable)
        self.problems = load_problems(Path(problems) if problems else PROBLEMS)
        self.task_ids = sorted(self.problems)
        self.max_turns = 1 if self.single_turn else max_turns
        self.image = image
        self._judge: Judge | None = None
        self.problem: dict[str, Any] = {}
        self.turn = 0
        self.sandbox_s = 0.0

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = Judge(self.image)
        return self._judge

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        chosen = (options or {}).get("task")
        if chosen is None:
            chosen = self.task_ids[int(self.np_random.integers(len(self.task_ids)))]
        if chosen not in self.problems:
            raise ForagerError(f"no problem {chosen!r} in code-contests ({len(self.problems)} problems)")
        self.problem, self.turn, self.sandbox_s = self.problems[chosen], 0, 0.0
        examples = "\n".join(f"Example {i + 1} input:\n{e['input']}\nExample {i + 1} output:\n{e['output']}"
                             for i, e in enumerate(self.problem["examples"]))
        how = ("Reply with your program; it is judged on hidden tests." if self.single_turn else
               f"Reply with a program to run it on the examples; put SUBMIT in the reply to have it judged on the "
               f"hidden tests. You have {self.max_turns} replies; the last one is judged whatever it says.")
        limits = f"Time limit {self.problem['time_limit_s']} s, memory {self.problem['memory_mb']} MB per test."
        text = f"{self.problem['title']}\n\n{self.problem['statement']}\n\n{examples}\n{limits}\n\n{how}"
        return _printable(text), {"task_id": chosen, "system_prompt": SYSTEM_PROMPT}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self.problem:
            raise RuntimeError("call reset() first")
        self.turn += 1
        program = extract_program(action)
        last = self.turn >= self.max_turns
        final = self.single_turn or last or "SUBMIT" in CODE_BLOCK.sub("", action)
        if program is None or len(program.encode()) > MAX_PROGRAM_BYTES:
            problem = "no ```python block in the reply" if program is None else "the program exceeds 64 KiB"
            if final:
                return f"{problem}: nothing to judge.", 0.0, True, False, self._info([], problem)
            return f"{problem}; reply with a program in a ```python block.", 0.0, False, False, {}
        tests = self.problem["tests"] if final else self.problem["examples"]
        started = time.monotonic()
        verdicts = self.judge.run(program, tests, self.problem["time_limit_s"], self.problem["memory_mb"])
        self.sandbox_s += time.monotonic() - started
        if final:
            passed = sum(v["verdict"] == "OK" for v in verdicts)
            info = self._info(verdicts)
            text = f"hidden tests: {passed} of {len(verdicts)} passed ({_counts(verdicts)})"
            return text, float(info["resolved"]), True, False, info
        lines = [f"example {i + 1}: {v['verdict']} ({v['seconds']:.2f} s)" + _detail(v, tests[i])
                 for i, v in enumerate(verdicts)]
        return _printable("\n".join(lines)), 0.0, False, False, {"sandbox_s": self.sandbox_s}

    def _info(self, verdicts: list[dict], error: str | None = None) -> dict[str, Any]:
        resolved = bool(verdicts) and all(v["verdict"] == "OK" for v in verdicts)
        details = {"passed": sum(v["verdict"] == "OK" for v in verdicts), "tests": len(self.problem["tests"]),
                   "verdicts": _counts(verdicts), "sandbox_s": round(self.sandbox_s, 3), "error": error}
        return {"resolved": resolved, "reward_details": details, "sandbox_s": self.sandbox_s}

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()
            self._judge = None


class SingleTurnCodeContestsEnv(CodeContestsEnv):
    """Write a Python program that passes a problem's hidden tests, in one reply."""

    single_turn = True


def _verdict(run: dict, test: dict[str, str]) -> str:
    if run["status"] is None:
        return "TLE"
    if run["status"] != 0:
        return "MLE" if "MemoryError" in run["error"] else "RE"
    return "OK" if _lines(run["output"]) == _lines(test["output"]) else "WA"


def _lines(text: str) -> list[str]:
    """Output as compared: trailing spaces on each line and trailing blank lines do not count."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def _counts(verdicts: list[dict]) -> str:
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict["verdict"]] = counts.get(verdict["verdict"], 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


def _detail(verdict: dict, test: dict[str, str]) -> str:
    if verdict["verdict"] == "WA":
        return f"\n  expected:\n{test['output'][:500]}\n  got:\n{verdict['output'][:500]}"
    if verdict["verdict"] in ("RE", "MLE"):
        return f"\n  stderr:\n{verdict['error'][-800:]}"
    return ""


def _printable(text: str) -> str:
    return "".join(c for c in text if c in string.printable)
