"""Likely label errors: flipped labels in a prepared split are found, ranked and shown by
``imgclf label-issues`` and the data report's section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from imgclf.cli import app
from imgclf.data.prepare import prepare
from imgclf.data.prepared_files import read_index
from imgclf.evaluation.label_issues import find_issues, markdown
from imgclf.params import validate_params

ROOT = Path(__file__).resolve().parents[2]
COLOURS = [(200, 40, 40), (40, 180, 40), (40, 60, 200)]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """3 colour classes × 40 noisy 24×24 images, 12 of them filed under the wrong class."""
    root = tmp_path_factory.mktemp("noisy")
    raw, rng, flipped = root / "raw", np.random.default_rng(0), set()
    for i in range(120):
        label = i % 3
        pixels = np.clip(rng.normal(COLOURS[label], 45, (24, 24, 3)), 0, 255).astype(np.uint8)
        folder = (label + 1) % 3 if i % 10 == 1 else label
        rel = f"c{folder}/{i:03d}.png"
        if folder != label:
            flipped.add(rel)
        (raw / f"c{folder}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(raw / rel)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"image_size": 16, "color_mode": "rgb", "near_dup_distance": -1})
    prepare(raw, root / "prepared", root / "prepare.json", validate_params(params))
    return root / "prepared", flipped


def test_flipped_labels_are_found_first(noisy: tuple[Path, set[str]]) -> None:
    prepared, flipped = noisy
    train = {row["path"] for row in read_index(prepared, "train")}
    truth = flipped & train
    issues = find_issues(prepared, seed=1)
    assert len(truth) >= 4
    assert {i.path for i in issues[: len(truth)]} == truth  # ranked first, all of them
    assert [i.rank for i in issues] == list(range(1, len(issues) + 1))
    first = issues[0]
    assert first.given != first.suggested and first.given_probability < 0.5
    assert find_issues(prepared, seed=1) == issues  # seeded: the same list again
    text = "\n".join(markdown(issues, len(train), top=2))
    assert "| 1 | `" in text and "look mislabelled" in text


def test_label_issues_command_prints_and_writes_json(
    noisy: tuple[Path, set[str]], tmp_path: Path
) -> None:
    prepared, _ = noisy
    out = tmp_path / "issues.json"
    result = CliRunner().invoke(app, ["label-issues", str(prepared), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "look mislabelled" in result.output
    data = json.loads(out.read_text())
    assert data["issues"] and {"path", "given", "suggested", "rank"} <= set(data["issues"][0])
    missing = CliRunner().invoke(app, ["label-issues", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "dvc repro prepare" in missing.output
