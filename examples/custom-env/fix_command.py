"""Make a failing check command succeed, one shell command per turn: a Forager environment plug-in."""
import shutil
import string
import subprocess
import tempfile

import gymnasium as gym

ENTRY_POINTS = {"forager.envs": {"example/FixCommand-v0": "fix_command:FixCommandEnv"}}  # for --plugins DIR
TASKS = {  # task id: (the goal, a command that sets the directory up, the check that must exit 0)
    "hello-file": ("Create hello.txt holding the single line `hello`.", "true", "grep -qx hello hello.txt"),
    "executable": ("Make run.sh print ok when run as ./run.sh.", "echo 'echo ok' > run.sh", "[ \"$(./run.sh)\" = ok ]"),
    "sorted": ("Sort names.txt to sorted.txt.", "printf 'b\\na\\n' > names.txt", "sort names.txt | cmp -s sorted.txt"),
}


class FixCommandEnv(gym.Env):
    """Make a failing check command succeed with shell commands; reward 1 if it passes when you submit."""

    def __init__(self, max_turns: int = 6):
        self.observation_space = self.action_space = gym.spaces.Text(1 << 16, charset=string.printable)
        self.max_turns, self.task_ids, self.workdir = max_turns, sorted(TASKS), None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.close()
        self.task = (options or {}).get("task") or self.task_ids[self.np_random.integers(len(self.task_ids))]
        goal, setup, check = TASKS[self.task]
        self.workdir, self.turn = tempfile.mkdtemp(prefix="fix-command-"), 0
        self._sh(setup)
        return f"{goal}\nThe check: `{check}`. Reply with one shell command, or `submit` when done.", {
            "task_id": self.task, "system_prompt": "You work in a shell. Reply with exactly one command per turn."}

    def step(self, action):
        self.turn += 1
        if action.strip() == "submit" or self.turn >= self.max_turns:
            passed = self._sh(TASKS[self.task][2])[0] == 0
            return f"check {'passed' if passed else 'failed'}", float(passed), action.strip() == "submit", \
                action.strip() != "submit", {"resolved": passed}
        code, output = self._sh(action)
        return f"exit {code}\n{output[-4000:]}", 0.0, False, False, {}

    def _sh(self, command):
        done = subprocess.run(["bash", "-c", command], cwd=self.workdir, capture_output=True, timeout=30)
        text = (done.stdout + done.stderr).decode(errors="replace")
        return done.returncode, "".join(c for c in text if c in string.printable)

    def close(self):
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
