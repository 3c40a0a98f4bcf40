"""The pull-request report: what a change did to the model, as markdown a reviewer reads.

``imgclf report --base main`` compares the workspace with any git revision. DVC does
the diffing it already knows (``metrics diff``, ``params diff``, through its Python
API); this module adds what DVC does not: per-class changes sorted by size, a paired
significance test on the per-sample predictions (:mod:`imgclf.evaluation.paired_test`), a text
confusion-change table, and plain notes instead of crashes when the base has no
metrics or evaluated a different test set. Reading revisions is :mod:`imgclf.report.revisions`,
escaping and number formatting :mod:`imgclf.report.markdown`; ``imgclf data-report`` is
:mod:`imgclf.report.data_changes`.

Everything is text (tables), so the PR comment reads without images. With an images
folder (``imgclf report --images DIR``) it also draws what the numbers say
(:mod:`imgclf.report.pictures`: the test images the change broke and fixed, both
revisions' training curves, the confusion change) and links them relative to the
report; the CML workflow publishes those files inside the repository, never to a public
host (docs/pull-requests.md, "Pictures").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.evaluation.baseline import warning as baseline_warning
from imgclf.evaluation.paired_test import (
    NotPairedError,
    PairedComparison,
    Prediction,
    compare_predictions,
    confusion_changes,
    parse_predictions,
)
from imgclf.pipeline.outputs import EVALUATE, PREDICTIONS, PREPARE, TRAIN, TRAIN_CURVES
from imgclf.report import pictures
from imgclf.report.markdown import (
    code,
    fit_comment,
    fmt,
    fmt_change,
    image_line,
    inline,
    param_cell,
    param_value,
    table,
)
from imgclf.report.revisions import (
    dvc_diffs,
    json_at,
    read_at,
    resolve_revision,
    rows_by,
    workspace_json,
)

# (file, flattened key, label): the rows of the headline table, in reading order.
HEADLINE: tuple[tuple[str, str, str], ...] = (
    (EVALUATE, "accuracy", "accuracy"),
    (EVALUATE, "macro_f1", "macro-F1"),
    (EVALUATE, "ece", "calibration error (ECE, lower is better)"),
    (EVALUATE, "mean_confidence", "mean confidence"),
    (EVALUATE, "n_errors", "test errors"),
    (EVALUATE, "n_test", "test samples"),
    (EVALUATE, "baseline.accuracy", "linear baseline accuracy"),
    (EVALUATE, "baseline.macro_f1", "linear baseline macro-F1"),
    (EVALUATE, "ood.auroc", "OOD detection AUROC (generated OOD sets)"),
    (EVALUATE, "ood.false_accept", "OOD false-accept rate at the threshold (lower is better)"),
    (TRAIN, "best_epoch", "kept epoch"),
    (TRAIN, "epochs_run", "epochs run"),
)
MAX_ROWS = 30


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
        parts = [inline(f"{name}={param_value(new)}") for name, _, new in changed[:3]]
        more = f" and {len(changed) - 3} more params" if len(changed) > 3 else ""
        return ", ".join(parts) + more


def build_model_report(root: Path, base: str, label: str = "workspace") -> ModelReport:
    """Collect DVC's diffs, both revisions' evaluation files and the paired comparison."""
    root = root.resolve()
    commit = resolve_revision(root, base)
    head_eval = workspace_json(root, EVALUATE)
    metrics, params = dvc_diffs(root, base)
    report = ModelReport(base=base, label=label, base_commit=commit, metrics=metrics, params=params)
    report.head_eval = head_eval
    report.base_eval = json_at(root, EVALUATE, commit)
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


@dataclass(frozen=True)
class Picture:
    """One image the report links: its file (a name in :data:`pictures.MODEL_IMAGES`), the
    sentence above it and its alt text (fixed words only: no name from the data)."""

    name: str
    caption: str
    alt: str


def model_pictures(root: Path, report: ModelReport, out: Path) -> list[Picture]:
    """Draw the report's pictures into ``out``; what was drawn, in reading order."""
    root = root.resolve()
    made: list[Picture] = []
    labels = (report.base, report.label)
    hb, ht = inline(report.base), inline(report.label)
    p, base, head = report.paired, report.base_predictions, report.head_predictions
    if p is not None and base is not None and head is not None and not p.identical:
        dataset = (workspace_json_or_empty(root, PREPARE)).get("dataset")
        source = pictures.ImageSource(root, dataset if isinstance(dataset, str) else None)
        for kind, keys, what, order in (
            ("broken", p.broken, f"right in {hb}, wrong in {ht}", f"{ht}'s confidence"),
            ("fixed", p.fixed, f"wrong in {hb}, right in {ht}", f"{hb}'s confidence"),
        ):
            sheet = pictures.flips_sheet(kind, keys, base, head, source, out, labels)
            if sheet is None:
                continue
            shown = (
                f"all {sheet['total']}"
                if sheet["shown"] == sheet["total"]
                else f"the first {sheet['shown']} of {sheet['total']}"
            )
            made.append(
                Picture(
                    pictures.BROKEN_PNG if kind == "broken" else pictures.FIXED_PNG,
                    f"**{kind.capitalize()} by this change** ({what}): {shown}, in order of "
                    f"{order} in its wrong answer; each tile shows the true label and both "
                    "revisions' answers with their confidence.",
                    f"test images {kind} by this change",
                )
            )
    head_curves = {k: read_at(root, path, None) for k, path in TRAIN_CURVES.items()}
    base_curves = {k: read_at(root, path, report.base_commit) for k, path in TRAIN_CURVES.items()}
    if pictures.curves_figure(base_curves, head_curves, out, labels):
        made.append(
            Picture(
                pictures.CURVES_PNG,
                f"**Training curves**: loss and accuracy per epoch, train (solid) and "
                f"validation (dashed), {hb} in grey, {ht} in orange.",
                "training curves of both revisions",
            )
        )
    if base is not None and head is not None and report.paired is not None:
        order = list(rows_by(report.head_eval or {}, "per_class", "class"))
        if pictures.confusion_change_figure(base, head, order, out):
            made.append(
                Picture(
                    pictures.CONFUSION_CHANGE_PNG,
                    f"**Confusion change** ({ht} minus {hb} counts, actual × predicted): blue "
                    "is better (more right answers, fewer of a mistake), red is worse.",
                    "confusion matrix change",
                )
            )
    if pictures.copy_confusion_matrix(root, out):
        made.append(
            Picture(
                pictures.CONFUSION_MATRIX_PNG,
                f"**Confusion matrix** of {ht} (test set).",
                "confusion matrix of this revision",
            )
        )
    return made


