"""The pull-request report: what a change did to the model, as markdown a reviewer reads.

``imgclf report --base main`` compares the workspace with any git revision. DVC does
the diffing it already knows (``metrics diff``, ``params diff``, through its Python
API); this module adds what DVC does not: per-class changes sorted by size, a paired
significance test on the per-sample predictions (:mod:`imgclf.compare`), a text
confusion-change table, and plain notes instead of crashes when the base has no
metrics or evaluated a different test set. ``imgclf data-report`` does the same for the
dataset report that ``prepare`` writes.

Everything is text (tables), so the PR comment reads without images; PNG links are
added only with ``images=True`` (the CML workflow leaves publishing off by default).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgclf.baseline import warning as baseline_warning
from imgclf.compare import (
    NotPairedError,
    PairedComparison,
    Prediction,
    compare_predictions,
    confusion_changes,
    parse_predictions,
)

EVALUATE = "metrics/evaluate.json"
TRAIN = "metrics/train/metrics.json"
PREDICTIONS = "metrics/predictions.csv"
PREPARE = "metrics/prepare.json"
CONFUSION_PNG = "metrics/confusion_matrix.png"

# (file, flattened key, label): the rows of the headline table, in reading order.
HEADLINE: tuple[tuple[str, str, str], ...] = (
    (EVALUATE, "accuracy", "accuracy"),
    (EVALUATE, "macro_f1", "macro-F1"),
    (EVALUATE, "ece", "calibration error (ECE, lower is better)"),
    (EVALUATE, "macro_precision", "macro precision"),
    (EVALUATE, "macro_recall", "macro recall"),
    (EVALUATE, "mean_confidence", "mean confidence"),
    (EVALUATE, "n_errors", "test errors"),
    (EVALUATE, "n_test", "test samples"),
    (EVALUATE, "baseline.accuracy", "linear baseline accuracy"),
    (EVALUATE, "baseline.macro_f1", "linear baseline macro-F1"),
    (EVALUATE, "baseline.majority_accuracy", "majority-class accuracy"),
    (TRAIN, "val.accuracy", "validation accuracy"),
    (TRAIN, "val.loss", "validation loss"),
    (TRAIN, "epochs_run", "epochs run"),
)
MAX_ROWS = 30


class ReportError(RuntimeError):
    """A problem the user must fix (unknown revision, no metrics in the workspace)."""


# --------------------------------------------------------------------------- reading


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def resolve_revision(root: Path, rev: str) -> str:
    """The commit a revision names; a clear error for shallow clones and typos."""
    proc = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if proc.returncode != 0:
        raise ReportError(
            f"unknown git revision {rev!r}: fetch it first (git fetch origin {rev.split('/')[-1]};"
            " in GitHub Actions checkout with fetch-depth: 0)"
        )
    return proc.stdout.strip()


def read_at(root: Path, path: str, rev: str | None) -> str | None:
    """A file's text in the workspace (``rev=None``) or at a git revision; None if absent.

    Git first (metrics are git-tracked, so no remote is needed in CI); if the file is a
    DVC-cached output at that revision, DVC's API fetches it from the cache or remote.
    """
    if rev is None:
        file = root / path
        return file.read_text() if file.is_file() else None
    proc = _git(root, "show", f"{rev}:{path}")
    if proc.returncode == 0:
        return proc.stdout
    try:
        import dvc.api

        return dvc.api.read(path, repo=str(root), rev=rev)
    except Exception:  # noqa: BLE001 - any DVC failure means "not available at that revision"
        return None


def _json_at(root: Path, path: str, rev: str | None) -> dict[str, Any] | None:
    text = read_at(root, path, rev)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _workspace_json(root: Path, path: str, target: str = "") -> dict[str, Any]:
    """A metrics file of the workspace, or a clear error saying what to run to get it."""
    data = _json_at(root, path, None)
    if data is None:
        command = f"dvc repro {target}".strip()
        raise ReportError(f"{path} is missing in the workspace: run `{command}` first")
    return data


def _strip(diff: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """DVC's diff keyed by repo-relative file; DVC prints paths relative to the cwd."""
    out: dict[str, dict[str, Any]] = {}
    for path, entries in diff.get("diff", {}).items():
        out[Path(path).as_posix().removeprefix("./")] = entries
    return out


