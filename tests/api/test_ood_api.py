"""Issue 14 end to end: the OOD flag on a real server with the real evaluated model.

The inputs of the issue (a colour photo, a coffee-cup-sized JPEG, a brick wall, uniform
noise, an all-black image) are made here with code of their own, not the generators
``evaluate`` measures with, so the detector is tested on images it was not measured on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from imgclf.jsonio import expand
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import uvicorn_server
from tests.images import encode
from tests.support import ROOT, tool_env


def _person_photo() -> bytes:
    """512×512 colour 'portrait': sky gradient, skin-coloured head and body, JPEG."""
    yy = np.mgrid[0:512, 0:512][0]
    sky = np.stack([90 + yy // 6, 140 + yy // 8, 230 - yy // 10], -1).astype(np.uint8)
    img = Image.fromarray(sky, "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((196, 90, 316, 230), fill=(224, 172, 140))
    draw.rectangle((150, 240, 362, 512), fill=(40, 60, 120))
    return encode(img.filter(ImageFilter.GaussianBlur(2)), "JPEG", quality=90)


def _cup_photo() -> bytes:
    """600×400 'coffee cup' on a table: a brown ellipse in a white cylinder, JPEG."""
    img = Image.new("RGB", (600, 400), (181, 140, 100))
    draw = ImageDraw.Draw(img)
    draw.rectangle((220, 120, 380, 330), fill=(245, 245, 240))
    draw.ellipse((220, 100, 380, 140), fill=(90, 55, 30))
    draw.arc((360, 170, 430, 260), -90, 90, fill=(245, 245, 240), width=14)
    return encode(img, "JPEG", quality=85)


def _brick_wall() -> bytes:
    """A 400×300 brick wall: red-brown bricks, light mortar, offset rows."""
    rng = np.random.default_rng(7)
    px = np.empty((300, 400, 3), np.float64)
    px[:] = (150, 62, 45)
    px += rng.normal(0, 12, px.shape)
    for row, y in enumerate(range(0, 300, 25)):
        px[y : y + 3] = 200
        for x in range(-50 * (row % 2), 400, 100):
            px[y : y + 25, max(x, 0) : max(x, 0) + 3] = 200
    return encode(Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)), "PNG")


def _noise() -> bytes:
    pixels = np.random.default_rng(99).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def _black() -> bytes:
    return encode(Image.new("L", (8, 8), 0), "PNG")


ISSUE_INPUTS = {
    "person": _person_photo,
    "cup": _cup_photo,
    "bricks": _brick_wall,
    "noise": _noise,
    "black": _black,
}


@pytest.mark.parametrize("name", sorted(ISSUE_INPUTS))
def test_the_issues_inputs_are_flagged(client: httpx.Client, name: str) -> None:
    ood = client.get("/model").json()["ood"]
    assert ood == {"mode": "flag", "active": True, "pass_rate": 0.95, "feature_space": True}
    r = client.post("/predict", files={"file": (f"{name}.img", ISSUE_INPUTS[name]())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["in_distribution"] is False, body
    assert body["ood_score"] > 1 and body["ood_reasons"]
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-4)  # still there
    if name in ("person", "cup", "bricks"):  # colour files, and the digits are grayscale
        assert any(r.startswith("a colour image") for r in body["ood_reasons"]), body


def test_the_test_split_passes_at_the_calibrated_rate(
    client: httpx.Client, project: ProjectTree, test_split_files: list[Path]
) -> None:
    """Uploading the raw test files gives exactly the pass rate evaluate measured (≥ 95 %)."""
    metrics = expand(json.loads((project.metrics_dir / "evaluate.json").read_text()))
    passed: list[bool] = []
    batch = int(TEST_LIMITS["IMGCLF_MAX_BATCH"])
    for start in range(0, len(test_split_files), batch):
        chunk = test_split_files[start : start + batch]
        files = [("files", (p.name, p.read_bytes())) for p in chunk]
        results = client.post("/predict/batch", files=files).json()["results"]
        passed += [item["in_distribution"] for item in results]
    rate = float(np.mean(passed))
    assert rate == pytest.approx(metrics["ood"]["test_pass_rate"], abs=1e-6)
    assert rate >= metrics["ood"]["target_pass_rate"] == 0.95


def test_metrics_count_ood_answers_by_reason(client: httpx.Client) -> None:
    """Each reason the answer gives moves its counter by exactly one, nothing else moves."""

    def counts() -> dict[str, float]:
        text = client.get("/metrics").text
        found = re.findall(r'^imgclf_ood_inputs_total\{reason="(\w+)"\} (\S+)$', text, re.M)
        return {reason: float(value) for reason, value in found}

    before = counts()
    answer = client.post("/predict", files={"file": ("n.png", _noise())}).json()
    after = counts()
    moved = {r: v - before.get(r, 0.0) for r, v in after.items() if v != before.get(r, 0.0)}
    assert moved.get("size") == 1, moved  # 256x256 noise: the size check always fires
    assert set(moved.values()) == {1}, moved
    # reasons and their codes are parallel lists: one counted code per reason given
    assert sum(moved.values()) == len(answer["ood_reasons"]), (moved, answer["ood_reasons"])


def test_refuse_answers_422_and_off_leaves_the_flag_out(
    project: ProjectTree, tmp_path: Path, test_split_files: list[Path]
) -> None:
    base = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS}
    digit = test_split_files[0].read_bytes()
    with uvicorn_server({**base, "IMGCLF_OOD": "refuse"}, tmp_path / "refuse.log") as server:
        r = httpx.post(server.url + "/predict", files={"file": ("n.png", _noise())})
        assert r.status_code == 422 and r.json()["reason"] == "out_of_distribution"
        assert "does not look like the training images" in r.json()["detail"]
        files = [("files", ("n.png", _noise())), ("files", ("b.png", _black()))]
        items = httpx.post(server.url + "/predict/batch", files=files).json()["results"]
        assert [(i["ok"], i.get("status"), i.get("reason")) for i in items] == [
            (False, 422, "out_of_distribution")] * 2  # fmt: skip
        metrics = httpx.get(server.url + "/metrics").text
        assert 'imgclf_rejected_inputs_total{reason="out_of_distribution"} 3.0' in metrics
    with uvicorn_server({**base, "IMGCLF_OOD": "off"}, tmp_path / "off.log") as server:
        body = httpx.post(server.url + "/predict", files={"file": ("n.png", _noise())}).json()
        assert body["in_distribution"] is None and body["ood_reasons"] == []
        files = [("files", ("n.png", _noise())), ("files", ("d.png", digit))]
        items = httpx.post(server.url + "/predict/batch", files=files).json()["results"]
        assert [("in_distribution" in i, "ood_score" in i, i["ood_reasons"]) for i in items] == [
            (False, False, [])] * 2  # fmt: skip
        assert httpx.post(server.url + "/predict", files={"file": ("d.png", digit)}).is_success


def test_refuse_without_statistics_is_not_ready_with_the_reason(
    project: ProjectTree, tmp_path: Path
) -> None:
    """IMGCLF_OOD=refuse cannot guard without ood.json: the server says so instead of
    silently answering everything; the default (flag) still serves, without the flag."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.onnx", "model.json"):
        (models / name).write_bytes((project.model_dir / name).read_bytes())
    env = {"IMGCLF_MODEL_DIR": str(models), **TEST_LIMITS}
    with uvicorn_server({**env, "IMGCLF_OOD": "refuse"}, tmp_path / "r.log", "/health") as s:
        ready = httpx.get(s.url + "/ready")
        assert ready.status_code == 503 and "ood.json not found" in ready.json()["detail"]
    with uvicorn_server(env, tmp_path / "f.log") as s:
        body = httpx.post(s.url + "/predict", files={"file": ("n.png", _noise())}).json()
        assert body["in_distribution"] is None
        assert "out-of-distribution flag disabled" in s.log_tail()


def test_cli_predict_reports_the_flag(project: ProjectTree, tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"
    noise.write_bytes(_noise())
    cmd = [sys.executable, "-m", "imgclf.cli", "predict", "--json", str(noise),
           "--model-dir", str(project.model_dir)]  # fmt: skip
    proc = subprocess.run(cmd, env=tool_env(ROOT), capture_output=True, text=True, check=True)
    line = json.loads(proc.stdout)
    assert line["in_distribution"] is False and line["ood_reasons"] and line["ood_score"] > 1
    text = subprocess.run(cmd[:4] + cmd[5:], env=tool_env(ROOT), capture_output=True, text=True)
    assert "[out of distribution, score" in text.stdout
