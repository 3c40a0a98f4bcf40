"""``imgclf drift-report``: served traffic vs the reference profile, with Evidently.

Four sections, each with a one-line verdict and its sample sizes: the input features
(:mod:`imgclf.data.features`), the predicted-class distribution, the confidence, and the
penultimate-layer embedding when both sides have one. Evidently does the statistics
and the HTML; this module chooses the tests and writes the verdicts:

* small samples (either side ≤ 1,000 rows) get p-value tests — Kolmogorov–Smirnov for
  numbers, chi-square for categories — at ``alpha`` per section, Bonferroni-corrected
  over the section's tests (nine features would otherwise raise a false alarm in one
  report out of three);
* larger samples get distances with Evidently's thresholds (normed Wasserstein 0.1,
  Jensen–Shannon 0.1): with 50,000 requests every p-value is tiny, and what matters is
  whether the shift is big enough to care about;
* the embedding gets Evidently's classifier test: drift when a classifier tells served
  from reference embeddings apart better than 99 % of random scorers do.

Evidently (and pandas) are imported here only: the CLI environment has them, the serving
image does not.
"""

from __future__ import annotations

import html
import json
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.features import CATEGORICAL
from imgclf.evaluation.reference_profile import Reference
from imgclf.monitoring.traffic import Traffic
from imgclf.report.markdown import code, inline, table

ALPHA = 0.01
LARGE = 1000  # rows on the smaller side from which distances replace p-values
DISTANCE_THRESHOLD = 0.1
EMBEDDING_QUANTILE = 0.99
MIN_ROWS = 30  # below this many served predictions, no test is run


