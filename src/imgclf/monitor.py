"""Record what the API serves: features, prediction, confidence — in SQLite, off the request path.

The API's worker threads call :meth:`Monitor.observe` with the pixels they just
classified; it computes the :mod:`imgclf.profile` features there (never on the
event loop), optionally keeps the upload's bytes as a *sample*, and puts one small
record per image on a bounded queue. One writer thread per process drains the queue
about once a second into an SQLite database in a single transaction, so a request
never waits for the disk. When the queue is full (the disk is stuck), records are
dropped and counted in ``/metrics`` (``imgclf_monitor_dropped``), never the request.

Several processes (``uvicorn --workers N``, or replicas on a shared volume of a
filesystem with working locks) share one file: WAL journal, a busy timeout, and each
writer's batch is one short ``BEGIN IMMEDIATE`` transaction. The file is bounded like
a ring buffer: past ``IMGCLF_MONITOR_MAX_ROWS`` the oldest rows are deleted as new ones
arrive (SQLite reuses the freed pages, so the file stops growing).

Samples (``IMGCLF_SAMPLE_DIR``, ``IMGCLF_SAMPLE_RATE``, ``IMGCLF_SAMPLE_MAX_BYTES``) are
the only place an image is ever written; the byte cap is kept in the database itself,
inside the writer's transaction, so it holds across processes. Samples are never
rotated away: ``imgclf collect`` turns them into training data.

Only the standard library and numpy: the serving image stays lean.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.profile import image_features, reduce_embedding, source_info
from imgclf.settings import Settings, SettingsError

log = logging.getLogger("imgclf.monitor")

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    features TEXT NOT NULL,
    embedding BLOB,
    sample TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
FLUSH_S = 1.0  # how often the writer commits what the workers recorded
BATCH_ROWS = 2000  # rows per transaction at most
QUEUE_ROWS = 20_000  # records waiting for the writer; past it they are dropped (counted)
BUSY_TIMEOUT_MS = 10_000
SAMPLE_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


def connect(path: Path, timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with WAL and a busy timeout, the schema created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread off: opened at startup, then used by the writer thread alone.
    conn = sqlite3.connect(
        path, timeout=timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable up to the last checkpoint
    conn.execute("BEGIN IMMEDIATE")  # several processes may start at once
    try:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('sample_bytes', '0')")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn


@dataclass(frozen=True)
class MonitorConfig:
    """Where and how much to record (from ``IMGCLF_MONITOR_*`` / ``IMGCLF_SAMPLE_*``)."""

    db: Path
    max_rows: int = 1_000_000
    sample_dir: Path | None = None
    sample_rate: float = 0.0
    sample_max_bytes: int = 1024**3


@dataclass
class Record:
    ts: float
    model_version: str
    label: str
    confidence: float
    features: dict[str, Any]
    embedding: bytes | None
    sample: bytes | None = None
    sample_format: str = ""


class Monitor:
    """Per-process recorder: :meth:`observe` in worker threads, one writer thread."""

    def __init__(self, config: MonitorConfig, telemetry: Any | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        self._queue: queue.Queue[Record | None] = queue.Queue(QUEUE_ROWS)
        self._random = random.Random()
        self._conn = connect(config.db)  # fails at startup, loudly, if the path is unusable
        if config.sample_dir is not None:
            config.sample_dir.mkdir(parents=True, exist_ok=True)
        self._writer = threading.Thread(target=self._run, name="imgclf-monitor", daemon=True)
        self._writer.start()

    # --- worker threads -------------------------------------------------------------------
    def observe(
        self,
        uploads: list[bytes | bytearray],
        pixels: np.ndarray,
        probs: np.ndarray,
        embedding: np.ndarray | None,
        classes: list[str],
        version: str,
    ) -> None:
        """Queue one record per classified upload; never raises, never blocks."""
        try:
            infos = [source_info(data) for data in uploads]
            feats = image_features(
                pixels, [i[0] for i in infos], [i[1] for i in infos], [i[2] for i in infos]
            )
            reduced = None if embedding is None else reduce_embedding(embedding)
            now = time.time()
            for k, data in enumerate(uploads):
                index = int(np.argmax(probs[k]))
                record = Record(
                    ts=now,
                    model_version=version,
                    label=classes[index],
                    confidence=float(probs[k][index]),
                    features={name: values[k] for name, values in feats.items()},
                    embedding=None if reduced is None else reduced[k].astype("<f4").tobytes(),
                )
                if self._sampled():
                    record.sample, record.sample_format = bytes(data), infos[k][2]
                self._put(record)
        except Exception:  # recording must never fail a prediction
            log.exception("monitoring: could not record a prediction")
            self._count("dropped", len(uploads))

    def _sampled(self) -> bool:
        c = self.config
        return c.sample_dir is not None and self._random.random() < c.sample_rate

    def _put(self, record: Record) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count("dropped", 1)

    def _count(self, what: str, n: int) -> None:
        metric = getattr(self.telemetry, f"monitor_{what}", None)
        if metric is not None:
            metric.inc(n)

    # --- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch:
                self._write(batch)
            if stop:
                return

    def _collect(self) -> tuple[list[Record], bool]:
        """Records that arrived within about FLUSH_S (at most BATCH_ROWS); True: shut down."""
        try:
            first = self._queue.get(timeout=FLUSH_S)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + FLUSH_S
        while len(batch) < BATCH_ROWS:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _write(self, batch: list[Record]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [self._row(r) for r in batch]
                self._conn.executemany(
                    "INSERT INTO requests (ts, model_version, label, confidence, features, "
                    "embedding, sample) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                # The ring buffer: keep the newest max_rows rows (an index range delete).
                self._conn.execute(
                    "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                    (self.config.max_rows,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._count("records", len(batch))
        except Exception:  # a full disk or a locked file: count, keep serving
            log.exception(
                "monitoring: could not write %d records to %s", len(batch), self.config.db
            )
            self._count("dropped", len(batch))

    def _row(self, r: Record) -> tuple[Any, ...]:
        sample = self._store_sample(r) if r.sample is not None else None
        features = json.dumps(r.features, separators=(",", ":"))
        return (r.ts, r.model_version, r.label, r.confidence, features, r.embedding, sample)

    def _store_sample(self, r: Record) -> str | None:
        """Write the upload's bytes if the cap allows (checked in the open transaction)."""
        assert r.sample is not None and self.config.sample_dir is not None
        (used,) = self._conn.execute("SELECT value FROM meta WHERE key = 'sample_bytes'").fetchone()
        if int(used) + len(r.sample) > self.config.sample_max_bytes:
            self._count("samples_skipped", 1)
            return None
        day = time.strftime("%Y-%m-%d", time.gmtime(r.ts))
        name = f"{day}/{int(r.ts * 1000)}-{self._random.getrandbits(48):012x}"
        name += SAMPLE_SUFFIX.get(r.sample_format, ".bin")
        path = self.config.sample_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(r.sample)
        tmp.replace(path)
        self._conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'sample_bytes'",
            (len(r.sample),),
        )
        self._count("samples", 1)
        return name

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer (the app's shutdown)."""
        if self._writer.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                log.warning("monitoring: queue still full at shutdown, records lost")
            self._writer.join(timeout)
        self._conn.close()


def open_monitor(settings: Settings, telemetry: Any | None = None) -> Monitor | None:
    """The recorder the settings ask for (None when ``IMGCLF_MONITOR_DB`` is unset).

    A database that cannot be opened stops the server at startup with the variable's
    name: the operator asked for monitoring, and silently serving without it would
    leave a gap nobody notices until the drift report is empty.
    """
    if settings.monitor_db is None:
        return None
    config = MonitorConfig(
        db=settings.monitor_db,
        max_rows=settings.monitor_max_rows,
        sample_dir=settings.sample_dir,
        sample_rate=settings.sample_rate,
        sample_max_bytes=settings.sample_max_bytes,
    )
    try:
        return Monitor(config, telemetry)
    except (sqlite3.Error, OSError) as exc:
        raise SettingsError(
            f"IMGCLF_MONITOR_DB={settings.monitor_db} (or IMGCLF_SAMPLE_DIR) cannot be used: {exc}"
        ) from None
