"""The served session is the fast one only while it answers like the evaluated one.

evaluate scores with the portable onnxruntime session and stores a golden batch; the API
answers with the fast session after checking it against that batch, and falls back to
the portable session when they disagree (imgclf.artifact.agreement). The mismatch is
forced for real: a golden batch of the whole test split with a tolerance of 0, which the
portable session meets bit for bit and the fast session (another summation order) does
not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from imgclf.artifact.agreement import (
    GOLDEN_FORMAT,
    TOLERANCE,
    agreement,
    golden_batch,
    load_golden,
    load_served,
)
from imgclf.artifact.files import GOLDEN_FILE
from imgclf.artifact.predictor import Predictor
from imgclf.data.prepared_files import load_split
from imgclf.errors import ModelIntegrityError
from imgclf.serving.service import Service
from imgclf.serving.settings import Settings
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import uvicorn_server


def _copy_models(project: ProjectTree, tmp_path: Path) -> Path:
    return Path(shutil.copytree(project.model_dir, tmp_path / "models"))


def _strict_golden(project: ProjectTree, model_dir: Path) -> float:
    """Replace golden.json by the whole test split at tolerance 0; return the fast
    session's largest difference on it (> 0, or the mismatch could not be forced)."""
    images, _ = load_split(project.prepared, "test")
    portable = Predictor(model_dir, session="portable")
    probs = portable.predict_proba(images)
    fast = Predictor(model_dir, session="fast").predict_proba(images)
    diff = agreement(probs, fast).max_abs_diff
    golden = golden_batch(images, probs, portable.card["model_sha256"], agreement(probs, probs))
    golden["tolerance"] = 0.0
    (model_dir / GOLDEN_FILE).write_text(json.dumps(golden))
    return diff


def test_evaluate_wrote_a_golden_batch_the_fast_session_agrees_with(project: ProjectTree) -> None:
    card = json.loads((project.model_dir / "model.json").read_text())
    golden = load_golden(project.model_dir, card["model_sha256"])
    assert golden is not None, "evaluate must write models/golden.json"
    assert len(golden.pixels) >= min(16, len(card["classes"]))
    assert golden.tolerance == TOLERANCE
    # The golden answers are the portable session's, bit for bit.
    portable = Predictor(project.model_dir, session="portable").predict_proba(golden.pixels)
    assert np.array_equal(portable.astype(np.float64), golden.probabilities)
    predictor, check = load_served(project.model_dir)
    assert (check.session, check.status) == ("fast", "agrees")
    assert predictor.session_kind == "fast"
    assert check.golden is not None and check.golden["top1_agreement"] == 1.0


def test_served_session_is_fast_and_reported(client: httpx.Client) -> None:
    ready = client.get("/ready").json()
    assert ready["session"]["session"] == "fast"
    assert ready["session"]["status"] == "agrees"
    assert client.get("/model").json()["session"] == ready["session"]


def test_a_disagreeing_fast_session_falls_back_and_says_so(
    project: ProjectTree, tmp_path: Path
) -> None:
    model_dir = _copy_models(project, tmp_path)
    diff = _strict_golden(project, model_dir)
    if diff == 0.0:  # pragma: no cover - no CPU seen so far gives identical bits
        pytest.skip("the fast session gives the portable bits on this CPU: nothing to force")
    env = {**TEST_LIMITS, "IMGCLF_MODEL_DIR": str(model_dir)}
    with uvicorn_server(env, tmp_path / "log.txt") as server:
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready["session"]["session"] == "portable"
        assert ready["session"]["status"] == "fallback"
        assert "the fast session disagrees" in ready["session"]["detail"]
        assert httpx.get(f"{server.url}/model").json()["session"] == ready["session"]
        metrics = httpx.get(f"{server.url}/metrics").text
        # One fallback per model load: one per server process, all counted in /metrics.
        assert f"imgclf_session_fallbacks_total {len(server.pids())}.0" in metrics
        assert "fast session disagrees" in server.log_tail()


def test_golden_answers_of_another_run_make_the_server_not_ready(
    project: ProjectTree, tmp_path: Path
) -> None:
    """Both sessions disagree with a top-1 that moved: the files do not belong together."""
    model_dir = _copy_models(project, tmp_path)
    golden = json.loads((model_dir / GOLDEN_FILE).read_text())
    golden["probabilities"] = [row[::-1] for row in golden["probabilities"]]
    (model_dir / GOLDEN_FILE).write_text(json.dumps(golden))
    service = Service(Settings(model_dir=model_dir))
    service.load()
    assert service.backend is None
    assert service.error is not None and "neither session" in service.error
    with pytest.raises(ModelIntegrityError, match="neither session"):
        load_served(model_dir)


def test_without_a_golden_file_the_fast_session_serves_unchecked(
    project: ProjectTree, tmp_path: Path
) -> None:
    model_dir = _copy_models(project, tmp_path)
    (model_dir / GOLDEN_FILE).unlink()
    service = Service(Settings(model_dir=model_dir))
    service.load()
    assert service.error is None
    assert service.session is not None
    assert (service.session["session"], service.session["status"]) == ("fast", "unchecked")


def test_portable_session_on_request(project: ProjectTree) -> None:
    service = Service(Settings.from_env({"IMGCLF_MODEL_DIR": str(project.model_dir),
                                         "IMGCLF_SESSION": "portable"}))  # fmt: skip
    service.load()
    assert service.session is not None and service.session["status"] == "configured"
    assert service.backend is not None and service.backend.session_kind == "portable"


def test_a_golden_file_for_another_model_is_refused(project: ProjectTree, tmp_path: Path) -> None:
    model_dir = _copy_models(project, tmp_path)
    golden = json.loads((model_dir / GOLDEN_FILE).read_text())
    assert golden["format"] == GOLDEN_FORMAT
    golden["model_sha256"] = "0" * 64
    (model_dir / GOLDEN_FILE).write_text(json.dumps(golden))
    with pytest.raises(ValueError, match="another model"):
        load_served(model_dir)
