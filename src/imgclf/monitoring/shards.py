"""Where the fleet's records live: shard names, and one small interface over a bucket or a folder.

Autoscaled replicas (Cloud Run, Kubernetes) lose their disk when they stop, so each
replica closes its records into immutable SQLite *shards* (the monitoring schema of
:mod:`imgclf.monitoring.store`, one self-contained file each) and uploads them
(:mod:`imgclf.monitoring.shipping`). A shard's name carries the UTC day and the time
range of its records, the replica and a sequence number::

    <root>/shards/2026-12-03/1764720000123-1764720299871-run-7f3a-12-a1b2c3-000004.db
    <root>/samples/2026-12-03/1764720000456-0a1b2c3d4e5f.png

so uploads from any number of replicas never collide and need no lock (an object is
written once, atomically, and never changed), and a reader lists only the days of its
window and downloads only the shards whose range overlaps it.

``<root>`` is ``gs://bucket/prefix`` (through gcsfs, the library the DVC remote already
uses: credentials from ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server,
``STORAGE_EMULATOR_HOST`` for the emulator) or a local folder (``file://`` or a path):
the same layout, written with an atomic rename, for tests and single hosts.
Standard library only, and gcsfs imported only for a ``gs://`` root.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

SHARDS, SAMPLES = "shards", "samples"
# The longest a shard may span (IMGCLF_MONITOR_SHARD_S is capped to it): a reader lists
# the days of its window plus the day before, and finds every shard that overlaps it.
MAX_SHARD_S = 86_400
_NAME = re.compile(r"^(\d{13})-(\d{13})-([A-Za-z0-9._-]+)-(\d{6})\.db$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ShardError(ValueError):
    """A shard source cannot be read as asked; the message says why."""


@dataclass(frozen=True, order=True)
class ShardName:
    """The parts of a shard's file name: its records' time range (ms), replica, sequence."""

    first_ms: int
    last_ms: int
    replica: str
    seq: int

    @property
    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.first_ms / 1000))

    @property
    def name(self) -> str:
        return f"{self.first_ms:013d}-{self.last_ms:013d}-{self.replica}-{self.seq:06d}.db"

    @property
    def key(self) -> str:
        """Its path under the root: ``shards/<day>/<name>``."""
        return f"{SHARDS}/{self.day}/{self.name}"

    @classmethod
    def for_records(cls, first_ts: float, last_ts: float, replica: str, seq: int) -> ShardName:
        """The name covering records from ``first_ts`` to ``last_ts`` (seconds, inclusive)."""
        return cls(int(first_ts * 1000), -(-int(last_ts * 1e6) // 1000), replica, seq)

    @classmethod
    def parse(cls, name: str) -> ShardName | None:
        m = _NAME.match(name)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4)))

    def overlaps(self, start: float, end: float) -> bool:
        """Whether any record of ``start <= ts < end`` can be in this shard."""
        return self.first_ms / 1000 < end and (self.last_ms + 1) / 1000 >= start


def replica_id(given: str | None = None) -> str:
    """A name for this process that no other replica or restart shares.

    The operator's name (``IMGCLF_MONITOR_REPLICA``, e.g. the pod name) or the host name,
    then the process id and 24 random bits: two processes of one host (``--workers``),
    or a restarted container with the same host name, still get different names.
    """
    base = given or os.environ.get("K_REVISION") or socket.gethostname() or "replica"
    base = _UNSAFE.sub("_", base).strip("._-")[:40] or "replica"
    return f"{base}-{os.getpid()}-{secrets.token_hex(3)}"


def is_fleet_source(source: str) -> bool:
    """A bucket URL or a folder of shards (rather than one SQLite file)."""
    return "://" in source or Path(source).is_dir()


class Target(Protocol):
    """Where shards and samples go: write once (atomically), list, read."""

    url: str

    def put(self, local: Path, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def get(self, keys: list[str], dest: Path) -> list[Path]: ...
    def exists(self, key: str) -> bool: ...


class FolderTarget:
    """A local folder with the bucket's layout; a file appears whole (written, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def put(self, local: Path, key: str) -> None:
        dest = self.root / PurePosixPath(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
        shutil.copyfile(local, tmp)
        tmp.replace(dest)

    def list(self, prefix: str) -> list[str]:
        folder = self.root / PurePosixPath(prefix)
        if not folder.is_dir():
            return []
        return [f"{prefix}/{p.name}" for p in folder.iterdir() if not p.name.startswith(".")]

    def get(self, keys: list[str], dest: Path) -> list[Path]:
        return [self.root / PurePosixPath(k) for k in keys]  # read in place: nothing to copy

    def exists(self, key: str) -> bool:
        return (self.root / PurePosixPath(key)).exists()


class GcsTarget:
    """``gs://bucket/prefix`` through gcsfs (an object upload is atomic: no partial files)."""

    def __init__(self, url: str) -> None:
        try:
            import gcsfs
        except ImportError:  # pragma: no cover - gcsfs is in requirements-serve.txt
            raise ShardError(f"{url} needs gcsfs: pip install -r requirements-serve.txt") from None
        self.url = url.rstrip("/")
        self.path = self.url.removeprefix("gs://")
        if not self.path or self.path.startswith("/"):
            raise ShardError(f"{url} names no bucket: use gs://BUCKET/PREFIX")
        # NO_GCE_CHECK/GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT come from the environment.
        self.fs = gcsfs.GCSFileSystem(skip_instance_cache=True)

    def _full(self, key: str) -> str:
        return f"{self.path}/{key}"

    def put(self, local: Path, key: str) -> None:
        self.fs.put_file(str(local), self._full(key))

    def list(self, prefix: str) -> list[str]:
        try:
            names = self.fs.ls(self._full(prefix), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [f"{prefix}/{PurePosixPath(n).name}" for n in names]

    def get(self, keys: list[str], dest: Path) -> list[Path]:
        # One file at a time: gcsfs's batched get (concurrent) took 28 s for 50 small files
        # against the emulator (connections reset, retried with backoff), one by one 0.14 s.
        local = [dest / PurePosixPath(k) for k in keys]
        for key, path in zip(keys, local, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._full(key), str(path))
        return local

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._full(key)))


