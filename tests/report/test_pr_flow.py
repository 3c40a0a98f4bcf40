"""The pull-request flow for real: baseline on main, branch, dvc exp run, commit, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

from imgclf.report.markdown import fmt, fmt_change
from tests.support import git, imgclf, run

pytestmark = pytest.mark.slow

PARSER = MarkdownIt("commonmark").enable("table")


@pytest.fixture
def baseline(reproduced_repo: Path) -> Path:
    """The session's shrunk repo on main, its `dvc repro` outputs committed (read-only).

    The gs:// default remote of .dvc/config is left in place with no credentials:
    `dvc repro` must not have needed any remote access.
    """
    assert "url = gs://" in (reproduced_repo / ".dvc/config").read_text()
    return reproduced_repo


def test_identical_revisions_say_nothing_changed(baseline: Path) -> None:
    out = imgclf(baseline, "report", "--base", "main").stdout
    assert "**Nothing changed** against `main`" in out
    assert "**no change**" in out
    assert "No cell of the confusion matrix changed." in out


def _lr_commit(repo: Path) -> None:
    """A branch `better-lr` whose commit trains with lr=0.05 (it breaks some test images)."""
    git(repo, "checkout", "-qb", "better-lr")
    run(["dvc", "exp", "run", "-S", "lr=0.05"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lr=0.05")


def test_pr_flow_report(baseline: Path, repro_clone: Path) -> None:
    repo = repro_clone  # branches, commits and an experiment: not in the shared repo
    base_eval = json.loads((repo / "metrics/evaluate.json").read_text())
    _lr_commit(repo)
    head_eval = json.loads((repo / "metrics/evaluate.json").read_text())
    assert head_eval["accuracy"] != base_eval["accuracy"], "the experiment should move accuracy"

    imgclf(repo, "report", "--base", "main", "--out", "report.md")
    out = (repo / "report.md").read_text()
    print(out)

    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        old, new = base_eval[key], head_eval[key]
        assert f"| {name} | {fmt(old)} | {fmt(new)} | {fmt_change(old, new)} |" in out
    assert "| `lr` | auto | 0.05 |" in out  # auto: 0.005 on the digits (card: training.lr)
    assert "| `epochs` |" not in out, "only the changed param is listed"

    sentence = re.search(
        r"lr=0\.05 changed test accuracy from (\S+) to (\S+) \(([+-]\d+\.\d\d) pp, 95 % CI "
        r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] pp; McNemar exact p = \S+, .*\): "
        r"\*\*(likely real|within noise)\*\*\.",
        out,
    )
    assert sentence, "the noise sentence is missing"
    assert float(sentence[1]) == pytest.approx(base_eval["accuracy"], abs=1e-4)
    assert float(sentence[2]) == pytest.approx(head_eval["accuracy"], abs=1e-4)
    change_pp = (head_eval["accuracy"] - base_eval["accuracy"]) * 100
    assert float(sentence[3]) == pytest.approx(change_pp, abs=0.01)

    assert "### Per-class precision / recall / F1 (largest change first)" in out
    assert "### Confusion-matrix changes" in out
    assert "Nothing changed" not in out

    data = imgclf(repo, "data-report", "--base", "main").stdout
    assert "### Images per class" in data
    assert "| `0` |" in data
    assert "No `.dvc` file changed." in data


def test_pr_report_pictures(repro_clone: Path) -> None:
    """The report of a change that breaks test images shows those images: the contact
    sheets hold exactly the paired comparison's flipped samples (read back from the JSON
    manifests and from the pixels), the markdown links only allow-listed files, the
    output is byte-for-byte reproducible and the comment fits GitHub's limit."""
    from PIL import Image

    from imgclf.evaluation.paired_test import parse_predictions
    from imgclf.report.markdown import COMMENT_LIMIT
    from imgclf.report.pictures import MAX_TILES, MODEL_IMAGES

    repo = repro_clone  # its own clone: the result does not depend on test order
    _lr_commit(repo)
    imgclf(repo, "report", "--base", "main", "--out", "out/report.md", "--images", "out/images")
    out = (repo / "out/report.md").read_text()
    assert len(out) < COMMENT_LIMIT
    images = repo / "out/images"

    base = parse_predictions(git(repo, "show", "main:metrics/predictions.csv").stdout)
    head = parse_predictions((repo / "metrics/predictions.csv").read_text())
    broken = sorted(k for k in base if base[k].correct and not head[k].correct)
    fixed = sorted(k for k in base if head[k].correct and not base[k].correct)
    assert broken, "lr=0.05 should break some test images (the docs' excerpt: 20)"
    assert f"{len(fixed)} fixed / {len(broken)} broken" in out

    dataset = repo / "data/raw/digits"
    for kind, keys, wrong in (("broken", broken, head), ("fixed", fixed, base)):
        if not keys:
            assert not (images / f"flips-{kind}.png").exists()
            continue
        manifest = json.loads((images / f"flips-{kind}.json").read_text())
        assert manifest["total"] == len(keys) and manifest["shown"] == min(len(keys), MAX_TILES)
        expected = sorted(keys, key=lambda k: (-wrong[k].confidence, k))[:MAX_TILES]
        assert [t["path"] for t in manifest["tiles"]] == expected, "most confident first"
        sheet = Image.open(images / f"flips-{kind}.png").convert("RGB")
        for tile in manifest["tiles"]:
            b, h = base[tile["path"]], head[tile["path"]]
            assert tile["actual"] == h.actual == b.actual
            assert (tile["base"]["predicted"], tile["head"]["predicted"]) == (
                b.predicted,
                h.predicted,
            )
            assert tile["lines"] == [tile["path"], f"true: {h.actual}",
                                     f"main: {b.predicted} {b.confidence:.2f}",
                                     f"workspace: {h.predicted} {h.confidence:.2f}"]  # fmt: skip
            # The pixels drawn are the sample's own image, enlarged by a whole factor.
            assert tile["source"] == "raw"
            src = Image.open(dataset / tile["path"]).convert("RGB")
            k = tile["scale"]
            want = src.resize((src.width * k, src.height * k), Image.Resampling.NEAREST)
            assert np.array_equal(np.asarray(sheet.crop(tile["box"])), np.asarray(want)), tile[
                "path"
            ]

    made = {p.name for p in images.glob("*.png")}
    assert made >= {"curves.png", "confusion-change.png", "confusion-matrix.png"}
    assert made <= set(MODEL_IMAGES)
    rendered = PARSER.render(out)
    srcs = re.findall(r'<img src="([^"]*)"', rendered)
    assert sorted(srcs) == sorted(f"images/{n}" for n in made), "each picture linked once"
    assert "<a " not in rendered, "no other link"
    for src in srcs:
        assert (repo / "out" / src).is_file()

    # Same inputs, same bytes (fixed DPI, no timestamps or versions in the PNGs).
    imgclf(repo, "report", "--base", "main", "--out", "again/report.md", "--images", "again/i")
    for name in sorted(made):
        assert (images / name).read_bytes() == (repo / "again/i" / name).read_bytes(), name
    assert (repo / "again/report.md").read_text().replace("](i/", "](images/") == out
