"""Pictures for the PR reports: the images a change broke or fixed, the curves, the confusion.

Job: turn what the reports already compute into PNG files a reviewer can *see* — one
contact sheet of the test images a change broke (right at the base, wrong now) and one
of those it fixed, ordered by confidence and capped; the train/val loss and accuracy
curves of both revisions in one figure; a heatmap of the confusion-count change; and,
for the dataset report, sheets of the classes that appeared and of the skipped files.

Why here and why like this:

* The samples come from the paired comparison the report already makes
  (:class:`~imgclf.evaluation.paired_test.PairedComparison` lists the flipped keys), so
  the pictures and the "6 fixed / 20 broken" sentence can never disagree.
* Every sheet has a JSON manifest next to it (``flips-broken.json`` …) that lists each
  tile's sample path, labels, confidences and pixel box: tests read back what was drawn,
  and a reviewer without images can read the same list.
* Output is deterministic (same inputs, same bytes): matplotlib's Agg backend at a fixed
  DPI with no ``Software`` entry, Pillow PNGs without metadata, a font shipped with
  matplotlib. Publishing is not done here: the files go to a folder, and only the names
  in :data:`PUBLISHABLE` may leave it (the CML workflow holds the same list,
  docs/pull-requests.md, "Pictures").
* Text drawn into an image cannot inject markdown; it is still cut to fit and stripped of
  control characters so a hostile class name cannot garble a tile.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.prepared_files import INDEX_FILE
from imgclf.evaluation.paired_test import Prediction
from imgclf.pipeline.outputs import CONFUSION_PNG, TRAIN_CURVES

# The files a report may make, and so the only ones a workflow may publish (a PNG each;
# the JSON manifests stay in the job's artifact).
BROKEN_PNG = "flips-broken.png"
FIXED_PNG = "flips-fixed.png"
CURVES_PNG = "curves.png"
CONFUSION_CHANGE_PNG = "confusion-change.png"
CONFUSION_MATRIX_PNG = "confusion-matrix.png"
CLASSES_ADDED_PNG = "classes-added.png"
SKIPPED_PNG = "skipped-files.png"
MODEL_IMAGES = (BROKEN_PNG, FIXED_PNG, CURVES_PNG, CONFUSION_CHANGE_PNG, CONFUSION_MATRIX_PNG)
DATA_IMAGES = (CLASSES_ADDED_PNG, SKIPPED_PNG)
PUBLISHABLE = (*MODEL_IMAGES, *DATA_IMAGES)

MAX_TILES = 24  # per sheet: 4 rows of 6, enough to see a pattern, small enough to load
PER_CLASS = 6  # example images per added class
COLUMNS = 6
THUMB = 96  # the image area of a tile, pixels (small images are scaled up by an integer)
TILE_W, LINE_H, PAD = 168, 15, 6
LINES = 4
TILE_H = PAD + THUMB + PAD + LINES * LINE_H + PAD
FONT_SIZE = 11
DPI = 100
BACKGROUND, THUMB_BG = (255, 255, 255), (236, 236, 236)
INK, GOOD, BAD, DIM = (20, 20, 20), (0, 110, 40), (190, 20, 20), (110, 110, 110)
BASE_COLOUR, HEAD_COLOUR = "#7f7f7f", "#d95f02"


# --------------------------------------------------------------------------- contact sheets


@dataclass
class Tile:
    """One thumbnail with up to :data:`LINES` coloured text lines and its manifest record."""

    image: Any  # PIL.Image.Image, or None for "could not be shown"
    lines: list[tuple[str, tuple[int, int, int]]]
    record: dict[str, Any] = field(default_factory=dict)


def _font(size: int = FONT_SIZE) -> Any:
    """DejaVu Sans from matplotlib's own files: the same glyphs on every machine."""
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:  # pragma: no cover - matplotlib always ships it
        return ImageFont.load_default()


