"""Serving configuration, read once from ``IMGCLF_*`` environment variables.

Environment variables (not a config file) because that is how a container is
configured; every value is validated at startup so a typo fails loudly with the
variable's name instead of surfacing as a 500 on the first request.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

MiB = 1024 * 1024
# IMGCLF_OOD values (imgclf.ood.detector.MODES, repeated here so settings import nothing heavy).
OOD_MODES = ("flag", "refuse", "off")
# Which onnxruntime session answers (imgclf.artifact.agreement, docs/serving-speed.md).
SESSION_KINDS = ("fast", "portable")


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
    # Decoded bytes per request, summed over the files of a batch and counting bytes per
    # pixel (an RGB/RGBA pixel takes 4, 16-bit gray 2, 8-bit gray 1): 128 MiB lets one
    # 8-bit image reach max_pixels, refuses a 40 MP RGBA or 16-bit RGB one.
    max_decode_bytes: int = 128 * MiB
    max_batch: int = 32
    cors_origins: tuple[str, ...] = ()
    # onnxruntime intra-op threads per inference; requests already run concurrently.
    threads: int = 1
    # Decode + inference run in this many worker threads (0: one per CPU core, plus one) …
    workers: int = 0
    # … and at most this many more requests wait for one; past that: 503 "overloaded".
    max_queue: int = 64
    # Server processes behind the one port (imgclf.serving.processes): N workers fed by a
    # dispatcher that hands each connection to the least busy one, every budget here
    # divided among them; 0: one per CPU of the container's quota (Linux; elsewhere 1).
    processes: int = 0
    # Requests whose images are decoded at the same time share one model call of at most
    # this many images (imgclf.serving.coalesce; 1: one call per request).
    coalesce_images: int = 8
    # Open connections uvicorn accepts (``imgclf serve``); past it: 503 from uvicorn.
    max_connections: int = 256
    # Seconds to receive the whole request body (a slow or stalled client: 408) …
    body_timeout_s: float = 30.0
    # … and for the whole request, queue and decode included (503 "timeout").
    request_timeout_s: float = 60.0
    # Seconds an idle keep-alive connection is kept open (uvicorn's default is 5).
    keep_alive_s: float = 5.0
    # The edge (imgclf.serving.edge, docs/serving-edge.md): seconds from accept (or from
    # the end of the idle time after a response) to receive a complete request head …
    head_timeout_s: float = 5.0
    # … request line + headers at most this many bytes (431, connection closed) …
    max_head_bytes: int = 32 * 1024
    # … and at most this many open sockets (past it a new one is closed at once).
    max_open_connections: int = 2048
    # Request bodies held in memory at once, all connections together (503 past it).
    max_body_bytes_in_flight: int = 128 * MiB
    # Per client address (imgclf.serving.admission): a token bucket of this many requests
    # per second (0: off) and this burst (0: twice the rate) …
    client_rate: float = 0.0
    client_burst: int = 0
    # … and at most this many requests in progress (None: half of workers + queue; 0: off).
    client_max_active: int | None = None
    # Peers whose X-Forwarded-For is believed (IP addresses or CIDR networks).
    trusted_proxies: tuple[str, ...] = ()
    metrics_file: Path | None = None
    git_revision: str | None = None
    # Out-of-distribution flag (imgclf.ood.detector): ``flag`` answers with in_distribution/
    # ood_score/ood_reasons, ``refuse`` answers 422 out_of_distribution, ``off`` skips it.
    ood: str = "flag"
    # ``fast``: the fastest session, checked against evaluate's golden batch at start (falls
    # back to ``portable`` if it disagrees); ``portable``: exactly the session evaluate used.
    session: str = "fast"
    # Monitoring (imgclf.monitoring.recorder): the SQLite file every served prediction is
    # recorded in (None: off), bounded to this many newest rows …
    monitor_db: Path | None = None
    monitor_max_rows: int = 1_000_000
    # … and opt-in samples of the uploads themselves: a fraction of them, up to a byte cap.
    sample_dir: Path | None = None
    sample_rate: float = 0.01
    sample_max_bytes: int = 1024 * MiB
    # The registry version and stage the image was built for (docs/releases.md), shown by
    # GET /model so the live check can compare them with the registry.
    model_version: str | None = None
    model_stage: str | None = None
    # Fleet shipping (imgclf.monitoring.shipping): records go to shards uploaded to this URL
    # (gs://BUCKET/PREFIX or a folder) instead of monitor_db; a shard closes after
    # monitor_shard_s seconds (the crash bound) or monitor_shard_rows rows; at shutdown
    # the open one is closed and everything waiting uploaded within monitor_drain_s.
    monitor_url: str | None = None
    monitor_spool: Path | None = None
    monitor_shard_s: float = 300.0
    monitor_shard_rows: int = 100_000
    monitor_replica: str | None = None
    monitor_drain_s: float = 8.0
    # Closed shards waiting in the spool (the bucket unreachable): past this many bytes the
    # oldest are dropped and counted, so a replica whose spool is memory (Cloud Run) is not
    # killed for want of a bucket.
    monitor_spool_max_bytes: int = 256 * 2**20

    @property
    def evaluation_file(self) -> Path:
        """Where the evaluate stage's metrics are: next to the model (image) or in metrics/."""
        if self.metrics_file is not None:
            return self.metrics_file
        beside = self.model_dir / "evaluate.json"
        return beside if beside.is_file() else self.model_dir.parent / "metrics" / "evaluate.json"

    @property
    def worker_threads(self) -> int:
        """Decode/inference threads: ``workers``, or one per core this process may use (the
        container's CPU quota included, :func:`usable_cores`) plus one. The extra thread
        decodes while the others run model calls that requests share
        (imgclf.serving.coalesce): on 2 cores, 3 threads served 6–11 % more than 2 across
        mobilenet/resnet18 and small/large photos (docs/serving-speed.md)."""
        if self.workers:
            return self.workers
        return usable_cores() + 1

    @property
    def server_processes(self) -> int:
        """Server processes: ``processes``, or one per core this process may use (0), the
        container's CPU quota included (:func:`usable_cores`). Only on Linux: the workers
        are forked from a parent that has imported the app, which macOS does not allow
        safely, and Windows cannot pass sockets this way."""
        if self.processes:
            return self.processes
        return usable_cores() if sys.platform.startswith("linux") else 1

    @property
    def client_active_limit(self) -> int:
        """Requests in progress per client (0: no limit): by default half the work slots,
        so one client alone keeps every worker busy but cannot fill the whole queue."""
        if self.client_max_active is not None:
            return self.client_max_active
        return max(1, -(-(self.worker_threads + self.max_queue) // 2))

    @property
    def client_burst_size(self) -> float:
        """Token bucket size: ``client_burst``, or two seconds' worth of ``client_rate``."""
        return float(self.client_burst) if self.client_burst else max(1.0, 2 * self.client_rate)

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

        def parse_float(name: str, what: str) -> float | None:
            """``name`` as a float; None when unset or empty (the default applies)."""
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return None
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number{what}") from None

        def number(name: str, default: float, what: str, zero_ok: bool) -> float:
            """A finite float from ``name``: > 0, or >= 0 where 0 means off."""
            value = parse_float(name, f" {what}")
            if value is None:
                return default
            if value == float("inf") or not (value >= 0 if zero_ok else value > 0):
                need = ">= 0 (0: off)" if zero_ok else f"a positive number {what}"
                raise SettingsError(f"{name}={value} must be {need}")
            return value

        def seconds(name: str, default: float) -> float:
            return number(name, default, "of seconds", zero_ok=False)

        def rate(name: str, default: float) -> float:
            return number(name, default, "per second", zero_ok=True)

        raw_active = (env.get("IMGCLF_CLIENT_MAX_ACTIVE") or "").strip()
        client_max_active = (
            integer("IMGCLF_CLIENT_MAX_ACTIVE", 0, minimum=0) if raw_active else None
        )
        proxies = tuple(
            p.strip() for p in env.get("IMGCLF_TRUSTED_PROXIES", "").split(",") if p.strip()
        )
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"IMGCLF_TRUSTED_PROXIES: {proxy!r} is not an IP address or network"
                ) from None

        ood = (env.get("IMGCLF_OOD") or d.ood).strip().lower()
        if ood not in OOD_MODES:
            raise SettingsError(
                f"IMGCLF_OOD={env.get('IMGCLF_OOD')!r} is not one of {', '.join(OOD_MODES)}"
            )

        session = (env.get("IMGCLF_SESSION") or d.session).strip().lower()
        if session not in SESSION_KINDS:
            raise SettingsError(
                f"IMGCLF_SESSION={env.get('IMGCLF_SESSION')!r} is not one of "
                f"{', '.join(SESSION_KINDS)}"
            )

        def fraction(name: str, default: float) -> float:
            value = parse_float(name, "")
            if value is None:
                return default
            if not 0 < value <= 1:
                raise SettingsError(f"{name}={value} must be a fraction in (0, 1], e.g. 0.01")
            return value

        cors = env.get("IMGCLF_CORS_ORIGINS", "")
        origins = tuple(o.strip() for o in cors.split(",") if o.strip())
        metrics = env.get("IMGCLF_METRICS_FILE")
        settings = cls(
            model_dir=Path(env.get("IMGCLF_MODEL_DIR") or d.model_dir),
            max_upload_bytes=integer("IMGCLF_MAX_UPLOAD_BYTES", d.max_upload_bytes),
            max_request_bytes=integer("IMGCLF_MAX_REQUEST_BYTES", d.max_request_bytes),
            max_pixels=integer("IMGCLF_MAX_PIXELS", d.max_pixels),
            max_decode_bytes=integer("IMGCLF_MAX_DECODE_BYTES", d.max_decode_bytes),
            max_batch=integer("IMGCLF_MAX_BATCH", d.max_batch),
            cors_origins=origins,
            threads=integer("IMGCLF_THREADS", d.threads),
            workers=integer("IMGCLF_WORKERS", d.workers, minimum=0),
            max_queue=integer("IMGCLF_MAX_QUEUE", d.max_queue, minimum=0),
            processes=integer("IMGCLF_PROCESSES", d.processes, minimum=0),
            coalesce_images=integer("IMGCLF_COALESCE_IMAGES", d.coalesce_images),
            max_connections=integer("IMGCLF_MAX_CONNECTIONS", d.max_connections),
            body_timeout_s=seconds("IMGCLF_BODY_TIMEOUT_S", d.body_timeout_s),
            request_timeout_s=seconds("IMGCLF_REQUEST_TIMEOUT_S", d.request_timeout_s),
            keep_alive_s=seconds("IMGCLF_KEEP_ALIVE_S", d.keep_alive_s),
            head_timeout_s=seconds("IMGCLF_HEAD_TIMEOUT_S", d.head_timeout_s),
            max_head_bytes=integer("IMGCLF_MAX_HEAD_BYTES", d.max_head_bytes, minimum=1024),
            max_open_connections=integer("IMGCLF_MAX_OPEN_CONNECTIONS", d.max_open_connections),
            max_body_bytes_in_flight=integer(
                "IMGCLF_MAX_BODY_BYTES_IN_FLIGHT", d.max_body_bytes_in_flight
            ),
            client_rate=rate("IMGCLF_CLIENT_RATE", d.client_rate),
            client_burst=integer("IMGCLF_CLIENT_BURST", d.client_burst, minimum=0),
            client_max_active=client_max_active,
            trusted_proxies=proxies,
            metrics_file=Path(metrics) if metrics else None,
            git_revision=env.get("IMGCLF_GIT_REVISION") or None,
            ood=ood,
            session=session,
            monitor_db=_path(env, "IMGCLF_MONITOR_DB"),
            monitor_max_rows=integer("IMGCLF_MONITOR_MAX_ROWS", d.monitor_max_rows),
            sample_dir=_path(env, "IMGCLF_SAMPLE_DIR"),
            sample_rate=fraction("IMGCLF_SAMPLE_RATE", d.sample_rate),
            sample_max_bytes=integer("IMGCLF_SAMPLE_MAX_BYTES", d.sample_max_bytes),
            model_version=(env.get("IMGCLF_MODEL_VERSION") or "").strip() or None,
            model_stage=(env.get("IMGCLF_MODEL_STAGE") or "").strip() or None,
            monitor_url=(env.get("IMGCLF_MONITOR_URL") or "").strip() or None,
            monitor_spool=_path(env, "IMGCLF_MONITOR_SPOOL"),
            monitor_shard_s=seconds("IMGCLF_MONITOR_SHARD_S", d.monitor_shard_s),
            monitor_shard_rows=integer("IMGCLF_MONITOR_SHARD_ROWS", d.monitor_shard_rows),
            monitor_replica=(env.get("IMGCLF_MONITOR_REPLICA") or "").strip() or None,
            monitor_drain_s=seconds("IMGCLF_MONITOR_DRAIN_S", d.monitor_drain_s),
            monitor_spool_max_bytes=integer(
                "IMGCLF_MONITOR_SPOOL_MAX_BYTES", d.monitor_spool_max_bytes
            ),
        )
        _check_shipping(settings)
        _check_monitoring(settings, env)
        if settings.max_request_bytes < settings.max_upload_bytes:
            raise SettingsError(
                f"IMGCLF_MAX_REQUEST_BYTES={settings.max_request_bytes} is smaller than "
                f"IMGCLF_MAX_UPLOAD_BYTES={settings.max_upload_bytes}"
            )
        if settings.max_body_bytes_in_flight < settings.max_request_bytes:
            raise SettingsError(
                f"IMGCLF_MAX_BODY_BYTES_IN_FLIGHT={settings.max_body_bytes_in_flight} is smaller "
                f"than IMGCLF_MAX_REQUEST_BYTES={settings.max_request_bytes}: no request could fit"
            )
        if settings.request_timeout_s < settings.body_timeout_s:
            raise SettingsError(
                f"IMGCLF_REQUEST_TIMEOUT_S={settings.request_timeout_s} is shorter than "
                f"IMGCLF_BODY_TIMEOUT_S={settings.body_timeout_s}"
            )
        return settings


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota.

    Why the quota: a container limited to 2 CPUs (``--cpus 2``, Cloud Run's vCPUs) on a
    64-core host sees 64 CPUs in its affinity; one server process per CPU would then load
    the model 64 times for 2 CPUs' worth of time.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup)
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_cpus(root: Path) -> int | None:
    """The cgroup's CPU quota in whole CPUs (rounded up), None when there is none."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: -1 when unlimited
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, -(-quota_us // period_us)) if quota_us > 0 and period_us > 0 else None


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    return Path(raw) if raw else None


def _check_monitoring(settings: Settings, env: Mapping[str, str]) -> None:
    """Sampling settings only make sense together: say which one is missing."""
    if settings.sample_dir is not None and settings.monitor_db is None and not settings.monitor_url:
        raise SettingsError(
            "IMGCLF_SAMPLE_DIR is set but IMGCLF_MONITOR_DB is not: samples are listed in the "
            "monitoring database (imgclf collect reads it), so set both"
        )
    for name in ("IMGCLF_SAMPLE_RATE", "IMGCLF_SAMPLE_MAX_BYTES"):
        if (env.get(name) or "").strip() and settings.sample_dir is None:
            raise SettingsError(f"{name} is set but IMGCLF_SAMPLE_DIR is not: no sample is kept")
    if settings.monitor_db is not None and settings.monitor_db.is_dir():
        raise SettingsError(
            f"IMGCLF_MONITOR_DB={settings.monitor_db} is a directory; give a file path, "
            "e.g. /var/lib/imgclf/monitor.db"
        )


SHIP_SCHEMES = ("gs://", "file://")
MAX_SHARD_S = 86_400  # imgclf.monitoring.shards.MAX_SHARD_S (readers list one day back)


def _check_shipping(settings: Settings) -> None:
    """The shipping URL's scheme and the shard interval's cap, with the variable's name."""
    url = settings.monitor_url
    if url and "://" in url and not url.startswith(SHIP_SCHEMES):
        raise SettingsError(
            f"IMGCLF_MONITOR_URL={url!r}: use gs://BUCKET/PREFIX, file:///PATH or a folder path"
        )
    if url == "gs://" or (url or "").startswith("gs:///"):
        raise SettingsError(f"IMGCLF_MONITOR_URL={url!r} names no bucket: gs://BUCKET/PREFIX")
    if settings.monitor_shard_s > MAX_SHARD_S:
        raise SettingsError(
            f"IMGCLF_MONITOR_SHARD_S={settings.monitor_shard_s} is over a day ({MAX_SHARD_S})"
        )
    if settings.monitor_spool is not None and settings.monitor_spool.is_file():
        raise SettingsError(f"IMGCLF_MONITOR_SPOOL={settings.monitor_spool} is a file, not a dir")
