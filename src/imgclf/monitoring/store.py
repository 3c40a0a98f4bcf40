"""The monitoring database: its SQLite schema, a connection that creates it, a snapshot.

The recorder (:mod:`imgclf.monitoring.recorder`) writes through :func:`connect`; the read
side (:mod:`imgclf.monitoring.traffic`) reads the same tables. :func:`snapshot` takes a
consistent copy of a live database for the scheduled drift report. Standard library
only: it runs in the serving image (``python -m imgclf.monitoring.store snapshot``).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    format TEXT NOT NULL,
    feature_set INTEGER NOT NULL REFERENCES feature_sets (id),
    features BLOB NOT NULL,
    embedding BLOB,
    sample TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE TABLE IF NOT EXISTS feature_sets (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# ``features`` and ``embedding`` are little-endian float32 arrays; ``feature_sets`` names
# the features' columns (comma-separated, as imgclf.data.features.numeric_features lists them).
BUSY_TIMEOUT_MS = 10_000


def _wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch to WAL, retrying while another process holds the file.

    The switch needs the file to itself and SQLite answers "database is locked" at once,
    without its busy handler, while another process is doing the same to a new file: the
    server's workers (``IMGCLF_PROCESSES``) all open the monitoring database together at
    start, and one of them failed to start on this before.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def connect(path: Path, timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with WAL and a busy timeout, the schema created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread off: opened at startup, then used by the writer thread alone.
    conn = sqlite3.connect(
        path, timeout=timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    _wal(conn, timeout_ms / 1000)
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable up to the last checkpoint
    conn.execute("BEGIN IMMEDIATE")  # several processes may start at once
    try:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('sample_bytes', '0')")
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{path} has monitoring schema {version}; this server writes {SCHEMA_VERSION} "
                "(move the old file away, or point IMGCLF_MONITOR_DB at a new one)"
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


def snapshot(source: Path, target: Path) -> int:
    """A consistent copy of a live database, with the rows the WAL holds; returns the rows.

    Copying the file with ``cp`` while the API writes can miss the last second of rows
    (they are in ``-wal``) or tear a page; SQLite's online backup cannot. This is what a
    deployment runs before uploading the file for the scheduled drift report (docs/monitoring.md):
    ``python -m imgclf.monitoring.store snapshot /var/lib/imgclf/monitor.db /tmp/m.db``
    works in the serving image (standard library only).
    """
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            (rows,) = dst.execute("SELECT COUNT(*) FROM requests").fetchone()
        finally:
            dst.close()
        tmp.replace(target)
    finally:
        src.close()
    return int(rows)


if __name__ == "__main__":  # python -m imgclf.monitoring.store snapshot SOURCE TARGET
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "snapshot":
        sys.exit("usage: python -m imgclf.monitoring.store snapshot SOURCE.db TARGET.db")
    try:
        count = snapshot(Path(sys.argv[2]), Path(sys.argv[3]))
    except sqlite3.Error as exc:
        sys.exit(f"error: cannot snapshot {sys.argv[2]}: {exc}")
    print(f"{sys.argv[3]}: {count} recorded predictions")
