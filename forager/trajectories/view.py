"""One self-contained HTML page to browse trajectories: a filterable table, and each episode's turns.

No network and no external assets: the data is embedded as JSON in `<script type="application/json">`
blocks with `<`, `>` and `&` written as `\\u003c`, `\\u003e`, `\\u0026` (so `</script>` inside a
trajectory cannot end the block), and the page's script puts every piece of trajectory text into
the page with `textContent`, never as HTML. A trajectory's details are parsed only when it is
opened, so a page with thousands of episodes stays quick. `#traj=ID` (URL-encoded) opens one.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from forager.trajectories.store import read_trajectories
from forager.files import atomic_output
from forager.core import Trajectory

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
        if m.tool_call is not None:
            entry["tool_call"] = _clip_any(m.tool_call, limit)
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


def render_html(trajectories: Sequence[Trajectory], title: str = "Forager trajectories",
                max_text: int = MAX_TEXT) -> str:
    """The page, as one string."""
    blocks = [f'<script type="application/json" id="d{n}">{_script_json(_details(t, max_text))}</script>'
              for n, t in enumerate(trajectories)]
    parts = {"TITLE": html.escape(title), "SUMMARY": _script_json([_summary(t) for t in trajectories]),
             "DETAILS": "\n".join(blocks)}
    # one pass over the template, so text inside the data is never taken for a placeholder
    return re.sub(r"__(TITLE|SUMMARY|DETAILS)__", lambda m: parts[m.group(1)], _PAGE)


def write_view(inputs: Iterable[str | Path], out_html: str | Path, title: str | None = None) -> Path:
    """Read the trajectories in the inputs and write the page to `out_html` (atomically)."""
    inputs = list(inputs)
    trajectories = read_trajectories(inputs)
    out_html = Path(out_html)
    page = render_html(trajectories, title or f"Forager trajectories: {', '.join(str(i) for i in inputs)}")
    with atomic_output(out_html) as out:
        out.write(page)
    return out_html


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
:root { --fg: #1d2430; --muted: #667085; --line: #e3e6ec; --bg: #f7f8fa; --accent: #2f6fde;
        --ok: #17803d; --bad: #c0362c; --warn: #a15c00; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid var(--line); display: flex; gap: 16px; align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; }
#stats { color: var(--muted); }
#controls { display: flex; gap: 8px; align-items: center; padding: 8px 16px; background: #fff; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
#controls input[type=search] { width: 320px; max-width: 60vw; }
input, select { font: inherit; padding: 4px 6px; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
#shown { color: var(--muted); }
main { display: grid; grid-template-columns: minmax(560px, 46%) 1fr; height: calc(100vh - 92px); }
#list { overflow: auto; border-right: 1px solid var(--line); background: #fff; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { position: sticky; top: 0; background: #eef1f5; cursor: pointer; user-select: none; font-weight: 600; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #f1f5ff; }
tbody tr.selected { background: #dfe9ff; }
td.task { max-width: 260px; overflow: hidden; text-overflow: ellipsis; font-family: var(--mono); font-size: 12.5px; }
.yes { color: var(--ok); font-weight: 600; } .no { color: var(--bad); }
.term { font-size: 12px; padding: 1px 6px; border-radius: 10px; background: #eef1f5; }
.term.submitted { background: #e3f4e8; } .term.crashed, .term.env_error, .term.policy_error { background: #fbe4e2; }
.term.out_of_turns, .term.out_of_context { background: #fff1d6; }
#detail { overflow: auto; padding: 12px 18px 40px; }
#detail .empty { color: var(--muted); margin-top: 40px; text-align: center; }
h2 { font-size: 15px; margin: 4px 0 6px; font-family: var(--mono); word-break: break-all; }
h3 { font-size: 14px; margin: 20px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 3px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; word-break: break-word; }
.msg { background: #fff; border: 1px solid var(--line); border-left: 4px solid #c9ced8; border-radius: 4px; margin: 8px 0; padding: 6px 10px; }
.msg.assistant { border-left-color: var(--accent); }
.msg.tool, .msg.observation { border-left-color: #8a94a6; background: #fbfbfc; }
.msg.system { border-left-color: #b78cf2; }
.role { font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.role .extra { text-transform: none; font-weight: 400; margin-left: 8px; }
pre { margin: 4px 0; padding: 6px 8px; background: #f4f6f9; border-radius: 3px; overflow: auto; max-height: 70vh;
      font: 12.5px/1.4 var(--mono); white-space: pre-wrap; word-break: break-word; }
pre.text { background: transparent; padding: 0; font-family: inherit; font-size: 13.5px; }
.call { border: 1px solid #cfdcf7; background: #f5f8ff; border-radius: 4px; padding: 4px 8px; margin-top: 6px; }
.call .name { font-family: var(--mono); font-weight: 700; color: var(--accent); }
.call .arg { font-family: var(--mono); font-size: 12px; color: var(--muted); margin-top: 4px; }
.error { color: var(--bad); font-weight: 600; }
details > summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
table.tests td { font-family: var(--mono); font-size: 12.5px; white-space: normal; word-break: break-all; }
.diff .add { color: var(--ok); background: #eaf7ee; } .diff .del { color: var(--bad); background: #fdecea; }
.diff .hunk { color: #6f42c1; } .diff .file { font-weight: 700; }
</style>
</head>
<body>
<header><h1>__TITLE__</h1><span id="stats"></span></header>
<div id="controls">
  <input id="filter" type="search" placeholder="filter: task id, repo, model, error..." autocomplete="off">
  <select id="termination"><option value="">every termination</option></select>
  <select id="resolved"><option value="">resolved or not</option><option value="1">resolved</option><option value="0">not resolved</option></select>
  <span id="shown"></span>
</div>
<main>
  <div id="list"><table>
    <thead><tr>
      <th data-key="task">task</th><th data-key="reward" class="num">reward</th><th data-key="resolved">resolved</th>
      <th data-key="termination">termination</th><th data-key="turns" class="num">turns</th>
      <th data-key="prompt_tokens" class="num" title="tokens in the last prompt">context</th>
      <th data-key="completion_tokens" class="num" title="tokens sampled over the episode">sampled</th>
      <th data-key="duration" class="num">time</th>
    </tr></thead>
    <tbody id="rows"></tbody>
  </table></div>
  <div id="detail"><p class="empty">Choose a trajectory.</p></div>
</main>
<script type="application/json" id="summary">__SUMMARY__</script>
__DETAILS__
<script>
"use strict";
const TRAJS = JSON.parse(document.getElementById("summary").textContent);
const LONG_LINES = 25, LONG_CHARS = 2500, MAX_ROWS = 20000;
let sortKey = null, sortDir = 1, selected = -1;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}
const fmt = (x, digits) => (x === null || x === undefined) ? "" : Number(x).toFixed(digits);
function seconds(s) {
  if (s === null || s === undefined) return "";
  return s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

function setupControls() {
  const counts = {};
  for (const t of TRAJS) counts[t.termination] = (counts[t.termination] || 0) + 1;
  const select = document.getElementById("termination");
  for (const name of Object.keys(counts).sort()) select.append(el("option", {value: name}, `${name} (${counts[name]})`));
  const resolved = TRAJS.filter(t => t.resolved).length;
  const mean = TRAJS.length ? TRAJS.reduce((s, t) => s + t.reward, 0) / TRAJS.length : 0;
  document.getElementById("stats").textContent =
    `${TRAJS.length} trajectories, ${resolved} resolved (${TRAJS.length ? (100 * resolved / TRAJS.length).toFixed(1) : 0}%), mean reward ${mean.toFixed(3)}`;
  for (const id of ["filter", "termination", "resolved"]) document.getElementById(id).addEventListener("input", renderRows);
  for (const th of document.querySelectorAll("th[data-key]")) th.addEventListener("click", () => {
    const key = th.dataset.key;
    sortDir = sortKey === key ? -sortDir : (["task", "termination"].includes(key) ? 1 : -1);
    sortKey = key;
    renderRows();
  });
}

function matching() {
  const words = document.getElementById("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const term = document.getElementById("termination").value;
  const res = document.getElementById("resolved").value;
  const out = [];
  TRAJS.forEach((t, i) => {
    if (term && t.termination !== term) return;
    if (res && String(Number(t.resolved)) !== res) return;
    if (words.length) {
      const hay = [t.id, t.task, t.repo, t.kind, t.termination, t.model, t.error].join(" ").toLowerCase();
      if (!words.every(w => hay.includes(w))) return;
    }
    out.push(i);
  });
  if (sortKey) {
    const value = i => TRAJS[i][sortKey];
    out.sort((a, b) => {
      const x = value(a), y = value(b);
      return (x === y ? a - b : (x === null || x === undefined) ? 1 : (y === null || y === undefined) ? -1 : (x < y ? -sortDir : sortDir));
    });
  }
  return out;
}

function renderRows() {
  const body = document.getElementById("rows");
  const list = matching();
  const frag = document.createDocumentFragment();
  for (const i of list.slice(0, MAX_ROWS)) {
    const t = TRAJS[i];
    const row = el("tr", {"data-index": String(i), "data-id": t.id},
      el("td", {class: "task", title: t.id}, t.id),
      el("td", {class: "num"}, fmt(t.reward, 2)),
      el("td", {class: t.resolved ? "yes" : "no"}, t.resolved ? "yes" : "no"),
      el("td", {}, el("span", {class: "term " + t.termination}, t.termination)),
      el("td", {class: "num"}, String(t.turns)),
      el("td", {class: "num"}, String(t.prompt_tokens)),
      el("td", {class: "num"}, String(t.completion_tokens)),
      el("td", {class: "num"}, seconds(t.duration)));
    if (i === selected) row.classList.add("selected");
    row.addEventListener("click", () => openTrajectory(i, true));
    frag.append(row);
  }
  body.replaceChildren(frag);
  document.getElementById("shown").textContent = list.length > MAX_ROWS
    ? `showing ${MAX_ROWS} of ${list.length} matching; narrow the filter` : `${list.length} shown`;
}

function block(text, cls) { return el("pre", {class: cls || ""}, text); }
function foldable(label, text, cls, open) {
  const lines = text.split("\n").length;
  const long = lines > LONG_LINES || text.length > LONG_CHARS;
  const d = el("details", {}, el("summary", {}, `${label} (${lines} lines, ${text.length} chars)`), block(text, cls));
  if (open && !long) d.open = true;
  return d;
}

function renderCall(call) {
  const box = el("div", {class: "call"}, el("span", {class: "name"}, String(call.name)));
  const args = call.arguments;
  if (args && typeof args === "object" && !Array.isArray(args)) {
    for (const [k, v] of Object.entries(args)) {
      box.append(el("div", {class: "arg"}, k), block(typeof v === "string" ? v : JSON.stringify(v, null, 2)));
    }
  } else if (args !== undefined && args !== null) {
    box.append(block(typeof args === "string" ? args : JSON.stringify(args, null, 2)));
  }
  return box;
}

function renderMessage(m, n, acted) {
  const observation = m.role === "tool" || (m.role === "user" && acted);
  const kind = observation ? "observation" : m.role;
  const extra = [];
  if (m.tokens !== undefined) extra.push(`${m.tokens} tokens`);
  if (m.finish_reason) extra.push(`finish: ${m.finish_reason}`);
  if (m.policy_version !== undefined) extra.push(`policy v${m.policy_version}`);
  const box = el("div", {class: `msg ${m.role} ${kind}`, "data-turn": String(n)},
    el("div", {class: "role"}, `${n}. ${kind}`, el("span", {class: "extra"}, extra.join(" · "))));
  if (m.role === "assistant") {
    if (m.content) box.append(block(m.content, "text"));
    if (m.tool_call) box.append(renderCall(m.tool_call));
    else if (m.tool_calls) box.append(block(JSON.stringify(m.tool_calls, null, 2)));
    if (m.action_error) box.append(el("div", {class: "error"}, "action error: " + m.action_error));
  } else if (m.role === "system") {
    box.append(foldable("system prompt", m.content, "text", false));
  } else if (observation) {
    box.append(foldable("output", m.content, "observation", true));
  } else {
    box.append(foldable("task prompt", m.content, "text", true));
  }
  return box;
}

function renderTests(rd) {
  const out = el("div", {});
  const status = rd.tests_status || {};
  const groups = [["FAIL_TO_PASS", rd.fail_to_pass], ["PASS_TO_PASS", rd.pass_to_pass]];
  for (const [name, res] of groups) {
    if (!res || typeof res !== "object") continue;
    const ok = res.success || [], bad = res.failure || [];
    const table = el("table", {class: "tests"}, el("tr", {}, el("th", {}, `${name}: ${ok.length} passed, ${bad.length} failed`), el("th", {}, "status")));
    for (const [tests, cls] of [[bad, "no"], [ok, "yes"]]) {
      for (const test of tests) table.append(el("tr", {}, el("td", {}, test), el("td", {class: cls}, status[test] || (cls === "yes" ? "PASSED" : "FAILED"))));
    }
    out.append(table);
  }
  if (!rd.fail_to_pass && !rd.pass_to_pass && Object.keys(status).length) {
    const table = el("table", {class: "tests"}, el("tr", {}, el("th", {}, "test"), el("th", {}, "status")));
    for (const [test, s] of Object.entries(status)) table.append(el("tr", {}, el("td", {}, test), el("td", {class: s === "PASSED" ? "yes" : "no"}, String(s))));
    out.append(table);
  }
  return out;
}

function renderDiff(diff) {
  const pre = el("pre", {class: "diff"});
  for (const line of diff.split("\n")) {
    let cls = "";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff --git")) cls = "file";
    else if (line.startsWith("+")) cls = "add";
    else if (line.startsWith("-")) cls = "del";
    else if (line.startsWith("@@")) cls = "hunk";
    pre.append(el("span", {class: cls}, line + "\n"));
  }
  return pre;
}

function openTrajectory(i, updateHash) {
  const t = TRAJS[i];
  if (!t) return;
  const d = JSON.parse(document.getElementById("d" + i).textContent);
  selected = i;
  for (const row of document.querySelectorAll("tbody tr.selected")) row.classList.remove("selected");
  const row = document.querySelector(`tbody tr[data-index="${i}"]`);
  if (row) row.classList.add("selected");
  if (updateHash) history.replaceState(null, "", "#traj=" + encodeURIComponent(t.id));

  const pane = el("div", {id: "trajectory", "data-id": t.id});
  pane.append(el("h2", {}, t.id));
  const meta = el("dl", {class: "meta"});
  const add = (k, v) => { if (v !== "" && v !== null && v !== undefined) meta.append(el("dt", {}, k), el("dd", {}, String(v))); };
  add("task", t.task); add("repo", t.repo); add("kind", t.kind);
  add("reward", t.reward); add("resolved", t.resolved ? "yes" : "no"); add("termination", t.termination);
  add("turns", t.turns); add("tokens", `${t.prompt_tokens} in the last prompt, ${t.completion_tokens} sampled`);
  add("policy", Object.keys(d.policy || {}).length ? JSON.stringify(d.policy) : "");
  add("timings", Object.entries(d.timings || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`).join(", "));
  add("started", d.started_at); add("finished", d.finished_at);
  pane.append(meta);
  if (d.error) pane.append(el("p", {class: "error"}, "error: " + d.error));

  pane.append(el("h3", {}, `Turns (${d.messages.length} messages)`));
  let acted = false;
  d.messages.forEach((m, n) => { pane.append(renderMessage(m, n, acted)); if (m.role === "assistant") acted = true; });

  const rd = d.reward_details || {};
  pane.append(el("h3", {}, "Reward"));
  const summary = [`reward ${t.reward}`];
  if (rd.report) summary.push(`report ${rd.report}`);
  if (rd.patch_applied === false) summary.push("patch did not apply");
  pane.append(el("p", {}, summary.join(" · ")));
  if (rd.error) pane.append(el("p", {class: "error"}, String(rd.error)));
  pane.append(renderTests(rd));
  const rest = Object.fromEntries(Object.entries(rd).filter(([k]) => !["tests_status", "fail_to_pass", "pass_to_pass", "log", "report", "error"].includes(k)));
  if (Object.keys(rest).length) pane.append(foldable("other reward details", JSON.stringify(rest, null, 2), "", false));
  if (rd.log) pane.append(foldable("test log", String(rd.log), "", false));

  pane.append(el("h3", {}, "Diff"));
  pane.append(d.diff ? renderDiff(d.diff) : el("p", {class: "empty"}, "(no diff)"));
  if (d.metadata && Object.keys(d.metadata).length) pane.append(foldable("metadata", JSON.stringify(d.metadata, null, 2), "", false));

  const detail = document.getElementById("detail");
  detail.replaceChildren(pane);
  detail.scrollTop = 0;
}

function openFromHash() {
  const m = location.hash.match(/^#traj=(.*)$/);
  if (!m) return;
  let id;
  try { id = decodeURIComponent(m[1]); } catch (e) { return; }
  const i = TRAJS.findIndex(t => t.id === id);
  if (i >= 0) {
    openTrajectory(i, false);
    const row = document.querySelector(`tbody tr[data-index="${i}"]`);
    if (row) row.scrollIntoView({block: "nearest"});
  }
}

setupControls();
renderRows();
openFromHash();
window.addEventListener("hashchange", openFromHash);
</script>
</body>
</html>
"""