def drawable(text: object, limit: int = 40) -> str:
    """Text safe to draw: control/invisible characters as ``?``, cut to ``limit``."""
    s = "".join(
        "?" if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} else c for c in str(text)
    )
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _fit(draw: Any, font: Any, text: str, width: int, keep_end: bool = False) -> str:
    """Cut ``text`` until it fits ``width`` pixels (from the front for paths)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text if keep_end else text + "…", font=font) > width:
        text = text[1:] if keep_end else text[:-1]
    return "…" + text if keep_end else text + "…"


def thumbnail(image: Any) -> tuple[Any, int | None]:
    """An RGB image that fits THUMB×THUMB, and the integer scale when it was scaled up.

    Small images (the digits are 8×8) are enlarged by a whole factor with nearest
    neighbour, so every source pixel is a crisp square and a test can compare them;
    larger ones are shrunk with Lanczos.
    """
    from PIL import Image

    rgb = image.convert("RGB")
    w, h = rgb.size
    if max(w, h) <= THUMB:
        k = max(1, THUMB // max(w, h))
        return rgb.resize((w * k, h * k), Image.Resampling.NEAREST), k
    rgb.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return rgb, None


def contact_sheet(tiles: list[Tile], png: Path, title: str, **extra: Any) -> dict[str, Any]:
    """Draw the tiles in rows of :data:`COLUMNS`; write ``png`` and its JSON manifest.

    The manifest (``png`` with ``.json``) lists, per tile, its record (sample path,
    labels, confidences), where its image sits on the sheet (``box``: x0, y0, x1, y1)
    and the enlargement factor; it is returned too.
    """
    from PIL import Image, ImageDraw

    font = _font()
    rows = max(1, -(-len(tiles) // COLUMNS))
    cols = min(COLUMNS, max(1, len(tiles)))
    sheet = Image.new("RGB", (cols * TILE_W, rows * TILE_H), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    records = []
    for i, tile in enumerate(tiles):
        x, y = (i % COLUMNS) * TILE_W, (i // COLUMNS) * TILE_H
        area = (x + (TILE_W - THUMB) // 2, y + PAD)
        draw.rectangle([area[0], area[1], area[0] + THUMB - 1, area[1] + THUMB - 1], THUMB_BG)
        record = dict(tile.record)
        if tile.image is not None:
            thumb, scale = thumbnail(tile.image)
            left = area[0] + (THUMB - thumb.width) // 2
            top = area[1] + (THUMB - thumb.height) // 2
            sheet.paste(thumb, (left, top))
            record["box"] = [left, top, left + thumb.width, top + thumb.height]
            record["scale"] = scale
        else:
            draw.text((area[0] + 8, area[1] + THUMB // 2 - 7), "not available", DIM, font=font)
            record["box"] = None
        for n, (text, colour) in enumerate(tile.lines[:LINES]):
            line = _fit(draw, font, drawable(text, 80), TILE_W - 2 * PAD, keep_end=n == 0)
            draw.text((x + PAD, y + PAD + THUMB + PAD + n * LINE_H), line, colour, font=font)
        record["lines"] = [drawable(t, 80) for t, _ in tile.lines[:LINES]]
        records.append(record)
    png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(png, format="PNG", optimize=False)  # Pillow writes no time or software chunk
    manifest = {"title": title, "file": png.name, **extra, "tile": [TILE_W, TILE_H],
                "tiles": records}  # fmt: skip
    png.with_suffix(".json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


# --------------------------------------------------------------------------- sample images


class ImageSource:
    """Finds the picture of a sample: the raw file in the dataset, else the prepared array.

    The raw file is what a reviewer recognises (colour, full size); the prepared array
    (``data/prepared/test.npy`` row, found through ``index.csv``) is what the model saw
    and is there whenever ``prepare`` ran, even if the raw data was not pulled.
    """

    def __init__(self, root: Path, dataset: str | None, prepared: str = "data/prepared"):
        self.root = root
        self.dataset = (root / dataset).resolve() if dataset else None
        self.prepared = root / prepared
        self._index: dict[tuple[str, str], int] | None = None
        self._arrays: dict[str, np.ndarray] = {}

    def index(self) -> dict[tuple[str, str], int]:
        """(split, path) → row of that split's array, from ``index.csv``."""
        if self._index is None:
            self._index = {}
            file = self.prepared / INDEX_FILE
            if file.is_file():
                with file.open(newline="") as fh:
                    for row in csv.DictReader(fh):
                        self._index[(row["split"], row["path"])] = int(row["position"])
        return self._index

    def paths(self) -> list[tuple[str, str, str]]:
        """(split, class, path) of every prepared image, in ``index.csv`` order."""
        file = self.prepared / INDEX_FILE
        if not file.is_file():
            return []
        with file.open(newline="") as fh:
            return [(r["split"], r["class"], r["path"]) for r in csv.DictReader(fh)]

    def raw(self, path: str) -> Any:
        """The dataset file as a PIL image, or None (missing, outside the dataset, unreadable)."""
        from PIL import Image

        if self.dataset is None:
            return None
        file = (self.dataset / path).resolve()
        if not file.is_relative_to(self.dataset) or not file.is_file():
            return None
        try:
            with Image.open(file) as img:
                img.draft("RGB", (THUMB, THUMB))  # JPEG: decode near the size we show
                img.load()
                return img.copy()
        except Exception:  # noqa: BLE001 - any decoder failure: show the prepared array instead
            return None

    def prepared_image(self, split: str, path: str) -> Any:
        """The prepared array's row for that image, or None."""
        from PIL import Image

        row = self.index().get((split, path))
        file = self.prepared / f"{split}.npy"
        if row is None or not file.is_file():
            return None
        if split not in self._arrays:
            self._arrays[split] = np.load(file, mmap_mode="r")
        pixels = np.asarray(self._arrays[split][row])
        return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)

    def image(self, path: str, split: str = "test") -> tuple[Any, str]:
        """(image, where it came from: ``raw`` / ``prepared`` / ``missing``)."""
        img = self.raw(path)
        if img is not None:
            return img, "raw"
        img = self.prepared_image(split, path)
        return (img, "prepared") if img is not None else (None, "missing")


