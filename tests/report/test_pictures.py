"""The reports' pictures on small hand-made repos (no training): the dataset report's
sheets, hostile names inside images and links, the comment size guard.

The model report's pictures after a real training run are checked in
``test_pr_flow.py::test_pr_report_pictures``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from imgclf.report.markdown import COMMENT_LIMIT, fit_comment, image_line
from imgclf.report.pictures import DATA_IMAGES, MODEL_IMAGES, drawable
from tests.report.test_markdown import DVC_YAML, HOSTILE, tables
from tests.report.test_markdown import hostile_repo as hostile_repo  # the fixture
from tests.support import git, imgclf, run

PARSER = MarkdownIt("commonmark").enable("table")


def image_srcs(markdown: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', PARSER.render(markdown))


def test_image_line_takes_only_the_reports_own_words() -> None:
    assert (
        image_line("curves of both", "images", "curves.png")
        == "![curves of both](images/curves.png)"
    )
    assert image_line("x", "my dir/(a)", "curves.png") == "![x](my%20dir/%28a%29/curves.png)"
    for alt, name in (("a](http://x)", "curves.png"), ("a", "../x.png"), ("a", "x.svg")):
        with pytest.raises(ValueError):
            image_line(alt, "images", name)


def test_drawable_text_has_no_control_characters() -> None:
    assert drawable("a\nb\u202ec") == "a?b?c"
    assert len(drawable("x" * 500)) == 40


def test_fit_comment_cuts_a_long_report_with_a_note() -> None:
    text = "<details><summary>x</summary>\n\n" + "\n".join(f"| row {i} |" for i in range(20_000))
    fitted = fit_comment(text)
    assert len(fitted) < COMMENT_LIMIT
    assert fitted.rstrip().endswith("or read the full file in the run's artifact.")
    assert fitted.count("<details>") == fitted.count("</details>")
    assert fit_comment("short") == "short"


def test_hostile_names_stay_inert_with_pictures(hostile_repo: Path) -> None:
    """Class names with markdown, HTML and control characters are drawn into the sheet
    (cut, controls replaced) and the only images the markdown links are the report's."""
    imgclf(hostile_repo, "report", "--base", "main", "--label", "PR|#9 <b>",
                 "--images", "pics", "--out", "r.md")  # fmt: skip
    md = (hostile_repo / "r.md").read_text()
    for rows in tables(md):
        assert len(set(rows)) == 1
    srcs = image_srcs(md)
    assert srcs and all(re.fullmatch(r"pics/[a-z-]+\.png", s) for s in srcs), srcs
    assert {s.split("/")[1] for s in srcs} <= set(MODEL_IMAGES)
    manifest = json.loads((hostile_repo / "pics/flips-broken.json").read_text())
    assert {t["actual"] for t in manifest["tiles"]} == {HOSTILE[0], HOSTILE[2]}
    for tile in manifest["tiles"]:
        assert tile["source"] == "missing" and tile["box"] is None  # no dataset in this repo
        assert all("\n" not in line and "\u202e" not in line for line in tile["lines"])


DATA_DVC_YAML = DVC_YAML.replace("      - metrics/evaluate.json:\n          cache: false\n", "")


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (5, 7)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.putpixel((1, min(2, size[1] - 1)), (255 - colour[0], 0, 0))  # shows orientation
    img.save(path)


def prepare_json(classes: dict[str, int], skipped: list[dict[str, str]]) -> str:
    rows = [{"class": c, "used": n, "found": n, "train": n, "val": 0, "test": 0}
            for c, n in classes.items()]  # fmt: skip
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    return json.dumps({"dataset": "data/raw/ds", "n_used": sum(classes.values()),
                       "n_skipped": len(skipped), "classes": rows,
                       "skipped_by_reason": reasons, "skipped": skipped})  # fmt: skip


def test_data_report_pictures(tmp_path: Path) -> None:
    """A change that adds class `c`, drops class `z` and skips two files (one undecodable):
    the sheets show c's images (pixels checked) and the skipped files with their reasons."""
    repo = tmp_path
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "params.yaml").write_text("lr: 0.1\nname: x\n")
    (repo / "dvc.yaml").write_text(DATA_DVC_YAML)
    (repo / "metrics").mkdir()
    (repo / "metrics/prepare.json").write_text(prepare_json({"a": 2, "z": 1}, []))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")

    raw = repo / "data/raw/ds"
    colours = {"a/1.png": (200, 10, 10), "a/2.png": (10, 200, 10), "c/1.png": (10, 10, 200),
               "c/2.png": (90, 90, 90), "b/tiny.png": (250, 250, 0)}  # fmt: skip
    for rel, colour in colours.items():
        png(raw / rel, colour, (2, 2) if "tiny" in rel else (5, 7))
    (raw / "b/bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (repo / "data/prepared").mkdir(parents=True)
    with (repo / "data/prepared/index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "position", "label", "class", "path"])
        for i, rel in enumerate(["a/1.png", "a/2.png", "c/1.png", "c/2.png"]):
            writer.writerow(["train", i, 0, rel.split("/")[0], rel])
    skipped = [{"path": "b/bad.png", "reason": "corrupt"},
               {"path": "b/tiny.png", "reason": "too small"}]  # fmt: skip
    (repo / "metrics/prepare.json").write_text(prepare_json({"a": 2, "c": 2}, skipped))

    imgclf(repo, "data-report", "--base", "main", "--images", "out/images", "--out", "out/d.md")
    md = (repo / "out/d.md").read_text()
    assert "**Classes removed** (1): `z`" in md
    assert sorted(image_srcs(md)) == ["images/classes-added.png", "images/skipped-files.png"]
    assert {p.name for p in (repo / "out/images").glob("*.png")} <= set(DATA_IMAGES)

    added = json.loads((repo / "out/images/classes-added.json").read_text())
    assert [(t["path"], t["class"]) for t in added["tiles"]] == [("c/1.png", "c"), ("c/2.png", "c")]
    sheet = Image.open(repo / "out/images/classes-added.png").convert("RGB")
    for tile in added["tiles"]:
        src = Image.open(raw / tile["path"]).convert("RGB")
        k = tile["scale"]
        want = src.resize((src.width * k, src.height * k), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(sheet.crop(tile["box"])), np.asarray(want))

    gone = json.loads((repo / "out/images/skipped-files.json").read_text())
    rows = [(t["path"], t["reason"], t["source"]) for t in gone["tiles"]]
    assert rows == [("b/bad.png", "corrupt", "missing"), ("b/tiny.png", "too small", "raw")]
    assert gone["tiles"][1]["lines"] == ["b/tiny.png", "skipped: too small"]

    # Without --images: the same text, no picture section.
    plain = imgclf(repo, "data-report", "--base", "main").stdout
    assert "In pictures" not in plain and "<img" not in PARSER.render(plain)