def open_target(url: str) -> Target:
    """The target a URL (``gs://…``, ``file://…``) or a folder path names."""
    if url.startswith("gs://"):
        return GcsTarget(url)
    if url.startswith("file://"):
        return FolderTarget(Path(url.removeprefix("file://")))
    if "://" in url:
        raise ShardError(f"{url}: only gs://BUCKET/PREFIX or a local folder are supported")
    return FolderTarget(Path(url))


def days(start: float, end: float) -> list[str]:
    """The UTC days a shard overlapping ``[start, end)`` can be filed under.

    An open end (``--since`` alone: ``inf``) stops at tomorrow: no shard is filed under a
    later day unless its replica's clock ran more than a day ahead.
    """
    end = min(end, time.time() + 86_400)
    first = max(start, 0.0) - MAX_SHARD_S
    out: list[str] = []
    t = first - first % 86_400
    while t < end:
        out.append(time.strftime("%Y-%m-%d", time.gmtime(t)))
        t += 86_400
    return out


def overlapping(target: Target, start: float, end: float) -> list[ShardName]:
    """The shards whose records may fall in ``[start, end)``, oldest first."""
    found: list[ShardName] = []
    if start == float("-inf"):
        day_prefixes = target.list(SHARDS)
    else:
        day_prefixes = [f"{SHARDS}/{d}" for d in days(start, end)]
    for prefix in day_prefixes:
        for key in target.list(prefix):
            shard = ShardName.parse(PurePosixPath(key).name)
            if shard is not None and shard.overlaps(start, end):
                found.append(shard)
    return sorted(found)


def fetch(source: str, start: float, end: float, cache: Path) -> list[Path]:
    """Local paths of the shards of ``source`` that overlap the window (downloaded if remote).

    A source with no shard at all is an error (a mistyped URL must not read as a quiet
    week); a window no shard overlaps is an empty list, as a database with no rows in it.
    """
    target = open_target(source)
    shards = overlapping(target, start, end)
    if not shards and not target.exists(SHARDS):
        raise ShardError(
            f"{source} holds no shards ({SHARDS}/ is missing): is it the IMGCLF_MONITOR_URL "
            "the API ships to, and has a replica closed a shard yet?"
        )
    return target.get([s.key for s in shards], cache)


def local_paths(sources: list[str], start: float, end: float, cache: Path) -> list[Path]:
    """SQLite files to read for the window: files as given, shards of bucket URLs and folders."""
    paths: list[Path] = []
    for source in sources:
        if is_fleet_source(source):
            paths += fetch(source, start, end, cache / f"source{len(paths)}")
        else:
            paths.append(Path(source))
    return paths


def fetch_samples(source: str, names: list[str], dest: Path) -> Path:
    """Download the named samples of a bucket into ``dest``; returns the folder they are in."""
    target = open_target(source)
    for name in names:
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
            raise ShardError(f"sample {name!r} is not a path inside the sample folder")
    target.get([f"{SAMPLES}/{n}" for n in names], dest)
    return dest / SAMPLES
