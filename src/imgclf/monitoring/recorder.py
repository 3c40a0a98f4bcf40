"""Record what the API serves: features, prediction, confidence — in SQLite, off the request path.

The API's worker thread, right after it classified a request, notes each upload's size
and format (from the image object the decode already opened, see :class:`SourceBudget`),
draws the optional sample, and queues references to the pixels, probabilities and
embedding it already holds — a few microseconds, never on the event loop. One writer
thread per process wakes about once a second, computes the :mod:`imgclf.data.features`
features of everything queued in one vectorised pass (per-image numpy calls cost more
than the digits model's inference), and writes them in one SQLite transaction. When the
queue is full (the disk is stuck), records are dropped and counted in ``/metrics``
(``imgclf_monitor_dropped``), never the request.

Several processes (``uvicorn --workers N``, or replicas on a shared volume of a
filesystem with working locks) share one file: WAL journal, a busy timeout, and each
writer's batch is one short ``BEGIN IMMEDIATE`` transaction. The file is bounded like
a ring buffer: past ``IMGCLF_MONITOR_MAX_ROWS`` the oldest rows are deleted as new ones
arrive (SQLite reuses the freed pages, so the file stops growing).

Samples (``IMGCLF_SAMPLE_DIR``, ``IMGCLF_SAMPLE_RATE``, ``IMGCLF_SAMPLE_MAX_BYTES``) are
the only place an image is ever written; the byte cap is kept in the database itself,
inside the writer's transaction, so it holds across processes. Samples are never
rotated away: ``imgclf collect`` turns them into training data.

With ``IMGCLF_MONITOR_URL`` (autoscaled replicas, Cloud Run) the writer writes into
short-lived shards that :mod:`imgclf.monitoring.shipping` uploads to a bucket instead of
one local file; the ring buffer is then not needed (a shard is bounded by time and rows).

Only the standard library and numpy: the serving image stays lean.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from imgclf.data.features import feature_matrix, reduce_embedding, source_info
from imgclf.data.preprocessing import SOURCE_SIZE, DecodeBudget
from imgclf.monitoring.shipping import ShardSpool, ShipConfig
from imgclf.monitoring.store import connect

log = logging.getLogger("imgclf.monitoring.recorder")

FLUSH_S = 1.0  # how often the writer wakes up and commits what the workers queued
BATCH_ROWS = 5000  # images per transaction at most
# Pixels (and sample bytes) waiting for the writer; past it records are dropped (counted).
QUEUE_BYTES = 64 * 1024 * 1024
SAMPLE_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
                 "TIFF": ".tif"}  # fmt: skip


@dataclass(frozen=True)
class MonitorConfig:
    """Where and how much to record (from ``IMGCLF_MONITOR_*`` / ``IMGCLF_SAMPLE_*``)."""

    db: Path | None
    max_rows: int = 1_000_000
    sample_dir: Path | None = None
    sample_rate: float = 0.0
    sample_max_bytes: int = 1024**3
    # Shards shipped to a bucket or folder instead of ``db`` (imgclf.monitoring.shipping).
    ship: ShipConfig | None = None


class SourceBudget(DecodeBudget):
    """The request's decode budget, which also notes each image it is charged for.

    :func:`imgclf.data.preprocessing.open_image` charges the budget with the opened image,
    then decodes and EXIF-rotates that same object in place; so after ``preprocess``
    returns, the noted image says the upload's size (as ``prepare`` records it, rotation
    applied) and format without opening the file a second time.
    """

    def __init__(self, left: int) -> None:
        super().__init__(left)
        self.last: Image.Image | None = None

    def take(self, img: Image.Image) -> None:
        super().take(img)
        self.last = img


class Upload(NamedTuple):
    """What is recorded about one accepted upload besides its pixels."""

    width: int
    height: int
    format: str
    sample: bytes | None  # the bytes, only when drawn for sampling


class Pending:
    """One request's worth of records, as queued by a worker thread (cheap to build)."""

    __slots__ = ("classes", "embedding", "pixels", "probs", "size", "ts", "uploads", "version")

    def __init__(
        self,
        version: str,
        classes: list[str],
        uploads: list[Upload],
        pixels: np.ndarray,
        probs: np.ndarray,
        embedding: np.ndarray | None,
    ) -> None:
        self.ts = time.time()
        self.version, self.classes, self.uploads = version, classes, uploads
        self.pixels, self.probs, self.embedding = pixels, probs, embedding
        # Bytes held in memory while it waits: pixels, and sampled uploads.
        self.size = pixels.nbytes
        for u in uploads:
            if u.sample is not None:
                self.size += len(u.sample)


