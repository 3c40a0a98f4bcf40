"""``imgclf release show``: every registered version, its stages and its headline metrics.

GTO lists versions and stages but no numbers; a promotion decision needs both. Metrics
are git-tracked (``metrics/evaluate.json``), so they are read at each version's commit
with ``git show`` (no DVC remote, no checkout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.pipeline.outputs import EVALUATE
from imgclf.release.registry import STAGES, artifact_name, current, versions
from imgclf.report.revisions import json_at

# Headline columns: the evaluate stage's top-level scalars a reviewer compares.
HEADLINE = ("accuracy", "macro_f1", "ece", "n_test")


@dataclass(frozen=True)
class Row:
    """One registered version as the table shows it."""

    version: str
    commit: str
    stages: tuple[str, ...]
    metrics: dict[str, Any]


def rows(root: Path) -> list[Row]:
    """Registered versions, newest first, with the stages they hold now and their metrics."""
    name = artifact_name(root)
    holders = {stage: p.version for stage, p in current(root, name).items() if p is not None}
    out = []
    for v in versions(root, name):
        metrics = json_at(root, EVALUATE, v.commit) or {}
        held = tuple(s for s in (*STAGES, *sorted(holders)) if holders.get(s) == v.version)
        out.append(Row(v.version, v.commit, tuple(dict.fromkeys(held)),
                       {k: metrics.get(k) for k in HEADLINE}))  # fmt: skip
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(root: Path) -> str:
    """A plain-text table: stage holders first, as `imgclf release show` prints it."""
    table = rows(root)
    if not table:
        return "no registered versions: imgclf release register\n"
    by_stage = {s: r for r in table for s in r.stages}
    lines = []
    for stage in STAGES:
        row = by_stage.get(stage)
        held = f"{row.version} ({row.commit[:8]})" if row else "—"
        lines.append(f"{stage:8} {held}")
    header = ["version", "commit", "stages", *HEADLINE]
    body = [[r.version, r.commit[:8], ",".join(r.stages) or "-",
             *(_cell(r.metrics[k]) for k in HEADLINE)] for r in table]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines.append("")
    for cells in (header, *body):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines) + "\n"
