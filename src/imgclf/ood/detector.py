"""Is this input like the training images? The out-of-distribution (OOD) flag, at serving time.

A classifier always answers with one of its classes, confidently, whatever it is shown
(issue 14: uniform noise came back as ``8`` at 1.00). Two kinds of evidence, combined:

* **input checks** — the upload's size and aspect ratio, and its pixels' brightness,
  contrast, sharpness, clipping (and colour for RGB models), against the ranges seen in
  the training split (:func:`imgclf.data.features.image_features`, the monitoring profile's own
  features). Cheap, and each failure has a reason a person can read;
* **feature-space distance** — the Mahalanobis distance of the model's penultimate-layer
  embedding to the nearest training class mean (shared covariance). It catches what the
  ranges miss: a texture or a photo of normal brightness is still far from every class.

Measured on the digits default (docs/ood.md): the distance alone separates every
generated OOD set from the test split (AUROC ≥ 0.99), where the classifier's own
confidence (max softmax) is *worse than chance* on noise and textures.

The statistics come from ``evaluate`` (:mod:`imgclf.ood.fit`), in ``models/ood.json`` next
to the model, so they travel into the serving image; this module only needs numpy.
``ood_score`` is scaled so that **1.0 is the threshold**: above it the input is flagged.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifact.files import OOD_FILE as OOD_FILE  # re-exported: where the statistics live
from imgclf.data.features import image_features, reduce_embedding, source_colorfulness, source_info

OOD_FORMAT = "imgclf-ood/1"
FEATURES_CHECK = "features"  # the reason code of the feature-space distance
# Grayscale models only: the colourfulness of the original file (their pixels are gray).
SOURCE_COLOUR = "source_colour"

# Human names of the input checks, for reasons (codes are the keys, for /metrics labels).
CHECK_NAMES = {
    "size": "image size",
    "aspect": "aspect ratio",
    "brightness": "brightness",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "saturated": "share of clipped highlights",
    "dark": "share of black pixels",
    "mean_red": "red level",
    "mean_green": "green level",
    "mean_blue": "blue level",
    "std_red": "red contrast",
    "std_green": "green contrast",
    "std_blue": "blue contrast",
    "colorfulness": "colourfulness",
    SOURCE_COLOUR: "colourfulness of the file",
}


@dataclass(frozen=True)
class Verdict:
    """One input's OOD answer: ``score`` ≤ 1 and no reasons ⇔ in distribution."""

    in_distribution: bool
    score: float
    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "in_distribution": self.in_distribution,
            "ood_score": round(self.score, 4),
            "ood_reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class RangeCheck:
    """An allowed range ``[lo, hi]`` of one feature (already widened by its margin).

    ``log`` checks (size, aspect, sharpness) compare ratios: twice too big is as far out
    as half too small. ``unit`` is what one unit of "how far out" is worth, so violations
    of different checks are comparable (and end up in the score as ``1 + violation``).
    """

    lo: float
    hi: float
    log: bool
    unit: float

    def bounds(self) -> tuple[float, float]:
        """``(lo, hi)`` where the comparison happens: their logs for a ``log`` check."""
        if self.log:
            return math.log(max(self.lo, 1e-6)), math.log(max(self.hi, 1e-6))
        return self.lo, self.hi

    def violation(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds()
        if self.log:
            x = np.log(np.maximum(x, 1e-6))
        return np.maximum(np.maximum(lo - x, x - hi), 0.0) / self.unit


@dataclass(frozen=True)
class _Stacked:
    """The range checks of one kind (log or linear) as column vectors, to judge every
    check of a batch in a handful of numpy calls instead of five or six per check.

    The API judges each request under load, where every numpy call in the work thread
    waits its turn for the GIL with the event loop (the whole verdict: 0.43 ms alone,
    ~1 ms of CPU under load; docs/serving-speed.md). The arithmetic is
    :meth:`RangeCheck.violation`'s, element by element, so the values are the same.
    """

    names: tuple[str, ...]  # the features compared ("size" is compared twice: width, height)
    lo: np.ndarray  # (K, 1)
    hi: np.ndarray
    unit: np.ndarray
    log: bool

    @classmethod
    def of(cls, checks: list[tuple[str, RangeCheck]], log: bool) -> _Stacked:
        bounds = [c.bounds() for _, c in checks]
        return cls(
            tuple(name for name, _ in checks),
            np.array([b[0] for b in bounds], np.float64)[:, None],
            np.array([b[1] for b in bounds], np.float64)[:, None],
            np.array([c.unit for _, c in checks], np.float64)[:, None],
            log,
        )

    def violations(self, values: dict[str, list[float]]) -> dict[str, np.ndarray]:
        """Each compared feature's violations, for the features ``values`` has (a check
        whose feature was not measured, e.g. a file's colourfulness, has no verdict)."""
        keep = [i for i, name in enumerate(self.names) if name in values]
        if not keep:
            return {}
        table = np.array([values[self.names[i]] for i in keep], np.float64)
        if self.log:
            table = np.log(np.maximum(table, 1e-6))
        lo, hi, unit = self.lo[keep], self.hi[keep], self.unit[keep]
        out = np.maximum(np.maximum(lo - table, table - hi), 0.0) / unit
        return {self.names[i]: row for i, row in zip(keep, out, strict=True)}


@dataclass(frozen=True)
class FeatureSpace:
    """Class means and a shared precision matrix of the (reduced) embedding, and the
    squared-distance threshold that ``evaluate`` calibrated."""

    means: np.ndarray  # (C, D)
    precision: np.ndarray  # (D, D)
    threshold: float

    def distance(self, embedding: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per row.

        One row at a time: BLAS picks its kernels, and with them the order it sums in, by
        the number of rows, so a batch's distances differed from one image's in the last
        bits. Row by row, an image's distance (its ``ood_score``, at the threshold its
        verdict) is the same whether it came alone, in ``/predict/batch`` or in a model
        call shared with other requests (:mod:`imgclf.serving.coalesce`).
        """
        if len(embedding) == 0:
            return np.zeros(0)
        return np.concatenate([self._distance(embedding[i : i + 1]) for i in range(len(embedding))])

    @functools.cached_property
    def _means_term(self) -> np.ndarray:
        """``(1, C)``: each class mean's ``m·P·m``, the same for every input (computed once,
        by the same expression, so the distances are unchanged)."""
        pm = self.means @ self.precision
        return (pm * self.means).sum(1)[None]

    def _distance(self, embedding: np.ndarray) -> np.ndarray:
        e = reduce_embedding(embedding)
        pe = e @ self.precision
        d = (pe * e).sum(1)[:, None] - 2 * pe @ self.means.T + self._means_term
        return np.maximum(d.min(1), 0.0)


@dataclass(frozen=True)
class Detector:
    """The loaded ``ood.json``: input range checks and the feature-space distance."""

    model_sha256: str
    checks: dict[str, RangeCheck]
    space: FeatureSpace | None
    pass_rate: float

    @functools.cached_property
    def _stacked(self) -> tuple[_Stacked, _Stacked]:
        """The checks as two stacks, log and linear ("size" as its width and height)."""
        pairs = [
            (feature, check)
            for name, check in self.checks.items()
            for feature in (("width", "height") if name == "size" else (name,))
        ]
        return (
            _Stacked.of([p for p in pairs if p[1].log], log=True),
            _Stacked.of([p for p in pairs if not p[1].log], log=False),
        )

    def raw_scores(
        self,
        pixels: np.ndarray,
        embedding: np.ndarray | None,
        widths: list[int],
        heights: list[int],
        formats: list[str],
        colours: list[float | None] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list[float]]]:
        """Feature-space ratio (distance / threshold, 0 without an embedding), per-check
        violations, and the feature values (for the reasons' text). ``colours``: the
        files' :func:`~imgclf.data.features.source_colorfulness` (None: not measured, passes)."""
        feats = image_features(pixels, widths, heights, formats)
        values: dict[str, list[float]] = {k: v for k, v in feats.items() if k != "format"}
        if colours is not None and SOURCE_COLOUR in self.checks:
            lo = self.checks[SOURCE_COLOUR].lo
            values[SOURCE_COLOUR] = [lo if c is None else c for c in colours]
        rows = {k: v for stack in self._stacked for k, v in stack.violations(values).items()}
        violations: dict[str, np.ndarray] = {}
        # A size source_info could not read (0) is unknown: no size or aspect verdict on it.
        known = (np.asarray(widths) > 0) & (np.asarray(heights) > 0)
        for name in self.checks:
            if name == "size":
                violations[name] = np.where(known, np.maximum(rows["width"], rows["height"]), 0.0)
            elif name in rows:
                v = rows[name]
                violations[name] = np.where(known, v, 0.0) if name == "aspect" else v
        ratio = np.zeros(len(pixels))
        if self.space is not None and embedding is not None:
            ratio = self.space.distance(embedding) / self.space.threshold
        return ratio, violations, values

    def judge(
        self,
        pixels: np.ndarray,
        embedding: np.ndarray | None,
        widths: list[int],
        heights: list[int],
        formats: list[str],
        colours: list[float | None] | None = None,
    ) -> list[Verdict]:
        """A :class:`Verdict` per image of a batch (uint8 NHWC model pixels + originals)."""
        ratio, violations, values = self.raw_scores(
            pixels, embedding, widths, heights, formats, colours
        )
        out = []
        # Which images fail any check, in one pass: most pass them all and skip the loop.
        failing = (
            (np.array(list(violations.values())) > 0).any(0).tolist()
            if violations
            else [False] * len(pixels)
        )
        ratios = ratio.tolist()
        for i in range(len(pixels)):
            found: list[tuple[float, str, str]] = []  # (score, reason, code)
            for name, v in violations.items() if failing[i] else ():
                if v[i] > 0:
                    reason = self._reason(name, values, i, widths[i], heights[i])
                    found.append((1.0 + float(v[i]), reason, name))
            if ratios[i] > 1.0:
                reason = (
                    "unlike every training class in the model's feature space "
                    f"(distance {ratios[i]:.2f}x the threshold)"
                )
                found.append((ratios[i], reason, FEATURES_CHECK))
            found.sort(key=lambda f: -f[0])  # the most telling reason first
            score = max([ratios[i]] + [f[0] for f in found])
            reasons, codes = [f[1] for f in found], [f[2] for f in found]
            out.append(Verdict(not codes, score, reasons, codes))
        return out

    def judge_uploads(
        self,
        pixels: np.ndarray,
        embedding: np.ndarray | None,
        uploads: list[bytes | bytearray],
        info: list[tuple[int, int, str]] | None = None,
    ) -> list[Verdict]:
        """:meth:`judge` for uploaded files: original size and format from their headers
        (and, for a grayscale model, the file's colourfulness). ``info``: (width, height,
        format) per upload when the caller already has them from the decode (the API: no
        second header parse, 0.1-0.6 ms a request); else :func:`source_info` reads them."""
        if info is None:
            info = [source_info(data) for data in uploads]
        colours = self.colours(uploads)
        return self.judge(pixels, embedding, *map(list, zip(*info, strict=True)), colours)

    def colours(self, files: list[bytes | bytearray]) -> list[float | None] | None:
        """The files' colourfulness when this detector checks it (grayscale models)."""
        if SOURCE_COLOUR not in self.checks:
            return None
        return [source_colorfulness(data) for data in files]

    def _reason(
        self, name: str, values: dict[str, list[float]], i: int, width: int, height: int
    ) -> str:
        check = self.checks[name]
        if name == SOURCE_COLOUR and check.hi <= 0.1:
            return (
                "a colour image, the training images are grayscale "
                f"(colourfulness {values[name][i]:.3g}; allowed up to {check.hi:.3g})"
            )
        if name == "size":
            return (
                f"image size outside the training range ({width}x{height} px; "
                f"allowed {check.lo:.3g}-{check.hi:.3g} px a side)"
            )
        return (
            f"{CHECK_NAMES.get(name, name)} outside the training range "
            f"({values[name][i]:.3g}; allowed {check.lo:.3g}-{check.hi:.3g})"
        )


def load_detector(model_dir: Path, model_sha256: str) -> Detector:
    """Read ``<model_dir>/ood.json``; missing, foreign or another model's file: a clear error."""
    path = Path(model_dir) / OOD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.name} not found next to the model: the evaluate stage writes it "
            "(`dvc repro` or `dvc pull`)"
        )
    data = json.loads(path.read_text())
    if data.get("format") != OOD_FORMAT:
        raise ValueError(f"{path.name} is not an imgclf OOD file ({OOD_FORMAT})")
    if data.get("model_sha256") != model_sha256:
        raise ValueError(f"{path.name} was calibrated for another model: run `dvc repro`")
    return detector_from_dict(data)


def detector_from_dict(data: dict[str, Any]) -> Detector:
    """The :class:`Detector` of an ``ood.json`` document (as written by :mod:`imgclf.ood.fit`)."""
    checks = {
        name: RangeCheck(float(c["lo"]), float(c["hi"]), bool(c["log"]), float(c["unit"]))
        for name, c in data["checks"].items()
    }
    emb = data.get("embedding")
    space = None
    if emb:
        space = FeatureSpace(
            np.array(emb["means"], np.float64),
            np.array(emb["precision"], np.float64),
            float(emb["threshold"]),
        )
    return Detector(str(data["model_sha256"]), checks, space, float(data["pass_rate"]))
