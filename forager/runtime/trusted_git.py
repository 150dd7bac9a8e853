"""The episode's diff, computed by Forager's own git outside the agent's shell.

Whatever the agent's persistent bash holds (a function named `git`, aliases, `GIT_DIR`, a PATH
with a fake git) must not shape the diff that is graded, and nothing the agent wrote in the
repository may run while it is computed. So the diff is taken by a separate process (a `docker
exec` as root, or a host subprocess for the local runtime) under a clean environment, with an
absolute git, and against a git directory Forager makes for the purpose: a fresh bare repository
whose config, hooks and info/attributes are empty and whose objects borrow the repository's
through `alternates`. Its index is built from the base commit (`read-tree`), so a replaced index
cannot hide or forge a change. The agent's `.git/config` (fsmonitor, diff.external, filters,
textconv, core.worktree, includes) is never read except by `rev-parse`, which runs nothing.
In-tree `.gitattributes` are still read by `git add`, but a filter or diff driver needs a
definition in config, and the only config is ours (system and global config are off).

The script runs as root in the container: the agent (an unprivileged user in Forager's images)
cannot replace `/usr/bin/git` or reach the root-owned scratch directory. An image whose agent
runs as root can replace anything in its container; for it the diff is only as trustworthy as the
container, which is why the grader treats every diff as hostile input in any case.
"""

from __future__ import annotations

import re
import shutil

TRUSTED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

TRUSTED_ENV: dict[str, str] = {
    "PATH": TRUSTED_PATH, "HOME": "/nonexistent", "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ATTR_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0",
    "GIT_PAGER": "cat", "PAGER": "cat", "GIT_NO_REPLACE_OBJECTS": "1",
}
"""The whole environment of the trusted git: nothing inherited from the agent or the host."""

DIFF_TIMEOUT_S = 300
"""A repository's worth of hashing; a tree full of sparse giant files stops here."""

BASE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/^{}~-]{0,200}$")
"""What `base` may be (a commit id, HEAD, a branch): it is passed as an argument, never parsed by a shell."""

# $1 workdir, $2 base, $3 git. Exit 3: `.git` is not a plain directory; 5: the base is unknown.
DIFF_SCRIPT = r"""
set -u
w=$1 base=$2 gitbin=$3
g() {
  "$gitbin" -c core.fsmonitor=false -c core.hooksPath=/dev/null -c core.attributesFile=/dev/null \
    -c core.autocrlf=false -c core.safecrlf=false -c core.untrackedCache=false -c core.splitIndex=false \
    -c core.sparseCheckout=false -c core.excludesFile=/dev/null -c core.quotepath=false -c diff.external= \
    -c diff.noprefix=false -c diff.mnemonicPrefix=false -c gc.auto=0 -c maintenance.auto=false \
    -c safe.directory='*' -c core.symlinks=true -c core.ignoreCase=false "$@"
}
if [ ! -d "$w/.git" ] || [ -L "$w/.git" ] || [ ! -d "$w/.git/objects" ]; then
  echo "the repository's .git is not a plain directory: no trusted diff" >&2; exit 3
fi
sha=$(g --git-dir="$w/.git" rev-parse --verify --quiet "$base^{commit}") || {
  echo "unknown base $base" >&2; exit 5; }
t=$(mktemp -d /tmp/forager-diff.XXXXXXXX) || exit 4
trap 'rm -rf "$t"' EXIT
g init -q --bare --template= "$t/git" || exit 4
mkdir -p "$t/git/objects/info" "$t/git/info" || exit 4
printf '%s\n' "$w/.git/objects" > "$t/git/objects/info/alternates"
# The image's own ignore list (Forager writes build outputs there); read as data, a bounded amount.
if [ -f "$w/.git/info/exclude" ] && [ ! -L "$w/.git/info/exclude" ]; then
  head -c 1048576 "$w/.git/info/exclude" > "$t/git/info/exclude"
fi
export GIT_DIR="$t/git" GIT_WORK_TREE="$w" GIT_INDEX_FILE="$t/index"
cd "$w" || exit 4
g read-tree "$sha" && g add -A && \
  g diff --cached --binary --no-ext-diff --no-textconv --no-color --src-prefix=a/ --dst-prefix=b/ "$sha" --
"""

_host_git: str | None = None


def host_git() -> str:
    """The host's git, looked up once on a fixed PATH (never the caller's)."""
    global _host_git
    if _host_git is None:
        found = shutil.which("git", path=TRUSTED_PATH)
        if found is None:
            raise RuntimeError("no git on the host's standard PATH")
        _host_git = found
    return _host_git


def container_diff_command(workdir: str, base: str) -> list[str]:
    """The argv that computes the diff in a container, found and run without the agent's PATH."""
    find = 'for c in /usr/bin/git /usr/local/bin/git /bin/git; do [ -x "$c" ] && exec /bin/sh -c "$0" sh "$1" "$2" "$c"; done; echo no git >&2; exit 4'
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in TRUSTED_ENV.items()), "/usr/bin/timeout", "-s", "KILL",
            str(DIFF_TIMEOUT_S), "/bin/sh", "-c", find, DIFF_SCRIPT, workdir, base]


def host_diff_command(workdir: str, base: str) -> list[str]:
    return ["/bin/sh", "-c", DIFF_SCRIPT, "sh", workdir, base, host_git()]
