"""Build the API image with the model, run it, and ask it what the local artifact says.

Uses ``../shared/tools/container-engine.sh`` (rootful podman with a local
``python:3.11-slim``) when present, else a working ``docker``; skips with the
reason when neither can run containers (fails instead under ``CI=true``). The
train image is never built here (it would download torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgclf.artifact.predictor import Predictor
from tests.api.modelfactory import ProjectTree, project_for
from tests.support import ROOT, free_port, http_ok, missing_tool, wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

ENGINE_SCRIPT = Path(os.environ.get(
    "IMGCLF_CONTAINER_ENGINE_SCRIPT", ROOT.parent / "shared" / "tools" / "container-engine.sh"
))  # fmt: skip
IMAGE = "localhost/imgclf-api:test"
REVISION = "feedfacefeedfacefeedfacefeedfacefeedface"
# The Dockerfiles pin python:3.11-slim by digest; tests build on the engine's local image of
# that tag (container-engine.sh provides a stand-in; no registry access needed).
BASE_IMAGE = os.environ.get("IMGCLF_TEST_PYTHON_IMAGE", "python:3.11-slim")


def _engine() -> list[str]:
    """The container CLI to use, or skip with the reason none can run here."""
    if ENGINE_SCRIPT.is_file() and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(ENGINE_SCRIPT), "setup"], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        if proc.returncode == 0 and shutil.which("podman"):
            return ["podman"]
        reason = proc.stderr.strip().splitlines()[-1:] or ["unknown"]
    else:
        reason = [f"{ENGINE_SCRIPT} missing or not root"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        return [docker]
    missing_tool(f"no container engine can run here ({reason[0]})")


def _run(cmd: list[str], timeout: float = 900) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _build_cmd(engine: list[str], context: Path, tag: str) -> list[str]:
    build = [*engine, "build", "-f", str(context / "dockerfiles" / "api.dockerfile"),
             "--build-arg", f"GIT_REVISION={REVISION}", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
             "-t", tag, str(context)]  # fmt: skip
    if engine[0].endswith("podman"):
        build[2:2] = ["--format", "docker"]  # OCI images would drop the HEALTHCHECK
    return build


@pytest.fixture(scope="module")
def tree(request: pytest.FixtureRequest) -> ProjectTree:
    return project_for(request)


@pytest.fixture(scope="module")
def container(tree: ProjectTree) -> Iterator[tuple[list[str], str, str]]:
    engine = _engine()
    _run(_build_cmd(engine, tree.root, IMAGE))
    size = int(_run([*engine, "image", "inspect", "--format", "{{.Size}}", IMAGE]).strip())
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB")
    port = free_port()
    cid = _run([*engine, "run", "-d", "-p", f"127.0.0.1:{port}:8000", IMAGE]).strip()
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until(lambda: http_ok(url + "/ready"), 90, "ready", every=0.5)
        except AssertionError as err:
            logs = subprocess.run([*engine, "logs", cid], capture_output=True, text=True)
            pytest.fail(f"container {err}:\n{logs.stdout}\n{logs.stderr}")
        yield engine, cid, url
    finally:
        subprocess.run([*engine, "rm", "-f", cid], capture_output=True, timeout=120)


def test_image_serves_the_local_artifact(
    container: tuple[list[str], str, str], tree: ProjectTree
) -> None:
    _, _, url = container
    assert httpx.get(url + "/health").json() == {"status": "ok"}

    image = next(iter(sorted((tree.raw / "8").iterdir())))
    resp = httpx.post(url + "/predict", files={"file": (image.name, image.read_bytes())})
    assert resp.status_code == 200, resp.text
    served = resp.json()
    (local,) = Predictor(tree.model_dir).predict_images([image.read_bytes()])
    assert served["label"] == local.label
    for cls, p in local.probabilities.items():
        assert abs(served["probabilities"][cls] - p) <= 1e-6

    card = httpx.get(url + "/model").json()
    evaluated = json.loads((tree.metrics_dir / "evaluate.json").read_text())
    assert card["git_revision"] == REVISION
    assert card["metrics"]["accuracy"] == evaluated["accuracy"]
    assert card["metrics_match_model"] is True

    metrics = httpx.get(url + "/metrics").text
    assert 'imgclf_http_requests_total{endpoint="/predict",method="POST",status="200"}' in metrics
    assert f'git_revision="{REVISION}"' in metrics

    assert httpx.post(url + "/predict", files={"file": ("x.png", b"nope")}).status_code == 415


def test_image_records_what_it_serves_on_its_volume(
    container: tuple[list[str], str, str], tree: ProjectTree
) -> None:
    """Monitoring is on in the image, writable by the non-root user, and snapshot works."""
    engine, cid, url = container
    image = next(iter(sorted((tree.raw / "3").iterdir())))
    for _ in range(3):
        assert httpx.post(
            url + "/predict", files={"file": ("x.png", image.read_bytes())}
        ).is_success
    snapshots: list[str] = []

    def recorded() -> bool:  # the writer commits about once a second: poll, do not sleep
        snapshots.append(_run([*engine, "exec", cid, "python", "-m", "imgclf.monitoring.store",
                               "snapshot", "/var/lib/imgclf/monitor.db",
                               "/var/lib/imgclf/snapshot.db"]))  # fmt: skip
        return int(snapshots[-1].split(": ")[1].split()[0]) >= 3

    wait_until(recorded, 60, "three predictions in the snapshot", every=0.5)
    volumes = _run([*engine, "image", "inspect", "--format", "{{json .Config.Volumes}}", IMAGE])
    assert "/var/lib/imgclf" in volumes


def test_image_runs_as_non_root_with_healthcheck(container: tuple[list[str], str, str]) -> None:
    engine, cid, _ = container
    assert _run([*engine, "exec", cid, "id", "-u"]).strip() != "0"
    health = _run([*engine, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE])
    assert "/ready" in health
    if engine[0].endswith("podman"):
        _run([*engine, "healthcheck", "run", cid], timeout=60)
    files = _run([*engine, "exec", cid, "ls", "/app/models"]).split()
    assert sorted(files) == ["evaluate.json", "golden.json", "model.json", "model.onnx",
                             "ood.json", "reference.json"]  # fmt: skip
    # The venv's own distributions (it has no pip: the base image's pip installed into it).
    listing = "import importlib.metadata as m; print(*(d.name for d in m.distributions()))"
    pip = _run([*engine, "exec", cid, "python", "-c", listing]).lower()
    assert "torch" not in pip and "dvc" not in pip
    assert "evidently" not in pip and "pandas" not in pip  # the drift report is dev-only
    assert "pyarrow" not in pip  # gcsfs (fleet shipping) brings no pandas/pyarrow
    # Issue 13: monitoring must not grow the serving image past 300 MB of Python packages.
    size_mb = int(_run([*engine, "exec", cid, "du", "-sm", "/opt/venv"]).split()[0])
    assert size_mb < 300, f"/opt/venv is {size_mb} MB"


def test_build_refuses_a_tampered_model(
    container: tuple[list[str], str, str], tree: ProjectTree, tmp_path: Path
) -> None:
    """A model.onnx that no longer hashes to its card stops `docker build`, with the reason.

    The build context is a copy (the checkout's own model is never touched) with one byte
    of the model flipped, as an object overwritten in the bucket would arrive.
    """
    engine, _, _ = container
    context = tmp_path / "context"
    for rel in ("dockerfiles/api.dockerfile", "requirements-serve.txt", ".dockerignore",
                "models/model.onnx", "models/model.json", "models/reference.json",
                "models/ood.json", "models/golden.json", "metrics/evaluate.json"):  # fmt: skip
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2((ROOT if rel.startswith(("docker", "req", ".")) else tree.root) / rel,
                     context / rel)  # fmt: skip
    shutil.copytree(ROOT / "src" / "imgclf", context / "src" / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    model = context / "models" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))

    tag = "localhost/imgclf-api:tampered"
    proc = subprocess.run(_build_cmd(engine, context, tag), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, "the build shipped a tampered model"
    assert "error: model integrity check failed:" in out
    assert "/app/models/model.onnx does not match its card" in out
    # `image inspect` (docker and podman alike) fails for a tag that does not exist.
    tagged = subprocess.run([*engine, "image", "inspect", tag], capture_output=True)
    assert tagged.returncode != 0, "the refused build still tagged an image"
