"""A git repository that holds its base history and nothing else, and the check that proves it.

A task's repository must hold no object that only a later commit reaches: the fix would be one
`git show` away. `git gc --prune=now` is not enough: it never drops objects of promisor packs
(partial clones, and plain clones of them, which copy the `.promisor` markers), and alternates,
grafts and precious objects change what it sees. The cleaning keeps HEAD's history on one branch
`main` plus the tags of earlier commits (versioning tools read them) and drops everything else:
with a gc in the common case; in the odd ones, by moving the reachable objects into a new object
store over the pack protocol (a `git fetch` from the old one: nothing is copied or hard-linked
wholesale); and when that history is incomplete (a partial clone's old blobs are missing and no
network), by a one-commit history of the base tree. Then the check lists every object the
repository holds or its refs reach beyond the base history, and any leak is an error.

The scripts are bash run in the repository, so the same text cleans a task's repository in its
runtime (a container, a local scratch clone) and an image's source on the host.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forager.core import ForagerError
from forager.runtime.base import bash_quote

Run = Callable[[str], str]
"""Runs a bash command line at the repository's root and returns its output; raises if it fails."""

# Everything in a git directory that can name or hold a commit other than HEAD's ancestors: pseudo-refs
# (ORIG_HEAD, FETCH_HEAD, ...), an interrupted merge, rebase or bisect, reflogs, linked worktrees,
# rerere's cache, filter-branch's backups, fsck's lost-found copies, and caches that list objects.
LEAKY_GIT_FILES = (
    "*_HEAD", "BISECT_*", "COMMIT_EDITMSG", "MERGE_MSG", "MERGE_MODE", "SQUASH_MSG", "rebase-merge", "rebase-apply",
    "sequencer", "logs", "worktrees", "rr-cache", "refs/original", "info/refs", "lost-found", "objects/info/packs",
    "objects/info/commit-graph", "objects/info/commit-graphs", "objects/pack/*.keep", "objects/pack/multi-pack-index",
    "objects/info/http-alternates", "forager-rebuild.git", "objects.forager-old",
)

# $1: `auto` (a gc unless the repository is odd) or `rebuild` (a new object store whatever it looks like).
# Prints one line `forager-history: HOW[: why]`, HOW being gc, history (rebuilt) or tree (one commit).
_CLEAN = r"""set -eu
export GIT_NO_LAZY_FETCH=1 GIT_TERMINAL_PROMPT=0 GIT_NO_REPLACE_OBJECTS=1
gitdir=$(cd "$(git rev-parse --git-dir)" && pwd -P)
rm -f "$gitdir/info/grafts"  # grafts rewrite history: the real one decides what stays
git checkout -q -B main
git remote | while read -r name; do git remote remove "$name"; done
git for-each-ref --format='%(refname)' \
  | grep -vxF -f <(echo refs/heads/main; git for-each-ref --merged=main --format='%(refname)' refs/tags) \
  | sed 's/^/delete /' | git update-ref --no-deref --stdin
git config --name-only --get-regexp '^branch\.' | sed -E 's/\.[^.]+$//' | sort -u \
  | while read -r section; do git config --remove-section "$section" || true; done
git reflog expire --expire=now --all
(cd "$gitdir" && rm -rf -- @LEAKY@)
odd=
if [ "${1:-auto}" = rebuild ]; then odd="unreachable objects survived git gc"; fi
if [ -s "$gitdir/objects/info/alternates" ]; then odd="borrowed objects (alternates)"; fi
if [ "$(git config --get extensions.preciousObjects || true)" != "" ]; then odd="precious objects"; fi
if find "$gitdir/objects/pack" -maxdepth 1 -name '*.promisor' | grep -q .; then odd="promisor packs"; fi
if [ "$(git config --get extensions.partialClone || true)" != "" ]; then odd="a partial clone"; fi
if [ -z "$odd" ]; then
  if git -c gc.autoDetach=false -c gc.cruftPacks=false gc --prune=now --quiet; then
    echo "forager-history: gc"
    exit 0
  fi
  odd="git gc failed"
fi
quiet="-c gc.auto=0 -c maintenance.auto=false -c fetch.writeCommitGraph=false"
new="$gitdir/forager-rebuild.git"
git init -q --bare "$new"
how=history why=$odd
if ! git -C "$new" $quiet fetch -q --no-tags --no-write-fetch-head --update-shallow "$gitdir" '+refs/*:refs/*' \
    2>"$new/fetch-errors"; then
  # The history is incomplete: keep the base tree alone, as a commit with the base's message and author.
  error=$({ grep -a -m1 -iE 'missing|fatal' "$new/fetch-errors" || grep -a -m1 . "$new/fetch-errors" || true; } \
    | tr -d '\000\r' | sed -E 's/ +$//')
  how=tree why="$odd; its history is incomplete ($error)"
  rm -rf "$new" && git init -q --bare "$new"
  git rev-list --objects 'HEAD^{tree}' | cut -d' ' -f1 | git pack-objects -q "$new/objects/pack/pack" >/dev/null
  export GIT_AUTHOR_NAME="$(git log -1 --format=%an)" GIT_AUTHOR_EMAIL="$(git log -1 --format=%ae)"
  export GIT_AUTHOR_DATE="$(git log -1 --format=%aI)" GIT_COMMITTER_DATE="$(git log -1 --format=%cI)"
  export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-forager}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-forager@localhost}"
  export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
  commit=$(git log -1 --format=%B | git --git-dir="$new" commit-tree "$(git rev-parse 'HEAD^{tree}')")
  git for-each-ref --format='delete %(refname)' | git update-ref --no-deref --stdin
fi
mv "$gitdir/objects" "$gitdir/objects.forager-old" && mv "$new/objects" "$gitdir/objects"
rm -rf "$gitdir/objects.forager-old"
if [ -f "$new/shallow" ]; then mv "$new/shallow" "$gitdir/shallow"; else rm -f "$gitdir/shallow"; fi
rm -rf "$new"
for key in extensions.partialClone extensions.preciousObjects core.partialCloneFilter; do
  git config --unset-all "$key" || true
done
if [ "$how" = tree ]; then git update-ref refs/heads/main "$commit"; fi
echo "forager-history: $how: $why"
""".replace("@LEAKY@", " ".join(LEAKY_GIT_FILES))

