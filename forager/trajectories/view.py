"""One self-contained HTML page to browse trajectories: a filterable table, and each episode's turns.

No network and no external assets: the data is embedded as JSON in `<script type="application/json">`
blocks with `<`, `>` and `&` written as `\\u003c`, `\\u003e`, `\\u0026` (so `</script>` inside a
trajectory cannot end the block), and the page's script puts every piece of trajectory text into
the page with `textContent`, never as HTML. A trajectory's details are parsed only when it is
opened, so a page with thousands of episodes stays quick. `#traj=ID` (URL-encoded) opens one.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from forager.core import Trajectory
from forager.files import atomic_output
from forager.trajectories.store import read_trajectories

TEMPLATE = Path(__file__).with_name("view.html")
"""The page: its HTML, CSS and script, with the placeholders __TITLE__, __SUMMARY__ and __DETAILS__."""
MAX_TEXT = 200_000
"""Characters of one message, diff or log kept in the page (head and tail); the rest is elided."""


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n\n[... {len(text) - limit} characters elided by forager view ...]\n\n{text[-half:]}"


def _clip_any(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return _clip(value, limit)
    if isinstance(value, dict):
        return {str(k): _clip_any(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_any(v, limit) for v in value]
    return value


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&`, no raw line separators."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _summary(t: Trajectory) -> dict[str, Any]:
    turns = t.num_turns or sum(m.role == "assistant" for m in t.messages)
    return {"id": t.trajectory_id, "task": t.task_id, "repo": t.repo, "kind": t.kind, "reward": t.reward,
            "resolved": t.resolved, "termination": t.termination, "turns": turns,
            "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "duration": t.timings.get("total"), "model": str(t.policy.get("model") or t.policy.get("name") or ""),
            "error": (t.error or "")[:300]}


def _details(t: Trajectory, limit: int) -> dict[str, Any]:
    messages = []
    for m in t.messages:
        entry: dict[str, Any] = {"role": m.role, "content": _clip(m.content, limit)}
        if m.action is not None:
            entry["action"] = _clip_any(m.action, limit)
        if m.tool_calls:
            entry["tool_calls"] = _clip_any(m.tool_calls, limit)
        if m.action_error:
            entry["action_error"] = _clip(m.action_error, limit)
        if m.finish_reason:
            entry["finish_reason"] = m.finish_reason
        if m.token_ids is not None:
            entry["tokens"] = len(m.token_ids)
        if m.policy_version is not None:
            entry["policy_version"] = m.policy_version
        messages.append(entry)
    return {"messages": messages, "reward_details": _clip_any(t.reward_details, limit), "diff": _clip(t.diff, limit),
            "error": t.error, "timings": t.timings, "policy": _clip_any(t.policy, limit),
            "metadata": _clip_any(t.metadata, limit), "started_at": t.started_at, "finished_at": t.finished_at,
            "sample": t.sample}


@functools.cache
def _page() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def render_html(trajectories: Sequence[Trajectory], title: str = "Forager trajectories",
                max_text: int = MAX_TEXT) -> str:
    """The page, as one string."""
    blocks = [f'<script type="application/json" id="d{n}">{_script_json(_details(t, max_text))}</script>'
              for n, t in enumerate(trajectories)]
    parts = {"TITLE": html.escape(title), "SUMMARY": _script_json([_summary(t) for t in trajectories]),
             "DETAILS": "\n".join(blocks)}
    # one pass over the template, so text inside the data is never taken for a placeholder
    return re.sub(r"__(TITLE|SUMMARY|DETAILS)__", lambda m: parts[m.group(1)], _page())


def write_view(inputs: Iterable[str | Path], out_html: str | Path, title: str | None = None) -> Path:
    """Read the trajectories in the inputs and write the page to `out_html` (atomically)."""
    inputs = list(inputs)
    trajectories = read_trajectories(inputs)
    out_html = Path(out_html)
    page = render_html(trajectories, title or f"Forager trajectories: {', '.join(str(i) for i in inputs)}")
    with atomic_output(out_html) as out:
        out.write(page)
    return out_html