@dataclass
class Check:
    """One test: a column (or the embedding), the method, its score and the verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    note: str = ""


@dataclass
class Section:
    title: str
    reference_rows: int
    current_rows: int
    checks: list[Check] = field(default_factory=list)
    skipped: str = ""

    @property
    def drifted(self) -> bool:
        return any(c.drifted for c in self.checks)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"not tested: {self.skipped}"
        moved = [c.column for c in self.checks if c.drifted]
        if moved:
            return "DRIFT in " + ", ".join(moved)
        return "no drift"


@dataclass
class DriftReport:
    window: tuple[str, str]
    model_version: str
    current_rows: int
    excluded_rows: dict[str, int]
    sections: list[Section]
    # Of a fleet: rows and files that could not be read (see traffic.load_traffic).
    unreadable: dict[str, int] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.sections)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["drift"] = self.drifted
        for section, out in zip(self.sections, data["sections"], strict=True):
            out["drift"], out["verdict"] = section.drifted, section.verdict
        return data


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _method(kind: str, rows: int, tests: int, alpha: float) -> tuple[str, float, bool]:
    """(Evidently stattest, threshold, is_p_value) for a column kind and sample size."""
    if rows > LARGE:
        return ("wasserstein" if kind == "num" else "jensenshannon"), DISTANCE_THRESHOLD, False
    return ("ks" if kind == "num" else "chisquare"), alpha / max(tests, 1), True


def _constant(ref: list[Any], cur: list[Any]) -> bool:
    """Both sides one and the same value: nothing to test (and chi-square has no dof)."""
    return len(set(ref) | set(cur)) == 1


def _frame(columns: dict[str, list[Any]], emb: np.ndarray | None) -> Any:
    """A pandas DataFrame of the columns, plus ``emb_0…`` for the embedding."""
    import pandas as pd

    df = pd.DataFrame(columns)
    if emb is not None:
        df = pd.concat(
            [df, pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])])], axis=1
        )
    return df


def build_report(
    reference: Reference, traffic: Traffic, alpha: float = ALPHA
) -> tuple[DriftReport, Any]:
    """The verdicts, and the Evidently snapshot whose HTML shows the distributions."""
    n_ref, n_cur = reference.rows, traffic.rows
    small = min(n_ref, n_cur)
    features = [f for f in reference.features if f in traffic.features]
    sections = {
        "features": Section("Input features", n_ref, n_cur),
        "predictions": Section("Predicted classes", n_ref, n_cur),
        "confidence": Section("Confidence", n_ref, n_cur),
        "embedding": Section("Embedding", n_ref, n_cur),
    }
    window = (_iso(traffic.start), _iso(traffic.end))
    excluded = dict(traffic.other_versions)
    report = DriftReport(window, traffic.version or "", n_cur, excluded, list(sections.values()))
    if traffic.unreadable_rows or traffic.unreadable_files:
        report.unreadable = {"rows": traffic.unreadable_rows,
                             "files": len(traffic.unreadable_files)}  # fmt: skip
    if n_cur < MIN_ROWS:
        for s in sections.values():
            s.skipped = f"{n_cur} served predictions in the window, at least {MIN_ROWS} needed"
        return report, None
    with warnings.catch_warnings():  # its dependencies' deprecation notes are not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

    ref_cols = {f: reference.features[f] for f in features}
    cur_cols = {f: traffic.features[f] for f in features}
    ref_cols |= {"predicted": reference.predicted, "confidence": reference.confidence}
    cur_cols |= {"predicted": traffic.predicted, "confidence": traffic.confidence}
    with_emb = (
        reference.embedding is not None
        and traffic.embedding is not None
        and reference.embedding.shape[1] == traffic.embedding.shape[1]
    )
    ref_df = _frame(ref_cols, reference.embedding if with_emb else None)
    cur_df = _frame(cur_cols, traffic.embedding if with_emb else None)

    plan: list[tuple[str, str, str]] = [("features", f, "cat" if f in CATEGORICAL else "num")
                                        for f in features]  # fmt: skip
    plan += [("predictions", "predicted", "cat"), ("confidence", "confidence", "num")]
    metrics: list[Any] = []
    planned: list[tuple[Section, str, str, float, bool]] = []
    for key, column, kind in plan:
        section = sections[key]
        if _constant(ref_cols[column], cur_cols[column]):
            value = ref_cols[column][0]
            section.checks.append(Check(column, "constant", 0.0, 0.0, False, f"always {value}"))
            continue
        tests = sum(1 for k, c, _ in plan if k == key and not _constant(ref_cols[c], cur_cols[c]))
        method, threshold, is_p = _method(kind, small, tests, alpha)
        metrics.append(ValueDrift(column=column, method=method, threshold=threshold))
        planned.append((section, column, method, threshold, is_p))
    emb_cols = [c for c in ref_df.columns if c.startswith("emb_")]
    if not with_emb:
        sections["embedding"].skipped = "no embedding recorded on one side (older model?)"

    columns = [c for c in ref_df.columns if not c.startswith("emb_")]
    categorical = [c for c in columns if c in (*CATEGORICAL, "predicted")]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in categorical],
        categorical_columns=categorical,
    )
    # A category the reference never had (a new format, a class it never predicted) gives
    # chi-square an expected count of zero: p = 0, drift, rightly; numpy's warning is noise.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics).run(
            Dataset.from_pandas(cur_df[columns], data_definition=definition),
            Dataset.from_pandas(ref_df[columns], data_definition=definition),
        )
    values = [m["value"] for m in snapshot.dict()["metrics"]]
    for (section, column, method, threshold, is_p), value in zip(planned, values, strict=False):
        score = float(value)
        drifted = score < threshold if is_p else score >= threshold
        section.checks.append(Check(column, method, score, threshold, drifted))
    if with_emb:
        sections["embedding"].checks.append(_embedding_check(ref_df[emb_cols], cur_df[emb_cols]))
    return report, snapshot


def _embedding_check(ref: Any, cur: Any) -> Check:
    """Evidently's classifier two-sample test on the embedding columns.

    Called directly rather than as the report's ``EmbeddingsDrift`` metric: that metric
    also draws a t-SNE map, which took 30 s for 1,600 rows on two cores, for a picture
    that says less than the verdict.
    """
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import ModelDriftMethod

    method = ModelDriftMethod(bootstrap=True, quantile_probability=EMBEDDING_QUANTILE)
    auc, drifted, _ = method(cur.copy(), ref.copy())
    note = f"{ref.shape[1]} dims; drift: AUC above 99% of random classifiers'"
    return Check("embedding", "classifier ROC AUC", float(auc), 0.5, bool(drifted), note)


def markdown(report: DriftReport, html_name: str = "") -> str:
    """A short summary for a PR or an issue: verdict per section, sample sizes, details."""
    head = "**Drift detected**" if report.drifted else "No drift detected"
    lines = [
        f"## Drift report: {head}",
        "",
        f"Window {report.window[0]} → {report.window[1]}, model {code(report.model_version)}: "
        f"{report.current_rows} served predictions.",
    ]
    if report.excluded_rows:  # versions and class names come from the database: made inert
        other = ", ".join(f"{code(v)} ({n})" for v, n in sorted(report.excluded_rows.items()))
        lines.append(f"Left out, served by other model versions: {other}.")
    if report.unreadable:
        lines.append(
            f"Left out, unreadable: {report.unreadable['rows']} rows and "
            f"{report.unreadable['files']} files (not monitoring data)."
        )
    lines.append("")
    lines += table(
        ["Section", "Verdict", "Reference rows", "Served rows"],
        [[s.title, ("⚠️ " if s.drifted else "") + s.verdict, str(s.reference_rows),
          str(s.current_rows)] for s in report.sections],
    )  # fmt: skip
    lines += ["", "<details><summary>Every test</summary>", ""]
    rows = [
        [s.title, c.column, c.method + (f" ({inline(c.note)})" if c.note else ""),
         f"{c.score:.4g}", f"{c.threshold:.4g}", "yes" if c.drifted else "no"]
        for s in report.sections for c in s.checks
    ]  # fmt: skip
    lines += table(["Section", "Column", "Method", "Score", "Threshold", "Drift"], rows)
    lines += ["", "</details>", ""]
    if html_name:
        lines.append(f"Distributions per column: `{html_name}` (Evidently HTML report).")
    return "\n".join(lines) + "\n"


def _banner(report: DriftReport) -> str:
    """Our verdicts, injected at the top of Evidently's page (plain HTML, no scripts)."""
    rows = "".join(
        f"<tr class='{'drift' if s.drifted else 'ok'}'><td>{html.escape(s.title)}</td>"
        f"<td>{html.escape(s.verdict)}</td><td>{s.reference_rows}</td><td>{s.current_rows}</td></tr>"
        for s in report.sections
    )
    title = "Drift detected" if report.drifted else "No drift detected"
    return (
        "<section id='imgclf-summary' style='font:15px sans-serif;margin:16px 24px'>"
        "<style>#imgclf-summary td,#imgclf-summary th{padding:4px 12px;text-align:left}"
        "#imgclf-summary .drift{background:#fde2e1}#imgclf-summary .ok{background:#e3f5e1}"
        "</style>"
        f"<h1 style='font-size:22px'>imgclf drift report: {title}</h1>"
        f"<p>{html.escape(report.window[0])} → {html.escape(report.window[1])}, model "
        f"<code>{html.escape(report.model_version)}</code>, {report.current_rows} served "
        "predictions vs the evaluated test split.</p>"
        "<table><tr><th>Section</th><th>Verdict</th><th>Reference</th><th>Served</th></tr>"
        f"{rows}</table></section>"
    )


def write_outputs(report: DriftReport, snapshot: Any, out_dir: Path) -> dict[str, Path]:
    """``drift-report.html`` (Evidently + our verdicts), ``drift-report.md``, ``drift.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "html": out_dir / "drift-report.html",
        "markdown": out_dir / "drift-report.md",
        "json": out_dir / "drift.json",
    }
    if snapshot is not None:
        snapshot.save_html(str(paths["html"]))
        page = paths["html"].read_text(encoding="utf-8")
        at = page.find(">", page.find("<body")) + 1
        paths["html"].write_text(page[:at] + _banner(report) + page[at:], encoding="utf-8")
    else:
        paths["html"].write_text(
            f"<!doctype html><meta charset='utf-8'><body>{_banner(report)}</body>",
            encoding="utf-8",
        )
    paths["markdown"].write_text(markdown(report, paths["html"].name), encoding="utf-8")
    paths["json"].write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return paths
