"""Problem statements for mined issue-fix tasks: the issue a commit links to, else its own message.

A commit that says `Fix #387` (GitHub's closing keywords: close/closes/closed, fix/fixes/fixed,
resolve/resolves/resolved, then `#N`, `gh-N`, `owner/name#N` or an issue URL) was written against an
issue, and that issue is what an agent should be told, not the message that describes the fix. Its
text comes from an issues file (`load_issue_texts`) or from an URL template fetched on demand
(`IssueFetcher`); without either, the statement is the commit message and the task says so
(`metadata["statement_source"] == "commit_message"`).
"""

from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forager.core import ForagerError

_LINK = re.compile(
    r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\b:?[ \t]+(?:"
    r"https?://github\.com/(?P<url_repo>[\w.-]+/[\w.-]+)/issues/(?P<url_number>\d+)"
    r"|(?P<repo>[\w.-]+/[\w.-]+)?#(?P<number>\d+)"
    r"|gh-(?P<gh_number>\d+))\b",
    re.IGNORECASE,
)
_ISSUE_KEY = re.compile(r"^(?:(?P<repo>[\w.-]+/[\w.-]+)?#(?P<hash>\d+)|(?P<digits>\d{1,6}))$")
"""`#387`, `owner/name#387`, or digits alone (up to 6: a longer run of digits may be a commit id)."""
_PLACEHOLDERS = {"number", "owner", "name", "repo"}


@dataclass(frozen=True)
class IssueRef:
    """An issue a commit message links to: its number, and its repository when another is named."""

    number: int
    repo: str | None = None

    def key(self) -> str:
        return f"{self.repo}#{self.number}" if self.repo else f"#{self.number}"


def linked_issues(message: str, repo: str | None = None) -> list[IssueRef]:
    """The issues `message` closes, in order, once each; a link to `repo` itself is a plain `#N`.

    A keyword must come right before the issue, as GitHub reads it: `Fix div (#200)` links nothing.
    """
    refs: dict[IssueRef, None] = {}
    for m in _LINK.finditer(message):
        other = m["url_repo"] or m["repo"]
        number = int(m["url_number"] or m["number"] or m["gh_number"])
        # A repository known by its name alone (an image's project) is the same as any owner's of that name.
        same = other is None or repo is not None and other.lower() in (repo.lower(), *(
            [] if "/" in repo else [f"{other.split('/')[0]}/{repo}".lower()]))
        refs[IssueRef(number, None if same else other)] = None
    return list(refs)


@dataclass
class IssueTexts:
    """Texts from an issues file: by commit id (full or a prefix), and by issue (`#N`, `owner/name#N`)."""

    by_commit: dict[str, str] = field(default_factory=dict)
    by_issue: dict[str, str] = field(default_factory=dict)

    def for_commit(self, sha: str) -> str | None:
        """The text of the longest commit key that is a prefix of `sha`."""
        matches = [key for key in self.by_commit if key and sha.startswith(key.lower())]
        return self.by_commit[max(matches, key=len)] if matches else None

    def add(self, key: str, value: Any, where: str) -> None:
        """One entry: `key` an issue (`#N`, `owner/name#N`, digits) or a commit id; `value` its text."""
        text = issue_text(value, where)
        match = _ISSUE_KEY.match(key.strip())
        if match:
            number = int(match["hash"] or match["digits"])
            self.by_issue[IssueRef(number, match["repo"]).key()] = text
        else:
            self.by_commit[key.strip().lower()] = text


def issue_text(value: Any, where: str) -> str:
    """An issue as a problem statement: a string as it is, or `title` and `body` (GitHub's shape), or `text`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and ("title" in value or "body" in value):
        title, body = str(value.get("title") or "").strip(), str(value.get("body") or "").strip()
        return f"{title}\n\n{body}".strip() if body else title
    if isinstance(value, dict) and "text" in value:
        return str(value["text"])
    raise ForagerError(f"{where}: an issue text must be a string or an object with title/body or text, "
                       f"not {json.dumps(value)[:120]}")


def load_issue_texts(path: str | Path) -> IssueTexts:
    """Issue texts from a file, in any of these shapes:

    - a JSON object keyed by commit id, `#387` or `387` (up to 6 digits), each value a text or `{title, body}`;
    - a JSON array or JSON lines of `{"commit": sha, "text": ...}` or `{"number": 387, "title": ..., "body": ...}`
      (`"repo": "owner/name"` optional): what `gh issue list --json number,title,body` prints.
    """
    text = Path(path).read_text()
    texts = IssueTexts()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and not ({"commit", "number"} & data.keys()):
        for key, value in data.items():
            texts.add(str(key), value, f"{path}: {key}")
        return texts
    rows = list(enumerate(data, 1)) if isinstance(data, list) else \
        [(1, data)] if isinstance(data, dict) else _json_lines(text, path)
    for n, row in rows:
        _add_row(texts, row, f"{path}:{n}")
    return texts


def _json_lines(text: str, path: str | Path) -> list[tuple[int, Any]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ForagerError(f"{path}:{n}: not JSON ({err}); expected a JSON object, array, or JSON lines "
                                   'of {"commit": sha, "text": ...} or {"number": N, "title": ..., "body": ...}') \
                    from err
    return rows


def _add_row(texts: IssueTexts, row: Any, where: str) -> None:
    if isinstance(row, dict) and "commit" in row:
        texts.add(str(row["commit"]), row.get("text", row), where)
    elif isinstance(row, dict) and isinstance(row.get("number"), (int, str)) and str(row["number"]).isdigit():
        repo = row.get("repo") or row.get("repository")
        texts.by_issue[IssueRef(int(row["number"]), repo or None).key()] = issue_text(row, where)
    else:
        raise ForagerError(f'{where}: expected {{"commit": sha, "text": ...}} or {{"number": N, "title": ..., '
                           f'"body": ...}}, not {json.dumps(row)[:120]}')


class IssueFetcher:
    """Issue texts from an URL template (`.../issues/{number}`), fetched once per issue.

    The answer may be GitHub's JSON (`title` and `body`) or plain text. A failure (a timeout, an HTTP
    error, an answer of neither shape) is remembered as the reason and never stops the mining.
    """

    def __init__(self, template: str, repo: str | None, timeout: float = 10.0) -> None:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        if "number" not in fields or fields - _PLACEHOLDERS:
            raise ForagerError(f"issue URL template {template!r}: it must hold {{number}} and may hold only "
                               f"{', '.join('{%s}' % p for p in sorted(_PLACEHOLDERS))}")
        if not re.match(r"https?://", template):
            raise ForagerError(f"issue URL template {template!r}: only http:// and https:// URLs are fetched")
        self.template, self.repo, self.timeout = template, repo, timeout
        self.names_repo = bool(fields & {"owner", "name", "repo"})
        self._cache: dict[IssueRef, tuple[str | None, str | None]] = {}

    def url(self, ref: IssueRef) -> str | None:
        """The issue's URL; None for another repository's issue when the template names no repository."""
        repo = ref.repo or self.repo or ""
        if ref.repo and not self.names_repo:
            return None
        owner, _, name = repo.rpartition("/")
        return self.template.format(number=ref.number, owner=owner, name=name, repo=repo)

    def fetch(self, ref: IssueRef) -> tuple[str | None, str | None]:
        """(text, None), or (None, why not)."""
        if ref not in self._cache:
            self._cache[ref] = self._fetch(ref)
        return self._cache[ref]

    def _fetch(self, ref: IssueRef) -> tuple[str | None, str | None]:
        url = self.url(ref)
        if url is None:
            return None, f"issue {ref.key()} is another repository's and the URL template names no repository"
        request = urllib.request.Request(url, headers={
            "Accept": "application/vnd.github+json, application/json;q=0.9, text/plain;q=0.5",
            "User-Agent": "forager-mine"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                body = response.read(1 << 22).decode(response.headers.get_content_charset() or "utf-8", "replace")
                kind = response.headers.get_content_type()
        except urllib.error.HTTPError as err:
            return None, f"issue {ref.key()}: {url} answered HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            return None, (f"issue {ref.key()}: could not fetch {url} within {self.timeout:g}s ({reason}); "
                          "check --issue-url")
        if kind.endswith("json") or body.lstrip().startswith("{"):
            try:
                return issue_text(json.loads(body), url), None
            except (json.JSONDecodeError, ForagerError) as err:
                return None, f"issue {ref.key()}: {url} answered JSON without title/body ({str(err)[:200]})"
        return (body.strip() or None), (None if body.strip() else f"issue {ref.key()}: {url} answered nothing")


@dataclass
class Statement:
    """A task's problem statement and where it came from."""

    text: str
    source: str
    """`issue` (an issues file or URL supplied it) or `commit_message`."""
    issues: list[str] = field(default_factory=list)
    """The issues the commit message links to (`#N`, `owner/name#N`)."""
    notes: list[str] = field(default_factory=list)
    """Why a linked issue's text could not be used."""


@dataclass
class StatementSource:
    """Where statements come from: an issues file, an URL template, and the repository's own name."""

    texts: IssueTexts | None = None
    fetcher: IssueFetcher | None = None
    repo: str | None = None

    def statement(self, sha: str, message: str) -> Statement:
        """The linked issues' texts (joined), the commit's own issue text, or else the commit message."""
        refs = linked_issues(message, self.repo)
        keys = [ref.key() for ref in refs]
        own = self.texts.for_commit(sha) if self.texts else None
        if own is not None:
            return Statement(own, "issue", keys)
        found, notes = [], []
        for ref in refs:
            text = self.texts.by_issue.get(ref.key()) if self.texts else None
            if text is None and self.fetcher is not None:
                text, why = self.fetcher.fetch(ref)
                notes += [why] if why else []
            found += [text] if text else []
        if found:
            return Statement("\n\n".join(found), "issue", keys, notes)
        if refs and not notes:
            notes.append(f"{', '.join(keys)}: not in the issues file" if self.texts else
                         f"{', '.join(keys)}: no issues file (--issues) or URL template (--issue-url) gives its text")
        return Statement(message.strip(), "commit_message", keys, notes)
