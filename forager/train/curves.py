"""A run's learning curves as one SVG (`curves.svg` in the run directory), from its `metrics.jsonl`.

Four panels over the steps: the reward mean and the resolved share; the KL to the reference (when there is
one) and the entropy; the staleness and the samples dropped as stale; the seconds each step spent waiting for rollouts, in the learner and in
the weight sync. Plain SVG written by hand: any browser shows it, and nothing is installed for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from forager.files import atomic_write_text

CURVES = "curves.svg"
WIDTH, PANEL_HEIGHT, MARGIN = 720, 180, 48
PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("reward", (("reward_mean", "reward mean", "#1f77b4"), ("rollout/resolved_share", "resolved share", "#2ca02c"))),
    ("policy", (("ref/kl", "KL to reference", "#d62728"), ("policy/entropy", "entropy", "#9467bd"))),
    ("staleness", (("staleness_max", "max (versions)", "#8c564b"), ("dropped_stale", "dropped stale", "#e377c2"))),
    ("seconds per step", (("time/rollout_s", "waiting for rollouts", "#ff7f0e"), ("time/learner_s", "learner", "#1f77b4"),
                          ("time/sync_s", "weight sync", "#7f7f7f"))),
)


def write_curves(out_dir: str | Path, lines: Sequence[dict[str, Any]]) -> Path:
    """Draw `lines` (metrics.jsonl's objects) into `out_dir/curves.svg`; returns its path."""
    path = Path(out_dir) / CURVES
    height = len(PANELS) * (PANEL_HEIGHT + MARGIN) + MARGIN
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    steps = [float(line["step"]) for line in lines]
    for index, (title, series) in enumerate(PANELS):
        top = MARGIN + index * (PANEL_HEIGHT + MARGIN)
        parts += _panel(title, series, steps, lines, top)
    parts.append("</svg>")
    atomic_write_text(path, "\n".join(parts))
    return path


def _panel(title: str, series: Sequence[tuple[str, str, str]], steps: list[float], lines: Sequence[dict[str, Any]],
           top: float) -> list[str]:
    """One panel: a frame, its title, the y range, a polyline and a legend entry per series that has values."""
    left, right, bottom = MARGIN + 16, WIDTH - 16, top + PANEL_HEIGHT
    present = [(key, label, colour) for key, label, colour in series if any(key in line for line in lines)]
    values = [float(line[key]) for key, _, _ in present for line in lines if key in line]
    low, high = (min(values + [0.0]), max(values + [1e-9])) if values else (0.0, 1.0)
    first, last = (steps[0], steps[-1]) if steps else (0.0, 1.0)

    def x(step: float) -> float:
        return left + (step - first) / max(last - first, 1.0) * (right - left)

    def y(value: float) -> float:
        return bottom - (value - low) / max(high - low, 1e-12) * PANEL_HEIGHT

    out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{PANEL_HEIGHT}" fill="none" stroke="#ccc"/>',
           f'<text x="{left}" y="{top - 6}" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{high:.3g}</text>',
           f'<text x="{left - 4}" y="{bottom}" text-anchor="end">{low:.3g}</text>',
           f'<text x="{right}" y="{bottom + 14}" text-anchor="end">step {last:.0f}</text>']
    legend_x = left + 7 * len(title) + 24
    for key, label, colour in present:
        points = " ".join(f"{x(step):.1f},{y(float(line[key])):.1f}" for step, line in zip(steps, lines) if key in line)
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{legend_x}" y="{top - 6}" fill="{colour}">{escape(label)}</text>')
        legend_x += 7 * len(label) + 24
    return out
