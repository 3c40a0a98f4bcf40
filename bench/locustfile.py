"""Locust load test for the API: single and batch predictions, plus the cheap endpoints.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 1m

IMGCLF_BENCH_IMAGE picks the uploaded image (default: a digits PNG from
data/raw/digits); IMGCLF_BENCH_BATCH the files per batch request (default 8).
Every prediction must be a 200 with a label, or Locust counts a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

from locust import FastHttpUser, between, task

ROOT = Path(__file__).resolve().parents[1]


def _image() -> tuple[str, bytes]:
    chosen = os.environ.get("IMGCLF_BENCH_IMAGE")
    path = Path(chosen) if chosen else next(iter(sorted(ROOT.glob("data/raw/digits/*/*.png"))))
    return path.name, path.read_bytes()


NAME, IMAGE = _image()
BATCH = int(os.environ.get("IMGCLF_BENCH_BATCH", "8"))


class ApiUser(FastHttpUser):
    """A client that mostly classifies single images, sometimes a batch."""

    wait_time = between(0.0, 0.01)

    @task(10)
    def predict(self) -> None:
        with self.client.post(
            "/predict", files={"file": (NAME, IMAGE, "image/png")}, catch_response=True
        ) as resp:
            if resp.status_code != 200 or "label" not in (resp.json() or {}):
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(2)
    def predict_batch(self) -> None:
        files = [("files", (f"{i}-{NAME}", IMAGE, "image/png")) for i in range(BATCH)]
        with self.client.post("/predict/batch", files=files, catch_response=True) as resp:
            results = (resp.json() or {}).get("results", []) if resp.status_code == 200 else []
            if len(results) != BATCH or not all(r["ok"] for r in results):
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(1)
    def ready(self) -> None:
        self.client.get("/ready")
