"""Issue 9 over real HTTP: no request can stall the server, exhaust its memory or slip past
the format allow-list. Each test reproduces one finding with an input it makes itself.

The module's server has short deadlines (body 1.5 s) and a small pool so the
cases are quick; the load test at the end mixes them all with normal traffic.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api import hostile, samples
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import ServerProcess, free_port, uvicorn_server
from tests.support import ROOT, tool_env
from tests.support import holds_within as wait_until

BODY_TIMEOUT_S = 1.5
HOSTILE_ENV = {
    **TEST_LIMITS,
    "IMGCLF_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "IMGCLF_REQUEST_TIMEOUT_S": "20",
    "IMGCLF_WORKERS": "2",
    "IMGCLF_MAX_QUEUE": "8",
}
# /health while hostile uploads are being processed (the container healthcheck's view):
# typical answer in milliseconds, and no stall (before the fix: seconds). The worst case
# is generous because the 2-core test machine is shared with other work.
HEALTH_MEDIAN_MS, HEALTH_WORST_MS = 25, 1000
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile_server(
    project: ProjectTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **HOSTILE_ENV}
    log = tmp_path_factory.mktemp("hostile") / "uvicorn.log"
    with uvicorn_server(env, log) as server:
        yield server
        assert server.alive(), f"the API process died:\n{server.log_tail()}"
        assert "Traceback" not in server.log_tail(1_000_000), server.log_tail()


@pytest.fixture
def hclient(hostile_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def digit(project: ProjectTree) -> Image.Image:
    img = Image.open(next(iter(sorted((project.raw / "5").iterdir()))))
    img.load()
    return img


@pytest.fixture(scope="module")
def wide_png() -> bytes:
    return hostile.wide_png()


def post(client: httpx.Client, data: bytes, name: str = "x.png") -> httpx.Response:
    return client.post("/predict", files={"file": (name, data, "image/png")})


def assert_json_error(resp: httpx.Response, status: int, reason: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["reason"] == reason, body
    assert body["detail"]
    return body


def run_threads(targets: list[Callable[[], object]]) -> list[object]:
    """Run each target in its own thread; their results or exceptions, in order.

    Nothing is asserted inside a thread (under pytest a thread's exception is only a
    warning): the caller asserts on what comes back, in the main thread.
    """
    out: list[object] = [None] * len(targets)

    def call(i: int, target: Callable[[], object]) -> None:
        try:
            out[i] = target()
        except Exception as exc:  # noqa: BLE001 - handed to the main thread
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def no_exceptions(results: list[object]) -> list[Any]:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def metric(url: str, pattern: str) -> bool:
    return re.search(pattern, httpx.get(url + "/metrics", timeout=10).text) is not None


def assert_health_responsive(probe: hostile.HealthProbe) -> None:
    assert not probe.failures, probe.failures[:5]
    assert len(probe.latencies) >= 3
    assert probe.median() < HEALTH_MEDIAN_MS, probe.latencies
    assert probe.worst() < HEALTH_WORST_MS, probe.latencies


# 1. Event loop blocked -------------------------------------------------------------------


def test_jpeg_of_empty_com_markers_is_refused_without_stalling_health(
    hostile_server: ServerProcess, hclient: httpx.Client
) -> None:
    """3.6 MB of empty COM markers: ~5 s of Pillow header parsing, on the loop before."""
    data = hostile.com_marker_jpeg(900_000)
    assert len(data) < int(TEST_LIMITS["IMGCLF_MAX_UPLOAD_BYTES"])
    resp, probe = hostile.while_probing(hostile_server.url, lambda: post(hclient, data, "c.jpg"))
    assert_json_error(resp, 400, "corrupt")
    assert "markers" in resp.json()["detail"]
    assert_health_responsive(probe)


def test_batch_of_ztxt_pngs_does_not_stall_health(
    hostile_server: ServerProcess, hclient: httpx.Client, digit: Image.Image
) -> None:
    """8 PNGs, ~60 kB each, whose zTXt chunks inflate to 60 MB each while being opened."""
    data = hostile.ztxt_png(digit)
    files = [("files", (f"{i}.png", data, "image/png")) for i in range(8)]

    def send() -> httpx.Response:
        return hclient.post("/predict/batch", files=files)

    resp, probe = hostile.while_probing(hostile_server.url, send)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["reason"] for r in results] == ["corrupt"] * 8, results
    assert_health_responsive(probe)


def test_health_answers_while_workers_decode(
    hostile_server: ServerProcess, hclient: httpx.Client, wide_png: bytes
) -> None:
    """Legitimately expensive decodes (40 MP 16-bit) run in the pool, not on the loop."""

    def send_two() -> list[object]:
        return run_threads([lambda: post(hclient, wide_png)] * 2)

    responses, probe = hostile.while_probing(hostile_server.url, send_two)
    responses = no_exceptions(responses)
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert_health_responsive(probe)


# 2. Memory and CPU amplification ---------------------------------------------------------


def test_16bit_huge_png_is_decoded_without_float64_copies(
    hostile_server: ServerProcess, hclient: httpx.Client, wide_png: bytes
) -> None:
    """0.35 MB → 80 MB decoded; the float64 path peaked at ~760 MB, now ~2x the image."""
    pid = hostile_server.pids()
    before = hostile.memory_kib(pid, "VmRSS")
    assert len(wide_png) < MiB
    assert post(hclient, wide_png).status_code == 200
    peak = hostile.memory_kib(pid, "VmHWM")
    assert (peak - before) * 1024 < 300 * MiB, f"peak grew {(peak - before) // 1024} MiB"


def test_decode_budget_counts_bytes_per_pixel_across_the_batch(
    hclient: httpx.Client, wide_png: bytes, digit: Image.Image
) -> None:
    """Each 40 MP 16-bit file is under the pixel limit; three of them are over the budget."""
    small = samples.encode(digit, "PNG")
    files = [("files", (f"{i}.png", data, "image/png"))
             for i, data in enumerate([wide_png, wide_png, small, wide_png])]  # fmt: skip
    resp = hclient.post("/predict/batch", files=files)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["ok"] for r in results] == [True, False, True, False]
    assert [r.get("reason") for r in results] == [None, "too_many_bytes", None, "too_many_bytes"]
    assert results[1]["status"] == 413
    # A 16-bit RGBA-sized single file is refused alone: bytes per pixel count, not pixels.
    rgba = samples.encode(Image.new("RGBA", (6000, 6000), (1, 2, 3, 255)), "PNG")
    assert_json_error(post(hclient, rgba), 413, "too_many_bytes")


# 3. Deadlines and concurrency cap --------------------------------------------------------


def test_slow_body_gets_408_after_the_body_deadline(hostile_server: ServerProcess) -> None:
    """A client trickling 8 bytes every 0.2 s would hold its slot (and memory) forever."""
    status, body, after = hostile.trickle(hostile_server.url, "/predict", seconds=8)
    assert status == 408, body
    assert json.loads(body)["reason"] == "body_timeout"
    assert BODY_TIMEOUT_S - 0.2 < after < BODY_TIMEOUT_S + 3


def test_full_queue_answers_503_overloaded_with_retry_after(
    project: ProjectTree, tmp_path: Path, wide_png: bytes
) -> None:
    """One worker, one queued request: the rest are refused at once instead of piling up."""
    # One client sends all six: its own cap (IMGCLF_CLIENT_MAX_ACTIVE) is off here, this
    # test is about the shared queue (test_edge.py covers the per-client limits).
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS,
           "IMGCLF_WORKERS": "1", "IMGCLF_MAX_QUEUE": "1",
           "IMGCLF_CLIENT_MAX_ACTIVE": "0"}  # fmt: skip
    with uvicorn_server(env, tmp_path / "log") as server:

        def send() -> httpx.Response:
            with httpx.Client(timeout=60) as c:
                return c.post(server.url + "/predict", files={"file": ("w.png", wide_png)})

        responses = no_exceptions(run_threads([send] * 6))
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {200, 503} and codes[200] >= 1 and codes[503] >= 1, codes
        for r in responses:
            if r.status_code == 503:
                assert r.json()["reason"] == "overloaded"
                assert r.headers["retry-after"] == "1"
        metrics = httpx.get(server.url + "/metrics").text
        assert re.search(r'imgclf_rejected_inputs_total\{reason="overloaded"\} [1-9]', metrics)


def test_request_past_its_deadline_gets_503_timeout(
    project: ProjectTree, tmp_path: Path, wide_png: bytes
) -> None:
    """A decode longer than IMGCLF_REQUEST_TIMEOUT_S: 503 timeout, and the server goes on."""
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS, "IMGCLF_WORKERS": "1",
           "IMGCLF_BODY_TIMEOUT_S": "0.2", "IMGCLF_REQUEST_TIMEOUT_S": "0.2"}  # fmt: skip
    with uvicorn_server(env, tmp_path / "log") as server:
        late = httpx.post(server.url + "/predict", files={"file": ("w.png", wide_png)}, timeout=30)
        assert_json_error(late, 503, "timeout")
        assert late.headers["retry-after"] == "1"
        # The abandoned decode finishes and frees its worker: the pool reports no job.
        assert wait_until(lambda: metric(server.url, r"(?m)^imgclf_work_jobs 0\.0$"), 30)
        small = samples.encode(Image.new("L", (8, 8), 0), "PNG")
        ok = httpx.post(server.url + "/predict", files={"file": ("s.png", small)}, timeout=30)
        assert ok.status_code == 200, ok.text


def test_cli_serve_runs_the_edge_idle_sockets_do_not_lock_out(
    project: ProjectTree, tmp_path: Path, digit: Image.Image
) -> None:
    """``imgclf serve`` runs uvicorn behind imgclf.serving.edge (issue 20).

    Before, it passed IMGCLF_MAX_CONNECTIONS to uvicorn's limit_concurrency, which
    counts silent sockets: 2 of them made /health answer 503. Now idle sockets do not
    count, and they are closed at the head deadline (IMGCLF_HEAD_TIMEOUT_S).
    """
    port = free_port()
    env = {**tool_env(ROOT), "IMGCLF_MAX_CONNECTIONS": "2", "IMGCLF_HEAD_TIMEOUT_S": "1"}
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgclf.cli", "serve", "--port", str(port),
             "--model-dir", str(project.model_dir), "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(ready, 60, every=0.1), (tmp_path / "serve.log").read_text()
        idle = [hostile.connect(url) for _ in range(5)]
        try:
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            png = samples.encode(digit, "PNG")
            answer = httpx.post(url + "/predict", files={"file": ("a.png", png)}, timeout=30)
            assert answer.status_code == 200, answer.text
            # The server closes them (EOF) at the 1 s head deadline.
            for sock in idle:
                sock.settimeout(10)
                start = time.monotonic()
                assert sock.recv(1) == b""
                assert time.monotonic() - start < 5
        finally:
            for sock in idle:
                sock.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_request_cap_refuses_the_excess_and_spares_probes(
    project: ProjectTree, tmp_path: Path, digit: Image.Image
) -> None:
    """IMGCLF_MAX_CONNECTIONS requests in progress: the next one is refused (JSON 503),
    probes and /metrics still answer (the request cap lives in the app: it holds however
    the app is started)."""
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **HOSTILE_ENV,
           "IMGCLF_MAX_CONNECTIONS": "2", "IMGCLF_BODY_TIMEOUT_S": "6",
           "IMGCLF_REQUEST_TIMEOUT_S": "20"}  # fmt: skip
    png = samples.encode(digit, "PNG")
    with uvicorn_server(env, tmp_path / "log") as server:
        slow = [threading.Thread(target=hostile.trickle, args=(server.url, "/predict", 10))
                for _ in range(2)]  # fmt: skip
        for t in slow:
            t.start()
        extra: list[httpx.Response] = []

        def refused() -> bool:  # until both slow uploads are inside the app
            extra.append(httpx.post(server.url + "/predict", files={"file": ("a.png", png)}))
            return extra[-1].status_code == 503

        assert wait_until(refused, 5, every=0.1), [r.text for r in extra]
        assert_json_error(extra[-1], 503, "overloaded")
        assert extra[-1].headers["retry-after"] == "1"
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(server.url + path).status_code == 200, path
        for t in slow:
            t.join()
        again = httpx.post(server.url + "/predict",
                           files={"file": ("a.png", samples.encode(digit, "PNG"))})  # fmt: skip
        assert again.status_code == 200, again.text


# 4. Format allow-list bypass -------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"], ids=["png", "jpeg"])
def test_pcd_impostor_with_png_or_jpeg_magic_is_refused(
    hclient: httpx.Client, magic: bytes
) -> None:
    """Pillow's fallback decoded these as PCD and the API classified them."""
    assert_json_error(post(hclient, hostile.pcd_impostor(magic)), 415, "not_an_image")


