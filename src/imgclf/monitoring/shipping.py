"""Ship records off the replica: rotate the recorder's SQLite into shards, upload each closed one.

Why: on Cloud Run or an autoscaled Kubernetes deployment a replica's disk dies with it
(on Cloud Run it is memory), so a local database loses every record of a replica that
scaled down. With ``IMGCLF_MONITOR_URL`` set, the recorder's writer thread
(:mod:`imgclf.monitoring.recorder`) writes into a small *open shard* in a local spool
folder instead of one long-lived file; it closes the shard after
``IMGCLF_MONITOR_SHARD_S`` seconds or ``IMGCLF_MONITOR_SHARD_ROWS`` rows, renames it to
its final name (:class:`imgclf.monitoring.shards.ShardName`: day, time range, replica,
sequence) and an uploader thread sends it, and the samples it lists, to the URL. The
request path never waits on any of this: workers only queue (as before), and an upload
that fails stays in the spool, is counted (``imgclf_monitor_upload_failures``) and retried
with a backoff. The spool is bounded: while the bucket cannot be reached, closed shards
pile up, and past ``IMGCLF_MONITOR_SPOOL_MAX_BYTES`` the oldest are deleted unshipped,
counted (``imgclf_monitor_shards_dropped``, ``imgclf_monitor_records_dropped_unshipped``)
and logged. Monitoring is best effort; the replica answering is not: on Cloud Run the
spool is memory, and an unbounded one would get the replica killed for want of a bucket.

Bounds. On SIGTERM the app's shutdown flushes the queue, closes the open shard and
uploads everything waiting, within ``IMGCLF_MONITOR_DRAIN_S`` (keep it under the
platform's grace period: Cloud Run gives 10 s). On a crash (SIGKILL, OOM) what is lost
is the open shard — at most ``IMGCLF_MONITOR_SHARD_S`` plus one flush (1 s) of records —
and any closed shard not yet uploaded; if the spool survives (a Kubernetes ``emptyDir``
across a container restart, a host folder), the next process on it closes and uploads
what the dead one left: each process holds an ``flock`` on its own lock file, so a shard
whose lock is free belongs to nobody alive.

Why SQLite shards (``bench/bench_monitor.py``, shard formats): same schema as the local
database, so the report and ``imgclf collect`` read a shard with the code that reads one
file; standard library only (no pyarrow in the serving image); and it was the cheapest to
write of the formats measured, at a size close to gzipped JSON lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from imgclf.monitoring.shards import SAMPLES, ShardName, open_target, replica_id
from imgclf.monitoring.store import connect

log = logging.getLogger("imgclf.monitoring.shipping")

RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # upload backoff: doubles after each failure
# Failed uploads in one pass over the waiting shards before the uploader backs off: the
# next shards are tried after one fails (it may be that object alone), not after three.
FAILURES_PER_ROUND = 3


@dataclass(frozen=True)
class ShipConfig:
    """Where shards go and when they close (``IMGCLF_MONITOR_URL`` and friends)."""

    url: str
    spool: Path
    shard_s: float = 300.0
    shard_rows: int = 100_000
    replica: str | None = None
    drain_s: float = 8.0
    max_bytes: int = 256 * 2**20  # closed shards kept waiting; past it the oldest go


Count = Callable[[str, int], None]


def _close_file(conn: sqlite3.Connection) -> None:
    """Close a shard as one self-contained file (no ``-wal``: readers open it read-only)."""
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


def _span(conn: sqlite3.Connection) -> tuple[float, float, int]:
    first, last, rows = conn.execute("SELECT MIN(ts), MAX(ts), COUNT(*) FROM requests").fetchone()
    return float(first or 0), float(last or 0), int(rows)


class ShardSpool:
    """The recorder's open shard, the closed ones waiting in the spool, and their uploader.

    :meth:`connection`, :meth:`wrote`, :meth:`due` and :meth:`rotate` are called by the
    recorder's writer thread only; the uploader thread only reads ``ready/``. Several
    processes may share one spool (the worker processes of one replica, each with its
    own replica id): whoever uploads or drops a closed shard holds an ``flock`` on it
    (:func:`_claim`), so a shard is sent once and never deleted under a sibling's upload.
    """

    def __init__(self, config: ShipConfig, sample_dir: Path | None, count: Count) -> None:
        self.config = config
        self.sample_dir = sample_dir
        self._count = count
        self.target = open_target(config.url)  # a bad URL fails at startup, loudly
        self.replica = replica_id(config.replica)
        self.open_dir, self.ready_dir = config.spool / "open", config.spool / "ready"
        self.open_dir.mkdir(parents=True, exist_ok=True)
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        # Locked under a name no one looks for, then renamed: a sibling starting at the
        # same moment (the worker processes of one replica) must never see our lock file
        # unlocked and take us for dead (it would delete the file, and our shards later).
        new = self.open_dir / f"{self.replica}.lock.new"
        self._lock_file = new.open("w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        new.replace(self.open_dir / f"{self.replica}.lock")
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._first = self._last = 0.0
        self.rows = 0
        self._sample_bytes = 0  # carried from shard to shard: the cap is per process
        self._recover()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._uploader = threading.Thread(target=self._upload_loop, name="imgclf-ship",
                                          daemon=True)  # fmt: skip
        self._uploader.start()

    # --- the writer thread ----------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """The open shard (a new one if none is open)."""
        if self._conn is None:
            self._seq += 1
            self._path = self.open_dir / f"{self.replica}-{self._seq:06d}.db"
            self._conn = connect(self._path)
            self._conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'sample_bytes'", (str(self._sample_bytes),)
            )
            self._opened, self.rows = time.monotonic(), 0
        return self._conn

    def wrote(self, first_ts: float, last_ts: float, rows: int) -> None:
        """After a committed batch: extend the open shard's time range."""
        self._first = first_ts if self.rows == 0 else min(self._first, first_ts)
        self._last = last_ts if self.rows == 0 else max(self._last, last_ts)
        self.rows += rows

    def due(self) -> bool:
        """Whether the open shard is old or big enough to close."""
        if self._conn is None:
            return False
        age = time.monotonic() - self._opened
        return age >= self.config.shard_s or self.rows >= self.config.shard_rows

    def rotate(self) -> None:
        """Close the open shard under its final name and wake the uploader (if it has rows)."""
        conn, path = self._conn, self._path
        if conn is None or path is None:
            return
        self._conn = self._path = None
        (used,) = conn.execute("SELECT value FROM meta WHERE key = 'sample_bytes'").fetchone()
        self._sample_bytes = int(used)
        _close_file(conn)
        if self.rows == 0:
            path.unlink(missing_ok=True)
            return
        name = ShardName.for_records(self._first, self._last, self.replica, self._seq)
        path.replace(self.ready_dir / name.name)
        self._count("shards", 1)
        self.enforce_cap()
        self._wake.set()

    def enforce_cap(self) -> int:
        """Delete the oldest waiting shards (and their samples) while the spool's closed
        shards exceed ``max_bytes``; returns how many went. The newest shard always stays,
        and so does the one being uploaded."""
        waiting = sorted(self.ready_dir.glob("*.db"))  # names sort by time
        sizes = {p: p.stat().st_size for p in waiting if p.exists()}
        total, dropped, records = sum(sizes.values()), 0, 0
        for path in waiting[:-1]:
            if total <= self.config.max_bytes:
                break
            # Our uploader's claim counts like a sibling's: flock locks one open file,
            # so the shard being sent now is never deleted under its feet either.
            claim = _claim(path)
            if claim is None:  # being uploaded (here or by a sibling), or gone
                continue
            with claim:
                rows, samples = self._contents(path)
                path.unlink(missing_ok=True)
            for sample in samples:
                if self.sample_dir is not None:
                    (self.sample_dir / PurePosixPath(sample)).unlink(missing_ok=True)
            total -= sizes.get(path, 0)
            dropped, records = dropped + 1, records + rows
        if dropped:
            self._count("shards_dropped", dropped)
            self._count("records_dropped_unshipped", records)
            log.warning(
                "monitoring: the spool is over IMGCLF_MONITOR_SPOOL_MAX_BYTES=%d with %s "
                "unreachable: dropped the %d oldest shard(s), %d record(s), unshipped",
                self.config.max_bytes, self.target.url, dropped, records,
            )  # fmt: skip
        return dropped

    @staticmethod
    def _contents(path: Path) -> tuple[int, list[str]]:
        """A closed shard's number of records and the samples it lists (0, [] if unreadable)."""
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0, []
        try:
            (rows,) = conn.execute("SELECT COUNT(*) FROM requests").fetchone()
            found = conn.execute("SELECT sample FROM requests WHERE sample IS NOT NULL")
            return int(rows), [s for (s,) in found]
        except sqlite3.Error:
            return 0, []
        finally:
            conn.close()

    def _recover(self) -> None:
        """Close and queue the open shards of dead processes that used this spool."""
        for lock in self.open_dir.glob("*.lock"):
            if lock.name == f"{self.replica}.lock":
                continue
            try:
                fh = lock.open("r+")
            except FileNotFoundError:  # another process recovered it meanwhile
                continue
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its process is alive
                    continue
                dead = lock.name.removesuffix(".lock")
                for path in sorted(self.open_dir.glob(f"{dead}-*.db")):
                    self._adopt(path, dead)
                lock.unlink(missing_ok=True)

    def _adopt(self, path: Path, replica: str) -> None:
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            first, last, rows = _span(conn)
            _close_file(conn)
        except sqlite3.Error:
            log.exception("monitoring: cannot read the orphan shard %s; left in place", path)
            return
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
        if rows == 0:
            path.unlink()
            return
        seq = int(path.stem.rsplit("-", 1)[1])
        name = ShardName.for_records(first, last, replica, seq)
        path.replace(self.ready_dir / name.name)
        self._count("shards", 1)
        log.warning("monitoring: shipping %s (%d records a stopped process left)", name.name, rows)

    # --- the uploader thread --------------------------------------------------------------
    def _upload_loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            waiting = sorted(self.ready_dir.glob("*.db"))
            if not waiting and self._stopping.is_set():
                return
            failed, failures = False, 0
            for path in waiting:
                if time.monotonic() > self._deadline:
                    return
                claim = _claim(path)
                if claim is None:  # dropped, shipped or being shipped by a sibling
                    continue
                try:
                    with claim:
                        self._upload(path)
                except Exception as exc:  # noqa: BLE001 - network, credentials, a full bucket: retry
                    log.warning("monitoring: upload of %s to %s failed (%s: %s); will retry",
                                path.name, self.target.url, type(exc).__name__, exc)  # fmt: skip
                    self._count("upload_failures", 1)
                    failed, failures = True, failures + 1
                    # One shard that keeps failing (refused by the bucket) must not hold
                    # back the newer ones; several in a row is an outage: wait, retry.
                    if failures >= FAILURES_PER_ROUND:
                        break
            if failed:
                if self._stopping.is_set():
                    delay = min(delay, 0.5)
                    if time.monotonic() + delay > self._deadline:
                        return
                self._wake.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                delay = RETRY_FIRST_S
                if not self._stopping.is_set():
                    self._wake.wait(RETRY_MAX_S)
            self._wake.clear()

    def _upload(self, path: Path) -> None:
        """The shard's samples first, then the shard: a shard in the bucket has its samples."""
        name = ShardName.parse(path.name)
        assert name is not None, path
        samples = []
        if self.sample_dir is not None:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                rows = conn.execute("SELECT sample FROM requests WHERE sample IS NOT NULL")
                samples = [s for (s,) in rows]
            finally:
                conn.close()
            for sample in samples:
                local = self.sample_dir / PurePosixPath(sample)
                if local.is_file():
                    self.target.put(local, f"{SAMPLES}/{sample}")
        self.target.put(path, name.key)
        path.unlink()
        for sample in samples:
            if self.sample_dir is not None:
                (self.sample_dir / PurePosixPath(sample)).unlink(missing_ok=True)
        self._count("shards_uploaded", 1)

    def close(self, timeout: float | None = None) -> bool:
        """Close the open shard and upload everything waiting, within ``timeout`` seconds.

        Returns whether the spool is empty (everything shipped). Called after the writer
        thread has stopped.
        """
        self.rotate()
        timeout = self.config.drain_s if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        self._uploader.join(timeout + 1)
        left = sorted(p.name for p in self.ready_dir.glob("*.db"))
        if left:
            log.warning("monitoring: %d shards not shipped within %.0f s, left in %s: %s",
                        len(left), timeout, self.ready_dir, ", ".join(left))  # fmt: skip
        with contextlib.suppress(OSError):
            (self.open_dir / f"{self.replica}.lock").unlink()
            self._lock_file.close()
        return not left


def _claim(path: Path) -> IO[bytes] | None:
    """``path`` opened and ``flock``-ed for this process alone, or None if another holds it
    or it is gone. The lock goes with the returned file (close it, or use it in ``with``).

    After the lock, the name must still be that file: a sibling may have uploaded and
    deleted it between our listing and our open, and its old inode is not a shard to send.
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fh.fileno()).st_ino != path.stat().st_ino:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        fh.close()
        return None
    return fh
