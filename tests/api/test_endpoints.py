"""The API's contract: endpoints, card, metrics, page, configuration, no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile

import httpx
import pytest
from PIL import Image

from imgclf.serving.schemas import PredictionOut
from tests.api import samples
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import cli_server, uvicorn_server
from tests.support import ROOT, tool_env


def test_health_and_ready(client: httpx.Client, project: ProjectTree) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    card = json.loads((project.model_dir / "model.json").read_text())
    ready = client.get("/ready").json()
    session = ready.pop("session")
    assert ready == {"ready": True, "model_version": card["model_sha256"][:12]}
    assert (session["session"], session["status"]) == ("fast", "agrees")  # test_session.py


def test_model_card_has_metrics_and_provenance(client: httpx.Client, project: ProjectTree) -> None:
    body = client.get("/model").json()
    card = json.loads((project.model_dir / "model.json").read_text())
    evaluated = json.loads((project.metrics_dir / "evaluate.json").read_text())
    assert body["classes"] == card["classes"]
    assert body["input"]["shape"][1:] == card["input"]["shape"][1:]
    assert body["model"] == card["model"]
    assert body["training"]["epochs"] == card["training"]["epochs"]
    assert body["dataset"]["fingerprint"] == card["dataset"]["fingerprint"]
    assert body["metrics"]["accuracy"] == evaluated["accuracy"]
    assert body["metrics_match_model"] is True
    assert body["git_revision"] == TEST_LIMITS["IMGCLF_GIT_REVISION"]
    assert body["limits"]["max_batch"] == int(TEST_LIMITS["IMGCLF_MAX_BATCH"])


def test_predict_answer_shape(client: httpx.Client, project: ProjectTree) -> None:
    png = project.raw / "7" / sorted(p.name for p in (project.raw / "7").iterdir())[0]
    resp = client.post("/predict", files={"file": ("seven.png", png.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"label", "index", "confidence", "probabilities", "model_version",
                         "in_distribution", "ood_score", "ood_reasons"}  # fmt: skip
    assert isinstance(body["in_distribution"], bool) and isinstance(body["ood_reasons"], list)
    assert list(body["probabilities"]) == client.get("/model").json()["classes"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["probabilities"][body["label"]] == body["confidence"]
    # The app writes this body itself (no response validation): it must be what
    # /docs promises, strictly (no coercion), and the header must say JSON.
    assert PredictionOut.model_validate(body, strict=True).model_dump() == body
    assert resp.headers["content-type"] == "application/json"


def metric(text: str, name: str) -> float:
    """One sample's value in a Prometheus text page (0 when the series is not there yet)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_prometheus_metrics(client: httpx.Client, project: ProjectTree) -> None:
    """Each series *moves* by what one good and one junk upload must add (the session
    server is shared, so the check is on differences, not on the lines being there)."""
    ok = 'imgclf_http_requests_total{endpoint="/predict",method="POST",status="200"}'
    bad = 'imgclf_http_requests_total{endpoint="/predict",method="POST",status="415"}'
    fast = 'imgclf_http_request_duration_seconds_count{endpoint="/predict"}'
    rejected = 'imgclf_rejected_inputs_total{reason="not_an_image"}'
    inferred = "imgclf_inference_duration_seconds_count"
    series = (ok, bad, fast, rejected, inferred)
    before = client.get("/metrics").text
    png = next((project.raw / "1").iterdir()).read_bytes()
    label = client.post("/predict", files={"file": ("a.png", png)}).json()["label"]
    predicted = f'imgclf_predictions_total{{label="{label}"}}'
    client.post("/predict", files={"file": ("a.png", b"junk")})
    text = client.get("/metrics").text
    moved = {name: metric(text, name) - metric(before, name) for name in (*series, predicted)}
    assert moved == {ok: 1, bad: 1, fast: 2, rejected: 1, inferred: 1, predicted: 1}, moved
    assert 'imgclf_http_request_duration_seconds_bucket{endpoint="/predict",le="0.005"}' in text
    assert re.search(r'imgclf_model_info\{.*version="[0-9a-f]{12}"', text)


def test_unknown_paths_do_not_grow_metric_labels(client: httpx.Client) -> None:
    for i in range(5):
        assert client.get(f"/nope/{i}").status_code == 404
    text = client.get("/metrics").text
    assert "/nope/" not in text
    assert 'endpoint="other"' in text


def test_upload_page_is_self_contained(client: httpx.Client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    html = resp.text
    assert "<script" in html and 'fetch("predict"' in html
    # no CDN, no external resources of any kind
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html


def test_openapi_documents_multipart_uploads(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["file"]["format"] == "binary"
    batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    assert batch["multipart/form-data"]["schema"]["properties"]["files"]["type"] == "array"


def test_not_ready_without_model(tmp_path) -> None:
    """A missing artifact: alive (/health 200) but not ready (/ready and /predict 503)."""
    env = {"IMGCLF_MODEL_DIR": str(tmp_path / "missing")}
    with uvicorn_server(env, tmp_path / "log.txt", wait_path="/health") as server:
        assert httpx.get(server.url + "/health").status_code == 200
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503
        assert "model.onnx" in ready.json()["detail"]
        resp = httpx.post(server.url + "/predict", files={"file": ("a.png", b"x")})
        assert resp.status_code == 503


def test_bad_setting_fails_with_its_name(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "serve", "--port", "1"],
        env={**tool_env(ROOT), "IMGCLF_MAX_BATCH": "lots"}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "IMGCLF_MAX_BATCH" in proc.stderr


def test_serving_code_never_imports_torch(project: ProjectTree) -> None:
    model_dir = str(project.model_dir)
    code = (
        "import sys, pathlib; from imgclf.serving.app import create_app; "
        "from imgclf.serving.service import Service; "
        "from imgclf.serving.settings import Settings; "
        f"s = Service(Settings(model_dir=pathlib.Path({model_dir!r}))); "
        "s.load(); assert s.backend is not None, s.error; create_app(s.settings); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'dvc')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], env=tool_env(ROOT), check=True, timeout=120)


@pytest.mark.anyio
async def test_uploads_never_touch_disk(
    project: ProjectTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3 MB upload (over Starlette's 1 MiB spool threshold) is parsed without temp files.

    In-process on purpose: every way to create a temporary file is made to fail.
    """
    import starlette.formparsers

    from imgclf.serving.app import create_app
    from imgclf.serving.settings import Settings

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was written to disk")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", forbidden)
    app = create_app(Settings(model_dir=project.model_dir))
    app.state.service.load()
    digit = Image.open(next((project.raw / "4").iterdir())).resize((1000, 1000)).convert("RGB")
    big = samples.encode(digit, "BMP")
    assert len(big) > 2_900_000
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        resp = await c.post("/predict", files={"file": ("big.bmp", big)})
    assert resp.status_code == 200, resp.text


def test_cli_serve_serves_the_model(project: ProjectTree, tmp_path) -> None:
    """``imgclf serve --model-dir`` (what ``make serve`` runs) answers /predict."""
    with cli_server(project.model_dir, tmp_path / "serve.log") as server:
        image = next(iter(sorted((project.raw / "2").iterdir())))
        resp = httpx.post(server.url + "/predict", files={"file": (image.name, image.read_bytes())})
        assert resp.status_code == 200, resp.text
        assert resp.json()["label"] in {p.name for p in project.raw.iterdir()}