# --------------------------------------------------------------------------- model pictures


def _conf(p: Prediction) -> str:
    return f"{p.confidence:.2f}" if p.confidence is not None else "?"


def flip_order(keys: Iterable[str], by: dict[str, Prediction]) -> list[str]:
    """Samples most confident first (in the revision that is wrong), ties by path."""
    return sorted(keys, key=lambda k: (-(by[k].confidence or 0.0), k))


def flips_sheet(
    kind: str,
    keys: Iterable[str],
    base: dict[str, Prediction],
    head: dict[str, Prediction],
    source: ImageSource,
    out: Path,
    labels: tuple[str, str],
) -> dict[str, Any] | None:
    """The contact sheet of broken (``kind="broken"``) or fixed samples, or None if none.

    Broken samples are ordered by this revision's confidence in its wrong answer (the
    most confident new mistakes first), fixed ones by the base's confidence in its old
    wrong answer; at most :data:`MAX_TILES` are drawn.
    """
    keys = list(keys)
    if not keys:
        return None
    wrong = head if kind == "broken" else base
    ordered = flip_order(keys, wrong)
    tiles = []
    for key in ordered[:MAX_TILES]:
        b, h = base[key], head[key]
        img, where = source.image(key)
        record = {
            "path": key,
            "actual": h.actual,
            "base": {"predicted": b.predicted, "confidence": b.confidence},
            "head": {"predicted": h.predicted, "confidence": h.confidence},
            "source": where,
        }
        lines = [
            (key, INK),
            (f"true: {h.actual}", INK),
            (f"{labels[0]}: {b.predicted} {_conf(b)}", GOOD if b.correct else BAD),
            (f"{labels[1]}: {h.predicted} {_conf(h)}", GOOD if h.correct else BAD),
        ]
        tiles.append(Tile(img, lines, record))
    name = BROKEN_PNG if kind == "broken" else FIXED_PNG
    title = f"{kind}: {len(keys)} samples"
    return contact_sheet(tiles, out / name, title, kind=kind, total=len(keys), shown=len(tiles))


def parse_curve(text: str | None) -> tuple[list[float], list[float]]:
    """(steps, values) of a dvclive TSV (``step<TAB>name``), empty if absent or unreadable."""
    if not text:
        return [], []
    steps, values = [], []
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        try:
            value = next(v for k, v in row.items() if k not in ("step", "timestamp"))
            steps.append(float(row["step"]))
            values.append(float(value))
        except (KeyError, StopIteration, TypeError, ValueError):
            continue
    return steps, values


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version string: byte-stable
    _pyplot().close(fig)


def curves_figure(
    base: dict[str, str | None], head: dict[str, str | None], out: Path, labels: tuple[str, str]
) -> bool:
    """Loss and accuracy, train (solid) and val (dashed), base (grey) next to this revision.

    ``base``/``head`` map ``"train/loss"`` … to the TSV text of that revision (None if
    absent). Returns False (and writes nothing) when neither revision has a curve.
    """
    curves = {
        (rev, key): parse_curve(texts.get(key))
        for rev, texts in (("base", base), ("head", head))
        for key in TRAIN_CURVES
    }
    if not any(steps for steps, _ in curves.values()):
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for rev, colour, label in (
            ("base", BASE_COLOUR, labels[0]),
            ("head", HEAD_COLOUR, labels[1]),
        ):
            for split, style in (("train", "-"), ("val", "--")):
                steps, values = curves[(rev, f"{split}/{metric}")]
                if steps:
                    width = 3.0 if rev == "base" else 1.5  # base underneath, visible if equal
                    ax.plot(steps, values, style, color=colour, marker=".", lw=width,
                            label=f"{drawable(label, 24)} {split}")  # fmt: skip
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / CURVES_PNG)
    return True