def test_cli_predict_refuses_the_impostors(project: ProjectTree, tmp_path: Path) -> None:
    paths = []
    for name, magic in (("a.png", b"\x89PNG\r\n\x1a\n"), ("b.jpg", b"\xff\xd8\xff")):
        (tmp_path / name).write_bytes(hostile.pcd_impostor(magic))
        paths.append(str(tmp_path / name))
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "predict", "--model-dir", str(project.model_dir),
         *paths],
        env=tool_env(ROOT), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("is not a valid one") == 2, proc.stderr


# 5. 500s ---------------------------------------------------------------------------------


def test_boundary_longer_than_256_bytes_is_a_json_400(hclient: httpx.Client) -> None:
    boundary = "b" * 300
    body = hostile.multipart("file", [("a.png", b"\x89PNG\r\n\x1a\n")], boundary)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = hclient.post("/predict", content=body, headers=headers)
    body_json = assert_json_error(resp, 400, "malformed_request")
    assert "boundary" in body_json["detail"]


def test_client_disconnect_is_counted_as_499_not_500(
    hostile_server: ServerProcess, hclient: httpx.Client
) -> None:
    for path in ("/predict", "/predict/batch"):
        hostile.hang_up(hostile_server.url, path)
    gone = r'imgclf_client_disconnects_total\{endpoint="/predict/batch"\} [1-9]'
    assert wait_until(lambda: metric(hostile_server.url, gone), 10)
    metrics = hclient.get("/metrics").text
    assert re.search(r'imgclf_http_requests_total\{endpoint="/predict",method="POST",'
                     r'status="499"\} [1-9]', metrics), metrics  # fmt: skip
    assert 'status="500"' not in metrics
    assert re.search(r'imgclf_client_disconnects_total\{endpoint="/predict/batch"\} [1-9]', metrics)
    log = hostile_server.log_tail(1_000_000)
    assert log.count("client disconnected during POST /predict") >= 2, log
    assert "Traceback" not in log


