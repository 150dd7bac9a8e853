"""Check tasks before anyone trains on them: the reference fix must resolve, the empty patch must not, and
the episode's starting state must hide the fix (no object outside the base history, no later version)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from forager.core import Task
from forager.harness.install import INSTALLED_COMMIT
from forager.images.git_leaks import LeakError
from forager.rewards import RewardConfig, RewardResult, grade_patch
from forager.runtime.base import ShellRuntime, bash_quote
from forager.tasks.checkout import checkout_task, leaked_objects

# The versions an episode shows for the project installed from its work tree: the install's record,
# every `*.egg-info/PKG-INFO`, and the editable distributions whose source is the work tree.
_METADATA_PROBE = f"""echo "installed $(cat {INSTALLED_COMMIT} 2>/dev/null || echo none)"
echo "head $(git rev-parse HEAD)"
find . -maxdepth 3 -name .git -prune -o -path '*.egg-info/PKG-INFO' -print | while read -r f; do
  echo "egg $(sed -n 's/^Name: //p' "$f" | head -n1) $(sed -n 's/^Version: //p' "$f" | head -n1)"
done
python3 - <<'EOF' 2>/dev/null || true
import importlib.metadata as md, json, os
for d in md.distributions():
    url = json.loads(d.read_text("direct_url.json") or "{{}}")
    if url.get("dir_info", {{}}).get("editable") and url.get("url", "").rstrip("/") == "file://" + os.getcwd():
        print("dist", d.metadata["Name"], d.version)
EOF
"""


@dataclass
class TaskCheck:
    task: Task
    gold: RewardResult | None
    empty: RewardResult | None
    error: str | None = None
    leak: str | None = None
    """`leak: N objects outside the base history, e.g. ...`: the episode's repository holds more than its base."""
    metadata: str | None = None
    """`metadata: ...`: the episode shows the versions of another commit than the base."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.leak is None and self.metadata is None \
            and bool(self.gold and self.gold.resolved) and not (self.empty and self.empty.resolved)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        if self.leak or self.metadata:
            return "; ".join(p for p in (self.leak, self.metadata) if p)
        if not (self.gold and self.gold.resolved):
            failing = [t for t, s in (self.gold.tests_status if self.gold else {}).items() if s not in ("PASSED", "XFAIL")]
            why = (self.gold.error if self.gold else None) or f"{len(failing)} test(s) fail: {', '.join(failing[:3])}"
            return f"the reference fix does not resolve it ({why})"
        if self.empty and self.empty.resolved:
            return "the empty patch resolves it (FAIL_TO_PASS tests pass without a fix)"
        return None


def check_task(task: Task, open_runtime: Callable[[Task], ShellRuntime]) -> TaskCheck:
    if not task.patch:
        return TaskCheck(task, None, None, "the task has no reference `patch`")
    if not task.FAIL_TO_PASS:
        return TaskCheck(task, None, None, "the task has no FAIL_TO_PASS tests")
    try:
        gold = grade_patch(task, task.patch, open_runtime, RewardConfig())
        empty = grade_patch(task, "", open_runtime, RewardConfig())
        leak, metadata = inspect_episode(task, open_runtime)
    except Exception as err:  # noqa: BLE001 - one broken task must not stop the others
        return TaskCheck(task, None, None, f"{type(err).__name__}: {err}")
    return TaskCheck(task, gold, empty, leak=leak, metadata=metadata)


def inspect_episode(task: Task, open_runtime: Callable[[Task], ShellRuntime]) -> tuple[str | None, str | None]:
    """(leak, metadata): what is wrong with the task's starting state, checked out as an episode's reset does."""
    with open_runtime(task) as runtime:
        image_head = runtime.run_checked("git rev-parse HEAD").strip()
        # A planted bug's history is one new commit: its install is the base commit's, made or not.
        base = runtime.run_checked(f"git rev-parse {bash_quote(task.base_commit + '^{commit}')}").strip() \
            if task.setup_patch else None
        try:
            checkout_task(runtime, task)
        except LeakError as err:
            return f"leak: {err.leaks.describe()}", None
        leaks = leaked_objects(runtime)
        return (None if leaks.clean else f"leak: {leaks.describe()}"), metadata_problem(runtime, image_head, base)


def metadata_problem(runtime: ShellRuntime, image_head: str, base: str | None = None) -> str | None:
    """Why the versions the runtime's work tree shows are not the base commit's, or None.

    `image_head` is the commit the runtime's repository was at before the checkout (the image's);
    `base` the commit whose versions are due (default: HEAD).
    """
    installed, head, versions = "none", "", []
    for line in runtime.run_checked(_METADATA_PROBE, timeout=120).splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "installed":
            installed = rest.strip()
        elif kind == "head":
            head = base or rest.strip()
        elif kind in ("egg", "dist") and rest.strip():
            name, _, version = rest.strip().rpartition(" ")
            versions.append((name.lower().replace("_", "-"), version))
    if installed not in ("none", head):
        return (f"metadata: the project's install was made at {installed[:12]}, not at the base commit "
                f"{head[:12]}: the versions it shows are another commit's")
    if installed == "none" and versions and image_head != head:
        return (f"metadata: the image does not record its install (built before Forager did), so the versions "
                f"are those of {image_head[:12]}, not the base commit's: rebuild the image")
    by_name: dict[str, set[str]] = {}
    for name, version in versions:
        by_name.setdefault(name, set()).add(version)
    split = {name: sorted(found) for name, found in by_name.items() if len(found) > 1}
    return f"metadata: the versions disagree: {json.dumps(split)}" if split else None


def check_tasks(
    tasks: Iterable[Task], open_runtime: Callable[[Task], ShellRuntime], *, workers: int = 2,
    on_done: Callable[[TaskCheck], None] | None = None,
) -> list[TaskCheck]:
    """Grade each task's reference fix and the empty patch in fresh runtimes, and inspect its starting state,
    `workers` at a time."""
    def one(task: Task) -> TaskCheck:
        check = check_task(task, open_runtime)
        if on_done:
            on_done(check)
        return check

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="forager-validate") as pool:
        return list(pool.map(one, tasks))