# $1: the base commit, $2: how many leaks to describe. Prints `forager-leaks COUNT GARBAGE ALTERNATES`,
# then one line per described leak, commits first: `SHA TYPE [SUBJECT]`. The common case costs two
# counts, the objects stored (loose and packed) and those reachable; only when they differ are the
# sets compared.
_CHECK = r"""set -eu
export GIT_NO_LAZY_FETCH=1 GIT_TERMINAL_PROMPT=0 GIT_NO_REPLACE_OBJECTS=1
gitdir=$(cd "$(git rev-parse --git-dir)" && pwd -P)
alternates=0
if [ -s "$gitdir/objects/info/alternates" ]; then alternates=1; fi
read -r stored garbage < <(git count-objects -v \
  | awk -F': ' '$1=="count"{c=$2} $1=="in-pack"{p=$2} $1=="garbage"{g=$2} END{print c+p, g+0}')
reachable=$(git rev-list --objects --all --count)
outside=$(git rev-list --objects --all --not "$1" -- | cut -d' ' -f1 \
  | git cat-file --batch-check='%(objecttype) %(objectname)' | awk '$1!="tag"{print $2}')
leaks=
if [ "$stored" != "$reachable" ] || [ -n "$outside" ] || [ "$alternates" = 1 ]; then
  leaks=$({ LC_ALL=C comm -23 \
      <(git cat-file --batch-all-objects --batch-check='%(objectname)' --unordered | LC_ALL=C sort -u) \
      <(git rev-list --objects --all | cut -d' ' -f1 | LC_ALL=C sort -u)
    printf '%s\n' "$outside"; } | grep . | LC_ALL=C sort -u || true)
fi
echo "forager-leaks $(printf '%s' "$leaks" | grep -c . || true) $garbage $alternates"
printf '%s\n' "$leaks" | grep . | git cat-file --batch-check='%(objecttype) %(objectname)' \
  | awk '{print ($1=="commit" ? 0 : $1=="tag" ? 1 : $1=="tree" ? 2 : 3), $2, $1}' | sort -s -n -k1,1 \
  | head -n "$2" | while read -r _ sha type; do
      if [ "$type" = commit ]; then echo "$sha commit $(git log -1 --format=%s "$sha" 2>/dev/null || true)"
      else echo "$sha $type"; fi
    done
"""


