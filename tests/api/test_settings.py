"""IMGCLF_* configuration: parsed once, validated with the variable's name in the message."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from imgclf.data.preprocessing import ImageError
from imgclf.serving.schemas import REASON_STATUS, status_for
from imgclf.serving.settings import Settings, SettingsError
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


def test_limits_for_hostile_clients_are_settings() -> None:
    """Work pool, queue, decode budget, deadlines and connection cap: IMGCLF_* like the rest."""
    d = Settings()
    assert d.worker_threads >= 1 and d.max_queue > 0 and d.max_decode_bytes >= 100 * 2**20
    assert 0 < d.body_timeout_s <= d.request_timeout_s and d.max_connections > 32
    s = Settings.from_env(
        {
            "IMGCLF_WORKERS": "3",
            "IMGCLF_MAX_QUEUE": "0",
            "IMGCLF_MAX_DECODE_BYTES": "1_000_000",
            "IMGCLF_MAX_CONNECTIONS": "10",
            "IMGCLF_BODY_TIMEOUT_S": "2.5",
            "IMGCLF_REQUEST_TIMEOUT_S": "7",
            "IMGCLF_KEEP_ALIVE_S": "3",
        }
    )
    assert (s.worker_threads, s.max_queue, s.max_decode_bytes, s.max_connections) == (
        3, 0, 1_000_000, 10)  # fmt: skip
    assert (s.body_timeout_s, s.request_timeout_s, s.keep_alive_s) == (2.5, 7.0, 3.0)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"IMGCLF_MAX_BATCH": "many"}, "IMGCLF_MAX_BATCH"),
        ({"IMGCLF_THREADS": "0"}, "IMGCLF_THREADS"),
        ({"IMGCLF_MAX_UPLOAD_BYTES": "-1"}, "IMGCLF_MAX_UPLOAD_BYTES"),
        ({"IMGCLF_MAX_UPLOAD_BYTES": "100", "IMGCLF_MAX_REQUEST_BYTES": "10"},
         "IMGCLF_MAX_REQUEST_BYTES"),
        ({"IMGCLF_BODY_TIMEOUT_S": "soon"}, "IMGCLF_BODY_TIMEOUT_S"),
        ({"IMGCLF_BODY_TIMEOUT_S": "-1"}, "IMGCLF_BODY_TIMEOUT_S"),
        ({"IMGCLF_REQUEST_TIMEOUT_S": "nan"}, "IMGCLF_REQUEST_TIMEOUT_S"),
        ({"IMGCLF_BODY_TIMEOUT_S": "20", "IMGCLF_REQUEST_TIMEOUT_S": "10"},
         "IMGCLF_REQUEST_TIMEOUT_S"),
        ({"IMGCLF_MAX_CONNECTIONS": "0"}, "IMGCLF_MAX_CONNECTIONS"),
        ({"IMGCLF_MAX_DECODE_BYTES": "x"}, "IMGCLF_MAX_DECODE_BYTES"),
        ({"IMGCLF_HEAD_TIMEOUT_S": "0"}, "IMGCLF_HEAD_TIMEOUT_S"),
        ({"IMGCLF_MAX_HEAD_BYTES": "100"}, "IMGCLF_MAX_HEAD_BYTES"),
        ({"IMGCLF_MAX_BODY_BYTES_IN_FLIGHT": "1000"}, "IMGCLF_MAX_BODY_BYTES_IN_FLIGHT"),
        ({"IMGCLF_CLIENT_RATE": "-1"}, "IMGCLF_CLIENT_RATE"),
        ({"IMGCLF_CLIENT_RATE": "fast"}, "IMGCLF_CLIENT_RATE"),
        ({"IMGCLF_CLIENT_MAX_ACTIVE": "-2"}, "IMGCLF_CLIENT_MAX_ACTIVE"),
        ({"IMGCLF_TRUSTED_PROXIES": "10.0.0.1, proxy.local"}, "IMGCLF_TRUSTED_PROXIES"),
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
    for reason in ("not_an_image", "corrupt", "truncated", "too_many_pixels", "empty",
                   "too_many_bytes", "unsupported_mode", "unreadable"):  # fmt: skip
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


def test_edge_and_fairness_settings() -> None:
    """docs/serving-edge.md's table: defaults, and how the per-client values derive."""
    d = Settings.from_env({"IMGCLF_WORKERS": "2", "IMGCLF_MAX_QUEUE": "7"})
    assert (d.head_timeout_s, d.max_head_bytes, d.client_rate) == (5.0, 32 * 1024, 0.0)
    assert d.client_active_limit == 5  # half of 2 + 7, rounded up
    s = Settings.from_env({"IMGCLF_CLIENT_RATE": "2.5", "IMGCLF_CLIENT_MAX_ACTIVE": "0",
                           "IMGCLF_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"})  # fmt: skip
    assert (s.client_burst_size, s.client_active_limit) == (5.0, 0)
    assert s.trusted_proxies == ("10.0.0.1", "192.168.0.0/16")