def workspace_json_or_empty(root: Path, path: str) -> dict[str, Any]:
    """A workspace JSON file, or {} (the pictures do without it)."""
    return json_at(root, path, None) or {}


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


def _per_class_rows(report: ModelReport) -> list[list[str]]:
    base = rows_by(report.base_eval or {}, "per_class", "class")
    head = rows_by(report.head_eval or {}, "per_class", "class")
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
    no better than logistic regression on pixels (see :mod:`imgclf.evaluation.baseline`).
    """
    text = baseline_warning(head_eval or {}) if (head_eval or {}).get("accuracy") else None
    return [f"> ⚠️ **{text}**", ""] if text else []


def quantization_lines(head_eval: dict[str, Any] | None) -> list[str]:
    """For an int8 model: the accuracy it lost (or not) against its own fp32 network."""
    export = (head_eval or {}).get("export") or {}
    if export.get("quantize") != "int8":
        return []
    fp32, int8 = export.get("val_accuracy_fp32"), export.get("val_accuracy_int8")
    return [
        f"> **int8 model** (`export.quantize: int8`): validation accuracy fp32 {fmt(fp32)} → "
        f"int8 {fmt(int8)} ({fmt_change(fp32, int8)}). The metrics below are the int8 "
        "file's, the file the API serves.",
        "",
    ]


def picture_lines(made: list[Picture], link: str) -> list[str]:
    """The "In pictures" section: each caption, then its image on a line of its own."""
    if not made:
        return []
    lines = ["### In pictures", ""]
    for picture in made:
        lines += [picture.caption, "", image_line(picture.alt, link, picture.name), ""]
    return lines


def render_model_report(
    report: ModelReport, made: list[Picture] | None = None, link: str = "images"
) -> str:
    """The markdown of the PR comment; ``made`` pictures are linked under ``link``."""
    b, t = report.base, report.label
    lines = [f"## Model report: {code(t)} vs {code(b)} ({report.base_commit[:8]})", ""]
    lines = [*baseline_line(report.head_eval), *lines]
    hb, ht = inline(b), inline(t)  # the column headers
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
    lines += quantization_lines(report.head_eval)
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
    lines += [*table(["metric", hb, ht, "change"], rows), ""]

    lines += ["### Params that changed", ""]
    changed = report.changed_params
    if changed:
        rows = [[code(n), param_cell(o), param_cell(v)] for n, o, v in changed]
        lines += [*table(["param", hb, ht], rows), ""]
    else:
        lines += ["None.", ""]

    lines += picture_lines(made or [], link)

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
            lines += table(["actual", "predicted", "correct", hb, ht, "change"], rows)
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
        lines += [*table(["metric", hb, ht, "change"], rows[: MAX_ROWS * 3]), "", "</details>", ""]

    lines += [
        "<sub>Generated by `imgclf report` — paired test: McNemar's exact test on the samples "
        "whose correctness changed, and a seeded bootstrap (2,000 resamples) of the accuracy "
        "difference.</sub>",
        "",
    ]
    return fit_comment("\n".join(lines))


def model_report(
    root: Path,
    base: str,
    label: str = "workspace",
    images: Path | None = None,
    link: str = "images",
) -> str:
    """Build and render in one call (what the CLI and the workflow use).

    With ``images``, the pictures are drawn into that folder and linked as ``link/NAME``
    (the folder as seen from the report file).
    """
    report = build_model_report(root, base, label)
    made = model_pictures(root, report, images) if images is not None else None
    return render_model_report(report, made, link)
