"""IMGCLF_* configuration: parsed once, validated with the variable's name in the message."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from imgclf.api_schemas import REASON_STATUS, status_for
from imgclf.preprocessing import ImageError
from imgclf.settings import Settings, SettingsError
from tests.api.modelfactory import ProjectTree
from tests.api.server import uvicorn_server


def test_defaults_and_overrides(tmp_path: Path) -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "IMGCLF_MODEL_DIR": str(tmp_path),
            "IMGCLF_MAX_UPLOAD_BYTES": "1_000",
            "IMGCLF_MAX_REQUEST_BYTES": "5000",
            "IMGCLF_MAX_PIXELS": "100",
            "IMGCLF_MAX_BATCH": "3",
            "IMGCLF_CORS_ORIGINS": "https://a.example, https://b.example ,",
            "IMGCLF_THREADS": "2",
            "IMGCLF_GIT_REVISION": "abc",
        }
    )
    assert (s.model_dir, s.max_upload_bytes, s.max_request_bytes) == (tmp_path, 1000, 5000)
    assert (s.max_pixels, s.max_batch, s.threads, s.git_revision) == (100, 3, 2, "abc")
    assert s.cors_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"IMGCLF_MAX_BATCH": "many"}, "IMGCLF_MAX_BATCH"),
        ({"IMGCLF_THREADS": "0"}, "IMGCLF_THREADS"),
        ({"IMGCLF_MAX_UPLOAD_BYTES": "-1"}, "IMGCLF_MAX_UPLOAD_BYTES"),
        ({"IMGCLF_MAX_UPLOAD_BYTES": "100", "IMGCLF_MAX_REQUEST_BYTES": "10"},
         "IMGCLF_MAX_REQUEST_BYTES"),
    ],
)  # fmt: skip
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_metrics_file_found_next_to_model_or_in_metrics(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    s = Settings(model_dir=tmp_path / "models")
    assert s.evaluation_file == tmp_path / "metrics" / "evaluate.json"
    (tmp_path / "models" / "evaluate.json").write_text("{}")
    assert s.evaluation_file == tmp_path / "models" / "evaluate.json"


def test_every_image_error_reason_has_a_4xx() -> None:
    """Reasons raised by preprocessing must map to a deliberate status, not the fallback."""
    for reason in ("not_an_image", "corrupt", "truncated", "too_many_pixels", "empty"):
        assert reason in REASON_STATUS
        assert 400 <= status_for(ImageError(reason, "").reason) < 500


def test_cors_origins(project: ProjectTree, tmp_path: Path) -> None:
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir),
           "IMGCLF_CORS_ORIGINS": "https://app.example"}  # fmt: skip
    with uvicorn_server(env, tmp_path / "log") as server:
        preflight = httpx.options(
            server.url + "/predict",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(server.url + "/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