# 6. Leaks --------------------------------------------------------------------------------


def test_ready_503_names_no_server_path(tmp_path: Path) -> None:
    missing = tmp_path / "deep" / "secret-layout" / "models"
    env = {"IMGCLF_MODEL_DIR": str(missing)}
    with uvicorn_server(env, tmp_path / "log", wait_path="/health") as server:
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "not_ready"
        assert "model.onnx" in ready.json()["detail"]
        for resp in (ready, httpx.get(server.url + "/model"),
                     httpx.post(server.url + "/predict", files={"file": ("a", b"x")})):  # fmt: skip
            assert "secret-layout" not in resp.text and str(tmp_path) not in resp.text
        # The operator still finds the full path in the log.
        assert "secret-layout" in server.log_tail()


def test_model_file_not_matching_the_card_is_refused(project: ProjectTree, tmp_path: Path) -> None:
    """A card whose model_sha256 differs from model.onnx: not ready, with the reason."""
    model_dir = tmp_path / "models"
    shutil.copytree(project.model_dir, model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    card["model_sha256"] = "0" * 64
    (model_dir / "model.json").write_text(json.dumps(card))
    with uvicorn_server({"IMGCLF_MODEL_DIR": str(model_dir)}, tmp_path / "log",
                        wait_path="/health") as server:  # fmt: skip
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503, ready.text
        detail = ready.json()["detail"]
        assert "does not match" in detail and "000000000000" in detail, detail
        assert str(tmp_path) not in detail


# Everything at once ----------------------------------------------------------------------

# The server's peak resident memory under the mixed load below. With 2 workers and the
# default 128 MiB decode budget the decode peak is ~2 x 2 x 128 MiB over ~150 MiB at rest.
LOAD_RSS_BOUND = 700 * MiB
# With several server processes (IMGCLF_PROCESSES) the threads and budgets are divided
# among them, but each holds the app and the model at rest: the bound grows by that.
REST_RSS = 200 * MiB
HEALTH_P99_MS = 250


@pytest.mark.slow
def test_mixed_hostile_load_keeps_normal_requests_and_health_answered(
    project: ProjectTree, tmp_path: Path, digit: Image.Image, wide_png: bytes
) -> None:
    """Slow bodies, huge 16-bit images, marker bombs and garbage alongside normal requests.

    No 5xx other than 503 ``overloaded``; every normal request answered (200, or
    503 overloaded with Retry-After); /health p99 under 50 ms; server RSS bounded.
    """
    # All clients share one address: the per-client cap is off (test_edge.py covers it).
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **HOSTILE_ENV,
           "IMGCLF_MAX_QUEUE": "4", "IMGCLF_CLIENT_MAX_ACTIVE": "0"}  # fmt: skip
    normal = samples.encode(digit, "PNG")
    bad = [hostile.com_marker_jpeg(200_000), hostile.pcd_impostor(b"\x89PNG\r\n\x1a\n"),
           b"garbage" * 1000, hostile.ztxt_png(digit, 20)]  # fmt: skip
    statuses: dict[str, Counter[tuple[int, str]]] = {
        k: Counter() for k in ("normal", "wide", "bad", "slow")
    }
    stop = threading.Event()
    # What the client threads saw, asserted in the main thread: a 5xx without JSON, a 503
    # without Retry-After or a client error lands here instead of in a lost thread warning.
    problems: list[str] = []

    def hammer(kind: str, payloads: list[bytes]) -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post(
                        server.url + "/predict", files={"file": ("f", payloads[i % len(payloads)])}
                    )
                    reason = r.json().get("reason", "") if r.status_code != 200 else ""
                except Exception as exc:  # noqa: BLE001 - non-JSON answer or transport error
                    problems.append(f"{kind}: {exc!r}")
                    continue
                if r.status_code == 503 and r.headers.get("retry-after") != "1":
                    problems.append(f"{kind}: 503 without Retry-After: {r.headers}")
                statuses[kind][(r.status_code, reason)] += 1
                i += 1

    def slow() -> None:
        while not stop.is_set():
            try:
                status, body, _ = hostile.trickle(server.url, "/predict", seconds=4)
                statuses["slow"][(status, json.loads(body).get("reason", ""))] += 1
            except Exception as exc:  # noqa: BLE001
                problems.append(f"slow: {exc!r}")

    with uvicorn_server(env, tmp_path / "log") as server:
        pid = server.pids()
        # What this (shared) machine gives an idle server, to tell our delay from its own.
        baseline = hostile.probe_in_process(server.url, seconds=2)
        idle = json.loads(baseline.communicate(timeout=30)[0])
        threads = [threading.Thread(target=hammer, args=("normal", [normal])) for _ in range(2)]
        # Two 16-bit clients keep both workers decoding non-stop; more would only add
        # client-side CPU on this 2-core machine, not server load.
        threads += [threading.Thread(target=hammer, args=("wide", [wide_png])) for _ in range(2)]
        threads += [threading.Thread(target=hammer, args=("bad", bad))]
        threads += [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
        probe = hostile.probe_in_process(server.url, seconds=8, every=0.01)
        loaded = json.loads(probe.communicate(timeout=60)[0])
        stop.set()
        for t in threads:
            t.join(30)
        peak = hostile.memory_kib(pid, "VmHWM") * 1024
        log = server.log_tail(1_000_000)
    assert not problems, problems[:5]
    assert not [t for t in threads if t.is_alive()], "client threads did not stop"
    everything = sum(statuses.values(), Counter())
    server_errors = {
        k: v for k, v in everything.items() if k[0] >= 500 and k != (503, "overloaded")
    }
    assert not server_errors, statuses
    assert set(statuses["normal"]) <= {(200, ""), (503, "overloaded")}, statuses
    # Work is first come, first served: normal requests wait behind ~1 s decodes of the
    # 16-bit images, but they are answered, correctly, and never refused with an error.
    assert statuses["normal"][(200, "")] >= 4, statuses
    assert statuses["wide"][(200, "")] >= 1, statuses
    assert set(statuses["slow"]) == {(408, "body_timeout")}, statuses
    assert all(400 <= code < 500 for code, _ in statuses["bad"]), statuses
    assert not loaded["failures"], loaded["failures"][:5]
    p99 = float(np.percentile(loaded["latencies"], 99))
    idle_p99 = float(np.percentile(idle["latencies"], 99))
    print(f"mixed load: /health p99 {p99:.1f} ms (idle {idle_p99:.1f} ms), "
          f"peak RSS {peak // MiB} MiB, {dict(statuses)}")  # fmt: skip
    # A behaviour guard, not a benchmark: /health must not queue behind decodes (before the
    # work pool it took seconds; a 16-bit decode here takes ~1 s). 250 ms over what the same
    # machine gives an idle server leaves room for a busy shared machine (58 ms seen) and
    # still fails at once if probes wait for the work pool.
    assert p99 < HEALTH_P99_MS + max(0.0, idle_p99 - 5), (
        f"/health p99 {p99:.1f} (idle {idle_p99:.1f}) ms"
    )
    bound = LOAD_RSS_BOUND + (len(pid) - 1) * REST_RSS
    assert peak < bound, f"peak RSS {peak // MiB} MiB (bound {bound // MiB} MiB)"
    assert "Traceback" not in log