@dataclass(frozen=True)
class Leaks:
    """What a repository holds beyond its base history: objects, files git cannot read, borrowed stores."""

    count: int = 0
    """Objects stored or reachable from a ref that the base history does not reach (annotated tags of
    earlier commits excepted)."""
    examples: list[str] = field(default_factory=list)
    """Up to a few of them: `SHA TYPE`, and a commit's subject after it."""
    garbage: int = 0
    """Files in the object store that are neither loose objects nor packs (`git count-objects -v`)."""
    alternates: bool = False

    @property
    def clean(self) -> bool:
        return not (self.count or self.garbage or self.alternates)

    def describe(self) -> str:
        """One line for a person: `312 objects outside the base history, e.g. SHA (commit "Fix ...")`."""
        parts = []
        if self.count:
            shown = []
            for line in self.examples[:2]:
                sha, _, rest = line.partition(" ")
                kind, _, subject = rest.partition(" ")
                shown.append(f'{sha} ({kind} "{subject}")' if subject else f"{sha} ({kind})")
            parts.append(f"{self.count} object{'s' * (self.count != 1)} outside the base history"
                         + (f", e.g. {', '.join(shown)}" if shown else ""))
        if self.garbage:
            parts.append(f"{self.garbage} unreadable file(s) in the object store")
        if self.alternates:
            parts.append("objects borrowed from another repository (objects/info/alternates)")
        return "; ".join(parts) or "no leak"


class LeakError(ForagerError):
    """A repository that still holds objects outside its base history: a task there would show its fix."""

    def __init__(self, leaks: Leaks, how: str) -> None:
        self.leaks = leaks
        super().__init__(f"the repository still holds {leaks.describe()} after cleaning ({how}); "
                         "build the image from a full clone of the repository")


@dataclass(frozen=True)
class KeptHistory:
    """How the repository was cleaned: `gc`, `history` (a new object store) or `tree` (one commit), and why."""

    how: str
    why: str = ""
    leaks: Leaks = field(default_factory=Leaks)

    @property
    def note(self) -> str:
        """A line for the log when the cleaning was not the plain gc."""
        if self.how == "history":
            return f"the repository was rebuilt from its reachable objects ({self.why})"
        if self.how == "tree":
            return f"the repository was rebuilt as one commit of the base tree, its history left out ({self.why})"
        return ""


def keep_base_history(run: Run) -> KeptHistory:
    """Leave the repository at HEAD holding its history (and earlier tags) only, and prove it.

    Raises LeakError if any object outside the base history is left, which a rebuild should never
    allow: the task would show its fix.
    """
    how, why = _parse_history(run(f"bash -c {bash_quote(_CLEAN)} forager-history auto"))
    leaks = find_leaks(run)
    if not leaks.clean and how == "gc":  # something gc keeps (a cruft or odd pack): rebuild the store
        how, why = _parse_history(run(f"bash -c {bash_quote(_CLEAN)} forager-history rebuild"))
        leaks = find_leaks(run)
    if not leaks.clean:
        raise LeakError(leaks, how)
    return KeptHistory(how, why, leaks)


def find_leaks(run: Run, base: str = "HEAD", examples: int = 5) -> Leaks:
    """Every object the repository holds or its refs reach outside `base`'s history (a count and examples)."""
    out = run(f"bash -c {bash_quote(_CHECK)} forager-leaks {bash_quote(base)} {int(examples)}")
    lines = out.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("forager-leaks ")), None)
    if head is None:
        raise ForagerError(f"the leak check printed no summary: {out[-500:]}")
    count, garbage, alternates = (int(n) for n in lines[head].split()[1:4])
    return Leaks(count, [line for line in lines[head + 1:] if line.strip()], garbage, alternates == 1)


def host_runner(repo: Path, env: dict[str, str] | None = None, timeout: float = 3600.0) -> Run:
    """A `Run` for a repository on this machine (an image's source): bash in `repo`, ForagerError on failure."""
    def run(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=repo, env={**os.environ, **(env or {})},
                              capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ForagerError(f"cleaning the git history of {repo} failed: {' / '.join(tail)}")
        return done.stdout
    return run


def _parse_history(out: str) -> tuple[str, str]:
    line = next((x for x in reversed(out.splitlines()) if x.startswith("forager-history: ")), None)
    if line is None:
        raise ForagerError(f"cleaning the git history printed no outcome: {out[-500:]}")
    how, _, why = line.removeprefix("forager-history: ").partition(": ")
    return how.strip(), why.strip()