def confusion_delta(
    base: dict[str, Prediction], head: dict[str, Prediction], order: list[str]
) -> tuple[list[str], np.ndarray]:
    """(classes, this revision's confusion counts minus the base's), actual × predicted."""
    names = {p.actual for p in (*base.values(), *head.values())}
    names |= {p.predicted for p in (*base.values(), *head.values())}
    classes = [c for c in order if c in names] + sorted(names - set(order))
    at = {c: i for i, c in enumerate(classes)}
    delta = np.zeros((len(classes), len(classes)), dtype=int)
    for sign, rows in ((-1, base), (1, head)):
        for p in rows.values():
            delta[at[p.actual], at[p.predicted]] += sign
    return classes, delta


MAX_HEATMAP_CLASSES = 30


def confusion_change_figure(
    base: dict[str, Prediction], head: dict[str, Prediction], order: list[str], out: Path
) -> dict[str, Any] | None:
    """Heatmap of the confusion-count change; colour says better (blue) or worse (red).

    On the diagonal a + is more correct answers (better); off it, a + is more of that
    mistake (worse). With many classes only those in a changed cell are shown. None
    (nothing written) when no cell changed.
    """
    classes, delta = confusion_delta(base, head, order)
    if not delta.any():
        return None
    if len(classes) > MAX_HEATMAP_CLASSES:
        keep = sorted(set(np.nonzero(delta.any(axis=1))[0]) | set(np.nonzero(delta.any(axis=0))[0]))
        keep = keep[:MAX_HEATMAP_CLASSES]
        classes = [classes[i] for i in keep]
        delta = delta[np.ix_(keep, keep)]
    goodness = np.where(np.eye(len(classes), dtype=bool), delta, -delta)
    top = max(1, int(np.abs(delta).max()))
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * n, 1.6 + 0.45 * n))
    ax.imshow(goodness, cmap="RdBu", vmin=-top, vmax=top)
    names = [drawable(c, 16) for c in classes]
    ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("change in counts (blue: better, red: worse)", fontsize=9)
    for i in range(n):
        for j in range(n):
            if delta[i, j]:
                strong = abs(delta[i, j]) > top / 2
                ax.text(j, i, f"{delta[i, j]:+d}", ha="center", va="center", fontsize=8,
                        color="white" if strong else "black")  # fmt: skip
    fig.tight_layout()
    _save(fig, out / CONFUSION_CHANGE_PNG)
    return {"classes": classes, "delta": delta.tolist()}


# --------------------------------------------------------------------------- data pictures


def added_classes_sheet(source: ImageSource, added: list[str], out: Path) -> dict[str, Any] | None:
    """Up to :data:`PER_CLASS` example images of each class the change added."""
    if not added:
        return None
    wanted = set(added)
    picked: dict[str, list[tuple[str, str]]] = {c: [] for c in added}
    for split, cls, path in source.paths():
        if cls in wanted and len(picked[cls]) < PER_CLASS:
            picked[cls].append((split, path))
    tiles = []
    for cls in added:
        for split, path in picked[cls]:
            img, where = source.image(path, split)
            record = {"path": path, "class": cls, "split": split, "source": where}
            tiles.append(Tile(img, [(path, INK), (f"class: {cls}", GOOD), (split, DIM)], record))
    if not tiles:
        return None
    title = f"added classes: {len(added)}"
    return contact_sheet(tiles[:MAX_TILES], out / CLASSES_ADDED_PNG, title, total=len(tiles),
                         shown=min(len(tiles), MAX_TILES))  # fmt: skip


def skipped_sheet(source: ImageSource, skipped: list[dict[str, Any]], out: Path) -> dict | None:
    """The files ``prepare`` skipped, each with its reason (a placeholder if undecodable)."""
    tiles = []
    for item in skipped[:MAX_TILES]:
        path, reason = str(item.get("path")), str(item.get("reason"))
        img = source.raw(path)
        record = {"path": path, "reason": reason, "source": "raw" if img is not None else "missing"}
        tiles.append(Tile(img, [(path, INK), (f"skipped: {reason}", BAD)], record))
    if not tiles:
        return None
    title = f"skipped files: {len(skipped)}"
    return contact_sheet(tiles, out / SKIPPED_PNG, title, total=len(skipped), shown=len(tiles))


def copy_confusion_matrix(root: Path, out: Path) -> bool:
    """The PR's own confusion-matrix PNG (written by ``evaluate``), under an allowed name."""
    src = root / CONFUSION_PNG
    if not src.is_file():
        return False
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFUSION_MATRIX_PNG).write_bytes(src.read_bytes())
    return True
