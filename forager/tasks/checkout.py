"""Put a runtime's repository in a task's starting state, the same way for the agent and the grader."""

from __future__ import annotations

from forager.core import Task
from forager.runtime.base import ShellRuntime, bash_quote

_COMMIT = "git -c user.name=forager -c user.email=forager@localhost commit -q --no-verify --allow-empty -m"

# Everything in a git directory that can name or hold a commit other than HEAD's ancestors: pseudo-refs
# (ORIG_HEAD, FETCH_HEAD, ...), an interrupted merge, rebase or bisect, reflogs, linked worktrees,
# rerere's cache, filter-branch's backups, and caches that list objects (rebuilt by gc when needed).
_LEAKY_GIT_FILES = (
    "*_HEAD", "BISECT_*", "COMMIT_EDITMSG", "MERGE_MSG", "MERGE_MODE", "SQUASH_MSG", "rebase-merge", "rebase-apply",
    "sequencer", "logs", "worktrees", "rr-cache", "refs/original", "info/refs", "objects/info/packs",
    "objects/info/commit-graph", "objects/info/commit-graphs", "objects/pack/*.keep", "objects/pack/multi-pack-index",
)

# Leave the repository holding HEAD's history and nothing else: one branch, no remotes, tags, stash,
# notes or reflog, and no object that only a later commit reaches (an issue-fix task's fix is one).
_KEEP_ONLY_HEAD = " && ".join([
    "git checkout -q -B main",
    "gitdir=$(git rev-parse --git-dir)",
    # Borrowed objects (alternates) are copied in first: the borrowing ends with this.
    '{ [ ! -s "$gitdir/objects/info/alternates" ] || '
    '{ git repack -a -d -q && rm -f "$gitdir/objects/info/alternates"; }; }',
    "{ git remote | xargs -r -n1 git remote remove; }",
    "{ git for-each-ref --format='%(refname)' | grep -vx refs/heads/main"
    " | xargs -r -n1 git update-ref --no-deref -d; }",
    "{ git config --name-only --get-regexp '^branch\\.' | sed -E 's/\\.[^.]+$//' | sort -u"
    " | xargs -r -n1 git config --remove-section; true; }",
    "git reflog expire --expire=now --all",
    "(cd \"$gitdir\" && rm -rf -- " + " ".join(_LEAKY_GIT_FILES) + ")",
    "git -c gc.autoDetach=false -c gc.cruftPacks=false gc --prune=now --quiet",
])


def checkout_task(runtime: ShellRuntime, task: Task) -> str:
    """Check out `task.base_commit`, apply its setup patch, and return the commit the agent starts from.

    The agent must find no trace of the fix. With a setup patch (a planted bug), the history is
    replaced by one commit of the resulting tree: the parent commit would otherwise hold the fix.
    Without one (an issue fix from a repository's history), the history up to the base commit stays,
    on a branch `main`, and everything else goes: other refs, remotes, reflogs, unreachable objects.
    """
    runtime.run_checked(
        f"git -c advice.detachedHead=false checkout -q -f {bash_quote(task.base_commit)} && git clean -q -fd"
    )
    if task.setup_patch:
        patch = runtime.scratch_path("setup.patch")
        runtime.write_file(patch, task.setup_patch)
        runtime.run_checked(
            f"git apply --whitespace=nowarn {bash_quote(patch)} && rm -f {bash_quote(patch)} && "
            f"rm -rf .git && git init -q -b main && git add -A && "
            f"{_COMMIT} {bash_quote(f'{task.repo or task.instance_id}')}"
        )
    else:
        runtime.run_checked(_KEEP_ONLY_HEAD, timeout=1800)
    return runtime.run_checked("git rev-parse HEAD").strip()
