"""Serving configuration, read once from ``IMGCLF_*`` environment variables.

Environment variables (not a config file) because that is how a container is
configured; every value is validated at startup so a typo fails loudly with the
variable's name instead of surfacing as a 500 on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

MiB = 1024 * 1024


class SettingsError(ValueError):
    """An ``IMGCLF_*`` variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything the API can be told; defaults suit the digits model on a small CPU."""

    model_dir: Path = Path("models")
    # Per uploaded file, and for the whole body of one request (a batch).
    max_upload_bytes: int = 10 * MiB
    max_request_bytes: int = 32 * MiB
    # Decoded size guard (decompression bombs): checked from the header, before decoding.
    max_pixels: int = 40_000_000
    max_batch: int = 32
    cors_origins: tuple[str, ...] = ()
    # onnxruntime intra-op threads per inference; requests already run concurrently.
    threads: int = 1
    metrics_file: Path | None = None
    git_revision: str | None = None

    @property
    def evaluation_file(self) -> Path:
        """Where the evaluate stage's metrics are: next to the model (image) or in metrics/."""
        if self.metrics_file is not None:
            return self.metrics_file
        beside = self.model_dir / "evaluate.json"
        return beside if beside.is_file() else self.model_dir.parent / "metrics" / "evaluate.json"

    def with_model_dir(self, model_dir: Path | str) -> Settings:
        return replace(self, model_dir=Path(model_dir))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build from ``IMGCLF_*`` variables; unknown ones are ignored, bad ones raise."""
        env = os.environ if env is None else env
        d = cls()

        def integer(name: str, default: int, minimum: int = 1) -> int:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise SettingsError(f"{name}={value} must be >= {minimum}")
            return value

        cors = env.get("IMGCLF_CORS_ORIGINS", "")
        origins = tuple(o.strip() for o in cors.split(",") if o.strip())
        metrics = env.get("IMGCLF_METRICS_FILE")
        settings = cls(
            model_dir=Path(env.get("IMGCLF_MODEL_DIR") or d.model_dir),
            max_upload_bytes=integer("IMGCLF_MAX_UPLOAD_BYTES", d.max_upload_bytes),
            max_request_bytes=integer("IMGCLF_MAX_REQUEST_BYTES", d.max_request_bytes),
            max_pixels=integer("IMGCLF_MAX_PIXELS", d.max_pixels),
            max_batch=integer("IMGCLF_MAX_BATCH", d.max_batch),
            cors_origins=origins,
            threads=integer("IMGCLF_THREADS", d.threads),
            metrics_file=Path(metrics) if metrics else None,
            git_revision=env.get("IMGCLF_GIT_REVISION") or None,
        )
        if settings.max_request_bytes < settings.max_upload_bytes:
            raise SettingsError(
                f"IMGCLF_MAX_REQUEST_BYTES={settings.max_request_bytes} is smaller than "
                f"IMGCLF_MAX_UPLOAD_BYTES={settings.max_upload_bytes}"
            )
        return settings