def dvc_diffs(root: Path, base: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``dvc metrics diff <base> --all`` and ``dvc params diff <base>``, via DVC's API."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        metrics = repo.metrics.diff(a_rev=base, all=True)
        params = repo.params.diff(a_rev=base)
    return _strip(metrics), _strip(params)


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """Numbers as a reviewer wants them: 4 decimals for fractions, integers as is."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.6g}"
    return str(value)


def fmt_change(old: Any, new: Any) -> str:
    """Signed difference, or a plain word when there is nothing to subtract."""
    if old is None and new is None:
        return "—"
    if old is None:
        return "new"
    if new is None:
        return "removed"
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        diff = new - old
        if diff == 0:
            return "0"
        if isinstance(old, int) and isinstance(new, int):
            return f"{diff:+d}"
        return f"{diff:+.4f}"
    return "changed" if old != new else "0"


def param_value(value: Any) -> str:
    """A param as one would type it after ``-S key=``."""
    if value is None:
        return "(unset)"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value).lower() if isinstance(value, bool) else str(value)


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A GitHub markdown table."""
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def code(text: str) -> str:
    """Inline code that survives backticks in revision names."""
    return f"`{text.replace('`', '')}`"


# --------------------------------------------------------------------------- model report


@dataclass
class ModelReport:
    """Everything the markdown is rendered from (kept separate so tests can inspect it)."""

    base: str
    label: str
    base_commit: str
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_eval: dict[str, Any] | None = None
    head_eval: dict[str, Any] | None = None
    base_predictions: dict[str, Prediction] | None = None
    head_predictions: dict[str, Prediction] | None = None
    paired: PairedComparison | None = None
    not_paired_reason: str | None = None
    different_test_sets: bool = False

    @property
    def changed_params(self) -> list[tuple[str, Any, Any]]:
        """(file:key or key, old, new) for each param whose value differs."""
        out = []
        for path, entries in sorted(self.params.items()):
            for key, entry in sorted(entries.items()):
                old, new = entry.get("old"), entry.get("new")
                if old != new:
                    name = key if path == "params.yaml" else f"{path}:{key}"
                    out.append((name, old, new))
        return out

    @property
    def changed_metrics(self) -> list[tuple[str, str, Any, Any]]:
        """(file, key, old, new) for every metric DVC reports as different."""
        out = []
        for path, entries in sorted(self.metrics.items()):
            for key, entry in sorted(entries.items()):
                old, new = entry.get("old"), entry.get("new")
                if old != new:
                    out.append((path, key, old, new))
        return out

    @property
    def nothing_changed(self) -> bool:
        """Same params, same metrics, same per-sample predictions: say so in one line."""
        same_predictions = (
            self.base_predictions is not None and self.base_predictions == self.head_predictions
        )
        return (
            self.base_eval is not None
            and not self.changed_params
            and not self.changed_metrics
            and same_predictions
        )

    def metric(self, path: str, key: str) -> tuple[Any, Any]:
        """(base, this) value of one flattened metric."""
        entry = self.metrics.get(path, {}).get(key, {})
        return entry.get("old"), entry.get("new")

    def who(self) -> str:
        """The subject of the noise sentence: the changed params, or "this change"."""
        changed = self.changed_params
        if not changed:
            return "This change"
        parts = [f"{name}={param_value(new)}" for name, _, new in changed[:3]]
        more = f" and {len(changed) - 3} more params" if len(changed) > 3 else ""
        return ", ".join(parts) + more


def build_model_report(root: Path, base: str, label: str = "workspace") -> ModelReport:
    """Collect DVC's diffs, both revisions' evaluation files and the paired comparison."""
    root = root.resolve()
    commit = resolve_revision(root, base)
    head_eval = _workspace_json(root, EVALUATE)
    metrics, params = dvc_diffs(root, base)
    report = ModelReport(base=base, label=label, base_commit=commit, metrics=metrics, params=params)
    report.head_eval = head_eval
    report.base_eval = _json_at(root, EVALUATE, commit)
    head_text = read_at(root, PREDICTIONS, None)
    base_text = read_at(root, PREDICTIONS, commit) if report.base_eval is not None else None
    report.head_predictions = parse_predictions(head_text) if head_text else None
    report.base_predictions = parse_predictions(base_text) if base_text else None
    if report.base_predictions is not None and report.head_predictions is not None:
        try:
            report.paired = compare_predictions(report.base_predictions, report.head_predictions)
        except NotPairedError as exc:
            report.not_paired_reason = str(exc)
            report.different_test_sets = True
    elif report.base_eval is not None:
        report.not_paired_reason = f"{PREDICTIONS} is missing at one of the two revisions"
    return report


def noise_sentence(report: ModelReport) -> str:
    """One plain sentence: how accuracy moved and whether that is larger than noise."""
    who = report.who()
    base_acc, head_acc = report.metric(EVALUATE, "accuracy")
    if report.paired is None:
        moved = (
            f"from {fmt(base_acc)} to {fmt(head_acc)}"
            if base_acc is not None and head_acc is not None
            else f"to {fmt(head_acc)}"
        )
        reason = report.not_paired_reason or "no per-sample predictions to pair"
        return (
            f"{who} changed test accuracy {moved}, but the comparison is **not paired** "
            f"({reason}), so no significance test was run."
        )
    p = report.paired
    if p.identical:
        return (
            f"{who} left test accuracy at {p.head_accuracy:.4f}: every one of the {p.n} test "
            "samples is classified correctly or wrongly exactly as before — **no change**."
        )
    return (
        f"{who} changed test accuracy from {p.base_accuracy:.4f} to {p.head_accuracy:.4f} "
        f"({p.difference * 100:+.2f} pp, 95 % CI [{p.ci_low * 100:+.2f}, {p.ci_high * 100:+.2f}]"
        f" pp; McNemar exact p = {p.p_value:.3g}, {p.head_only} fixed / {p.base_only} broken "
        f"of {p.n} samples): **{p.verdict}**."
    )


def _rows_by(data: dict[str, Any], key: str, name: str) -> dict[str, dict[str, Any]]:
    """A detail table stored as a list of rows (DVC does not tabulate lists) as a mapping.

    Revisions written before issue 10 stored a mapping: it is returned as it is, so a
    report against an old base still compares class by class.
    """
    rows = data.get(key) or {}
    if isinstance(rows, dict):
        return rows
    return {str(r.get(name)): r for r in rows if isinstance(r, dict)}


def _image_sizes(data: dict[str, Any]) -> dict[str, Any]:
    """``{min_width: …, median_height: …}`` from either layout of ``image_size``."""
    sizes = data.get("image_size") or {}
    if isinstance(sizes, dict):
        return sizes
    return {f"{s}_{r.get('side')}": r.get(s) for r in sizes for s in ("min", "median", "max")}


def _per_class_rows(report: ModelReport) -> list[list[str]]:
    base = _rows_by(report.base_eval or {}, "per_class", "class")
    head = _rows_by(report.head_eval or {}, "per_class", "class")
    rows: list[tuple[float, str, list[str]]] = []
    for cls in sorted(set(base) | set(head)):
        b, h = base.get(cls, {}), head.get(cls, {})
        cells = [code(cls)]
        biggest = 0.0
        for key in ("precision", "recall", "f1"):
            old, new = b.get(key), h.get(key)
            if isinstance(old, (int, float)) and isinstance(new, (int, float)):
                biggest = max(biggest, abs(new - old))
            cells.append(f"{fmt(old)} → {fmt(new)} ({fmt_change(old, new)})")
        cells.append(f"{fmt(h.get('support', b.get('support')))}")
        rows.append((-biggest, cls, cells))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [cells for _, _, cells in rows]


def baseline_line(head_eval: dict[str, Any] | None) -> list[str]:
    """The report's first line when this revision's model does not beat the linear baseline.

    First, before the title: a reviewer who reads one line must learn the model is
    no better than logistic regression on pixels (see :mod:`imgclf.baseline`).
    """
    text = baseline_warning(head_eval or {}) if (head_eval or {}).get("accuracy") else None
    return [f"> ⚠️ **{text}**", ""] if text else []


def render_model_report(report: ModelReport, images: bool = False) -> str:
    """The markdown of the PR comment."""
    b, t = report.base, report.label
    lines = [f"## Model report: {code(t)} vs {code(b)} ({report.base_commit[:8]})", ""]
    lines = [*baseline_line(report.head_eval), *lines]
    if report.base_eval is None:
        lines += [
            f"> **Note:** the base revision {code(b)} has no metrics ({code(EVALUATE)} is not "
            "there), so there is nothing to compare against yet. This revision's values are "
            "shown; the next PR will be compared with them once this one is merged.",
            "",
        ]
    elif report.nothing_changed:
        lines += [
            f"**Nothing changed** against {code(b)}: the same params, the same metrics and the "
            "same per-sample predictions.",
            "",
        ]
    if report.base_eval is not None:
        lines += [noise_sentence(report), ""]
    if report.different_test_sets:
        lines += [
            f"> **Note:** the two revisions evaluated different test sets "
            f"({report.not_paired_reason}): the comparison is **not paired**, so per-sample "
            "statistics and confusion changes mix a model change with a data change.",
            "",
        ]

    lines += ["### Metrics", ""]
    rows = []
    for path, key, name in HEADLINE:
        old, new = report.metric(path, key)
        if old is None and new is None:
            continue
        rows.append([name, fmt(old), fmt(new), fmt_change(old, new)])
    lines += [*table(["metric", b, t, "change"], rows), ""]

    lines += ["### Params that changed", ""]
    changed = report.changed_params
    if changed:
        rows = [[code(n), param_value(o), param_value(v)] for n, o, v in changed]
        lines += [*table(["param", b, t], rows), ""]
    else:
        lines += ["None.", ""]

    lines += ["### Per-class precision / recall / F1 (largest change first)", ""]
    rows = _per_class_rows(report)
    lines += table(["class", "precision", "recall", "F1", "support"], rows[:MAX_ROWS])
    if len(rows) > MAX_ROWS:
        lines += ["", f"… and {len(rows) - MAX_ROWS} more classes with smaller changes."]
    lines += [""]

    lines += ["### Confusion-matrix changes", ""]
    if report.base_predictions is None or report.head_predictions is None:
        lines += ["No per-sample predictions at the base revision to compare with.", ""]
    else:
        cells = confusion_changes(report.base_predictions, report.head_predictions)
        ordered = sorted(
            cells.items(), key=lambda kv: (-abs(kv[1][1] - kv[1][0]), kv[0][0] != kv[0][1], kv[0])
        )
        if not ordered:
            lines += ["No cell of the confusion matrix changed.", ""]
        else:
            rows = [
                [code(a), code(p), "✓" if a == p else "✗", str(o), str(n), f"{n - o:+d}"]
                for (a, p), (o, n) in ordered[:MAX_ROWS]
            ]
            lines += table(["actual", "predicted", "correct", b, t, "change"], rows)
            if len(ordered) > MAX_ROWS:
                lines += ["", f"… and {len(ordered) - MAX_ROWS} more cells."]
            lines += [""]

    other = [
        (path, key, old, new)
        for path, key, old, new in report.changed_metrics
        if (path, key) not in {(p, k) for p, k, _ in HEADLINE} and not key.startswith("per_class")
    ]
    if other:
        lines += [
            f"<details><summary>All other metrics that changed ({len(other)})</summary>",
            "",
        ]
        rows = [[code(f"{p}:{k}"), fmt(o), fmt(n), fmt_change(o, n)] for p, k, o, n in other]
        lines += [*table(["metric", b, t, "change"], rows[: MAX_ROWS * 3]), "", "</details>", ""]

    if images:
        lines += ["### Plots", "", f"![confusion matrix]({CONFUSION_PNG})", ""]
    lines += [
        "<sub>Generated by `imgclf report` — paired test: McNemar's exact test on the samples "
        "whose correctness changed, and a seeded bootstrap (2,000 resamples) of the accuracy "
        "difference.</sub>",
        "",
    ]
    return "\n".join(lines)


def model_report(root: Path, base: str, label: str = "workspace", images: bool = False) -> str:
    """Build and render in one call (what the CLI and the workflow use)."""
    return render_model_report(build_model_report(root, base, label), images=images)


# --------------------------------------------------------------------------- data report


def _dvc_files_changed(root: Path, commit: str) -> list[list[str]]:
    """Rows for every ``*.dvc`` file that differs from base: what DVC tracks there now."""
    proc = _git(root, "diff", "--name-status", commit, "--", "*.dvc")
    rows = []
    for line in proc.stdout.splitlines():
        status, _, path = line.partition("\t")
        path = path.split("\t")[-1]

        def out_of(text: str | None) -> dict[str, Any]:
            if not text:
                return {}
            outs = (yaml.safe_load(text) or {}).get("outs") or [{}]
            return outs[0]

        old, new = out_of(read_at(root, path, commit)), out_of(read_at(root, path, None))
        rows.append(
            [
                code(path),
                {"A": "added", "D": "deleted", "M": "modified"}.get(status[:1], status),
                f"{fmt(old.get('nfiles'))} → {fmt(new.get('nfiles'))}",
                f"{fmt(old.get('size'))} → {fmt(new.get('size'))}",
            ]
        )
    return rows


def data_report(root: Path, base: str, label: str = "workspace") -> str:
    """The dataset report: class counts, image sizes, skipped files, changes against base."""
    root = root.resolve()
    commit = resolve_revision(root, base)
    head = _workspace_json(root, PREPARE, "prepare")
    old = _json_at(root, PREPARE, commit) or {}
    b, t = base, label
    lines = [f"## Dataset report: {code(t)} vs {code(b)} ({commit[:8]})", ""]
    if not old:
        lines += [f"> **Note:** the base revision {code(b)} has no {code(PREPARE)}.", ""]
    lines += [f"Dataset: {code(str(head.get('dataset')))}", ""]

    totals = [("images found", "n_found"), ("used", "n_used"), ("skipped", "n_skipped")]
    rows = [[n, fmt(old.get(k)), fmt(head.get(k)), fmt_change(old.get(k), head.get(k))]
            for n, k in totals]  # fmt: skip
    for split in ("train", "val", "test"):
        o, n = old.get("split", {}).get(split), head.get("split", {}).get(split)
        rows.append([f"{split} split", fmt(o), fmt(n), fmt_change(o, n)])
    lines += ["### Totals", "", *table(["", b, t, "change"], rows), ""]

    lines += ["### Images per class", ""]
    oc, hc = _rows_by(old, "classes", "class"), _rows_by(head, "classes", "class")
    rows = []
    for cls in sorted(set(oc) | set(hc)):
        o, n = oc.get(cls, {}), hc.get(cls, {})
        used = [fmt(o.get("used")), fmt(n.get("used")), fmt_change(o.get("used"), n.get("used"))]
        rows.append([code(cls), *used, *(fmt(n.get(s)) for s in ("train", "val", "test"))])
    lines += [*table(["class", f"used ({b})", f"used ({t})", "change", "train", "val", "test"],
                     rows), ""]  # fmt: skip

    lines += ["### Image sizes", ""]
    os_, hs = _image_sizes(old), _image_sizes(head)
    rows = [[k.replace("_", " "), fmt(os_.get(k)), fmt(hs.get(k))] for k in sorted(hs or os_)]
    lines += [*table(["", b, t], rows), ""]

    lines += ["### Skipped files", ""]
    ob, hb = old.get("skipped_by_reason", {}), head.get("skipped_by_reason", {})
    if not ob and not hb:
        lines += ["None skipped.", ""]
    else:
        rows = [[r, fmt(ob.get(r, 0)), fmt(hb.get(r, 0))] for r in sorted(set(ob) | set(hb))]
        lines += [*table(["reason", b, t], rows), ""]
        skipped = head.get("skipped", [])
        if skipped:
            lines += [f"<details><summary>Skipped in {code(t)} ({len(skipped)})</summary>", ""]
            for item in skipped[:100]:
                if isinstance(item, dict):
                    lines.append(f"- {code(str(item.get('path')))}: {item.get('reason')}")
                else:
                    lines.append(f"- {code(str(item))}")
            lines += ["", "</details>", ""]

    lines += ["### Tracked data that changed", ""]
    rows = _dvc_files_changed(root, commit)
    if rows:
        lines += [*table(["file", "status", "files", "bytes"], rows), ""]
    else:
        lines += ["No `.dvc` file changed.", ""]
    lines += ["<sub>Generated by `imgclf data-report` from `metrics/prepare.json`.</sub>", ""]
    return "\n".join(lines)