class Monitor:
    """Per-process recorder: :meth:`observe` in worker threads, one writer thread.

    A worker thread does only what must happen while the request's data is at hand
    (note the upload's size, draw the sample, queue references to the arrays it already
    has: a few microseconds); the writer computes the features of everything queued in
    one vectorised pass, about once a second, and writes them in one transaction.
    """

    def __init__(self, config: MonitorConfig, telemetry: Any | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        # Workers append under the lock; the writer takes the whole list once a second.
        # (A queue.Queue would wake the writer at every request: a context switch each.)
        self._pending: list[Pending] = []
        self._queued_bytes = 0  # pixels and samples waiting; bounded by QUEUE_BYTES
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._feature_sets: dict[str, int] = {}
        self._random = random.Random()
        if config.sample_dir is not None:
            config.sample_dir.mkdir(parents=True, exist_ok=True)
        self._spool: ShardSpool | None = None
        self._conn: Any = None  # the database, or (when shipping) the open shard
        if config.ship is not None:
            self._spool = ShardSpool(config.ship, config.sample_dir, self._count)
            where = f"shards for {config.ship.url}"
        elif config.db is not None:
            self._conn = connect(config.db)  # fails at startup, loudly, if the path is unusable
            where = str(config.db)
        else:
            raise ValueError("MonitorConfig needs db or ship")
        self._where = where
        self._writer = threading.Thread(target=self._run, name="imgclf-monitor", daemon=True)
        self._writer.start()

    # --- worker threads -------------------------------------------------------------------
    @staticmethod
    def budget(max_bytes: int) -> SourceBudget:
        return SourceBudget(max_bytes)

    def upload(self, data: bytes | bytearray, budget: DecodeBudget) -> Upload:
        """Right after ``preprocess`` accepted ``data`` with ``budget``: what to record."""
        img = getattr(budget, "last", None)
        if img is not None:
            budget.last = None  # type: ignore[attr-defined]
            # The file's own size (a large JPEG was decoded at a reduced scale), as prepare.
            width, height = img.info.get(SOURCE_SIZE, img.size)
            fmt = img.format or ""
        else:  # a budget that noted nothing: read the header again
            width, height, fmt = source_info(data)
        c = self.config
        sampled = c.sample_dir is not None and self._random.random() < c.sample_rate
        return Upload(width, height, fmt, bytes(data) if sampled else None)

    def observe(
        self,
        uploads: list[Upload],
        pixels: np.ndarray,
        probs: np.ndarray,
        embedding: np.ndarray | None,
        classes: list[str],
        version: str,
    ) -> None:
        """Queue the request's records for the writer; never raises, never blocks."""
        pending = Pending(version, classes, uploads, pixels, probs, embedding)
        size = pending.size
        with self._lock:
            if self._queued_bytes + size <= QUEUE_BYTES:
                self._queued_bytes += size
                self._pending.append(pending)
                return
        self._count("dropped", len(uploads))

    def _count(self, what: str, n: int) -> None:
        metric = getattr(self.telemetry, f"monitor_{what}", None)
        if metric is not None:
            metric.inc(n)

    # --- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            stop = self._stop.wait(FLUSH_S)
            with self._lock:
                batch, self._pending = self._pending, []
            for start in range(0, len(batch), BATCH_ROWS):  # requests ≤ images
                self._write(batch[start : start + BATCH_ROWS])
            if self._spool is not None and (stop or self._spool.due()):
                self._rotate()

    def _rotate(self) -> None:
        """Close the open shard (the spool uploads it); feature set ids are per file."""
        assert self._spool is not None
        try:
            self._spool.rotate()
        except Exception:  # a full spool disk: the next shard may still work
            log.exception("monitoring: could not close the shard")
        self._feature_sets.clear()

    def _feature_set(self, names: list[str]) -> int:
        """The id of this list of feature names in ``feature_sets`` (inside a transaction)."""
        key = ",".join(names)
        if key not in self._feature_sets:
            self._conn.execute("INSERT OR IGNORE INTO feature_sets (names) VALUES (?)", (key,))
            (ident,) = self._conn.execute(
                "SELECT id FROM feature_sets WHERE names = ?", (key,)
            ).fetchone()
            self._feature_sets[key] = int(ident)
        return self._feature_sets[key]

    def _rows(self, batch: list[Pending]) -> tuple[list[str], list[list[Any]]]:
        """The features of every queued image in one vectorised pass, as table rows."""
        uploads = [u for p in batch for u in p.uploads]
        names, matrix = feature_matrix(
            np.concatenate([p.pixels for p in batch]),
            [u.width for u in uploads],
            [u.height for u in uploads],
        )
        features = matrix.astype("<f4")
        probs = np.concatenate([p.probs for p in batch])
        top = probs.argmax(1)
        confidence = probs[np.arange(len(probs)), top].tolist()
        embeddings = [p.embedding for p in batch if p.embedding is not None]
        flat = None  # all embeddings reduced at once when they have one width (the usual case)
        if embeddings and len({e.shape[1] for e in embeddings}) == 1:
            flat = iter(reduce_embedding(np.concatenate(embeddings)).astype("<f4"))
        rows: list[list[Any]] = []
        k = 0
        for p in batch:
            if p.embedding is None:
                vectors: list[bytes | None] = [None] * len(p.uploads)
            elif flat is not None:
                vectors = [next(flat).tobytes() for _ in p.uploads]
            else:
                vectors = [r.tobytes() for r in reduce_embedding(p.embedding).astype("<f4")]
            for u, vector in zip(p.uploads, vectors, strict=True):
                label = p.classes[int(top[k])]
                row = [p.ts, p.version, label, confidence[k], u.format, 0, features[k].tobytes()]
                rows.append([*row, vector, u])  # feature_set (0) and sample set in _write
                k += 1
        return names, rows

    def _write(self, batch: list[Pending]) -> None:
        images = sum(len(p.uploads) for p in batch)
        try:
            names, rows = self._rows(batch)
            if self._spool is not None:
                self._conn = self._spool.connection()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                feature_set = self._feature_set(names)
                for row in rows:  # the sample's file name replaces the Upload
                    row[5] = feature_set
                    row[8] = self._store_sample(row[0], row[8])
                self._conn.executemany(
                    "INSERT INTO requests (ts, model_version, label, confidence, format, "
                    "feature_set, features, embedding, sample) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if self._spool is None:
                    # The ring buffer: keep the newest max_rows rows (an index range delete).
                    self._conn.execute(
                        "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                        (self.config.max_rows,),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._feature_sets.clear()  # the insert may have been rolled back
                raise
            if self._spool is not None:
                stamps = [p.ts for p in batch]
                self._spool.wrote(min(stamps), max(stamps), len(rows))
                if self._spool.rows >= self._spool.config.shard_rows:
                    self._rotate()
            self._count("records", images)
        except Exception:  # a full disk or a locked file: count, keep serving
            log.exception("monitoring: could not write %d records to %s", images, self._where)
            self._count("dropped", images)
        finally:
            size = sum(p.size for p in batch)
            with self._lock:
                self._queued_bytes -= size

    def _store_sample(self, ts: float, upload: Upload) -> str | None:
        """Write the upload's bytes if the cap allows (checked in the open transaction)."""
        if upload.sample is None or self.config.sample_dir is None:
            return None
        data = upload.sample
        (used,) = self._conn.execute("SELECT value FROM meta WHERE key = 'sample_bytes'").fetchone()
        if int(used) + len(data) > self.config.sample_max_bytes:
            self._count("samples_skipped", 1)
            return None
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))
        name = f"{day}/{int(ts * 1000)}-{self._random.getrandbits(48):012x}"
        name += SAMPLE_SUFFIX.get(upload.format, ".bin")
        path = self.config.sample_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'sample_bytes'",
            (len(data),),
        )
        self._count("samples", 1)
        return name

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer (the app's shutdown); when shipping,
        close the open shard and upload what waits, within ``IMGCLF_MONITOR_DRAIN_S``."""
        start = time.monotonic()
        self._stop.set()
        self._writer.join(timeout)
        if self._writer.is_alive():
            log.warning("monitoring: the writer did not finish within %s s", timeout)
            return
        if self._spool is not None:
            assert self.config.ship is not None
            left = self.config.ship.drain_s - (time.monotonic() - start)
            self._spool.close(max(left, 0.5))
        elif self._conn is not None:
            self._conn.close()
