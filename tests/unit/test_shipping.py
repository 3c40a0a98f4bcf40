"""Shipping on real files: shards close by time and size, uploads retry, orphans are adopted.

The target is a local folder (the same layout and code path as a bucket, minus gcsfs);
``tests/api/test_fleet.py`` runs real servers against the GCS emulator.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from imgclf.monitoring import shipping
from imgclf.monitoring.recorder import Monitor, MonitorConfig
from imgclf.monitoring.shards import ShardError, ShardName, days, fetch, local_paths
from imgclf.monitoring.shipping import ShardSpool, ShipConfig
from imgclf.monitoring.store import connect
from imgclf.monitoring.traffic import TrafficError, load_traffic
from imgclf.serving.prometheus_metrics import Telemetry
from imgclf.serving.settings import Settings, SettingsError
from tests.support import ROOT, holds_within, tool_env
from tests.unit.test_monitor import _observe

pytestmark = pytest.mark.slow  # real timers: shards close after real seconds


def _shipping(tmp: Path, **kw: object) -> MonitorConfig:
    ship = ShipConfig(url=str(tmp / "bucket"), spool=tmp / "spool", replica="r1", **kw)  # type: ignore[arg-type]
    return MonitorConfig(db=None, ship=ship)


def _shards(bucket: Path) -> list[Path]:
    return sorted((bucket / "shards").rglob("*.db"))


def _rows(path: Path) -> int:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def _value(telemetry: Telemetry, name: str) -> float:
    return float(telemetry.registry.get_sample_value(name) or 0)


def test_shards_close_by_rows_and_at_close_nothing_is_left(tmp_path: Path) -> None:
    monitor = Monitor(_shipping(tmp_path, shard_rows=10))
    for _ in range(5):
        _observe(monitor, 4)
        time.sleep(1.3)  # one flush each: 4, 8, 12 ≥ 10 → a shard closes
    monitor.close()
    shards = _shards(tmp_path / "bucket")
    assert sum(_rows(s) for s in shards) == 20
    sizes = [_rows(s) for s in shards]  # [12, 8] when each flush took one request
    assert len(sizes) >= 2 and all(n >= 10 for n in sizes[:-1]) and sizes[-1] <= 12, sizes
    names = [ShardName.parse(s.name) for s in shards]
    assert all(n is not None and n.replica.startswith("r1-") for n in names)
    assert names[0].last_ms <= names[1].first_ms  # type: ignore[union-attr]
    assert not list((tmp_path / "spool").rglob("*.db"))  # the spool is empty
    # Every shard is one self-contained file: readable with no -wal beside it.
    assert not list((tmp_path / "bucket").rglob("*-wal"))
    traffic = load_traffic(local_paths([str(tmp_path / "bucket")], 0, 2e9, tmp_path), 0, 2e9, "v1")
    assert traffic.rows == 20


def test_shards_close_by_time_and_readers_fetch_only_the_window(tmp_path: Path) -> None:
    monitor = Monitor(_shipping(tmp_path, shard_s=1.0))
    marks = []
    for i in range(3):
        marks.append(time.time())
        _observe(monitor, 3)
        # Past the interval the writer closes the shard and it is shipped, while running.
        deadline = time.monotonic() + 15
        while len(_shards(tmp_path / "bucket")) <= i and time.monotonic() < deadline:
            time.sleep(0.1)
    shards = _shards(tmp_path / "bucket")
    assert len(shards) == 3 and [_rows(s) for s in shards] == [3, 3, 3]
    monitor.close()
    bucket = str(tmp_path / "bucket")
    middle = fetch(bucket, marks[1] - 0.1, marks[2] - 0.1, tmp_path / "c")
    assert [p.name for p in middle] == [shards[1].name]
    assert len(fetch(bucket, marks[0] - 0.1, time.time(), tmp_path / "c")) == 3
    assert fetch(bucket, 0, 10, tmp_path / "c") == []  # nothing in 1970: empty, not an error
    with pytest.raises(ShardError, match="holds no shards"):
        fetch(str(tmp_path / "empty"), 0, 2e9, tmp_path / "c")


def test_a_failed_upload_is_counted_and_retried(tmp_path: Path) -> None:
    telemetry = Telemetry()
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "shards").write_text("a file where the folder should be")  # uploads fail
    monitor = Monitor(_shipping(tmp_path, shard_rows=2), telemetry)
    _observe(monitor, 3)
    deadline = time.monotonic() + 15
    while not _value(telemetry, "imgclf_monitor_upload_failures_total"):
        assert time.monotonic() < deadline, "the upload never failed"
        time.sleep(0.1)
    assert _value(telemetry, "imgclf_monitor_shards_uploaded_total") == 0
    assert len(list((tmp_path / "spool" / "ready").glob("*.db"))) == 1  # kept for the retry
    (bucket / "shards").unlink()  # the bucket is back
    monitor.close()
    assert _value(telemetry, "imgclf_monitor_shards_uploaded_total") == 1
    assert sum(_rows(s) for s in _shards(bucket)) == 3


def test_a_long_outage_drops_the_oldest_shards_not_the_replica(tmp_path: Path) -> None:
    """The bucket stays down: closed shards pile up in the spool (memory on Cloud Run).
    Past IMGCLF_MONITOR_SPOOL_MAX_BYTES the oldest go, counted with their records; the
    newest stays; when the bucket is back what is left ships, and nothing is counted
    twice (shipped + dropped records = recorded)."""
    telemetry = Telemetry()
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "shards").write_text("a file where the folder should be")  # uploads fail
    monitor = Monitor(_shipping(tmp_path, shard_rows=2, max_bytes=1), telemetry)
    ready = tmp_path / "spool" / "ready"
    for closed in (1, 2, 3):
        _observe(monitor, 3)
        deadline = time.monotonic() + 15
        while _value(telemetry, "imgclf_monitor_shards_total") < closed:
            assert time.monotonic() < deadline, "the shard never closed"
            time.sleep(0.1)
    dropped = _value(telemetry, "imgclf_monitor_shards_dropped_total")
    assert dropped >= 1
    assert len(list(ready.glob("*.db"))) <= 2  # the newest, and maybe the one in upload
    lost = _value(telemetry, "imgclf_monitor_records_dropped_unshipped_total")
    assert lost == 3 * dropped
    (bucket / "shards").unlink()  # the bucket is back
    monitor.close()
    shipped = sum(_rows(s) for s in _shards(bucket))
    assert shipped + lost == 9 and shipped >= 3
    assert not list(ready.glob("*.db"))


CRASH = """
import sys, time
from pathlib import Path
from imgclf.monitoring.recorder import Monitor
from tests.unit.test_shipping import _shipping
from tests.unit.test_monitor import _observe
monitor = Monitor(_shipping(Path(sys.argv[1])))
_observe(monitor, 7)
time.sleep(1.6)  # committed to the open shard
print("written", flush=True)
time.sleep(60)
"""


def test_a_killed_process_leaves_its_open_shard_to_the_next_one(tmp_path: Path) -> None:
    """SIGKILL: the open shard stays in the spool; the next process on it ships it."""
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(tmp_path)], cwd=ROOT,
                            env=tool_env(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "written", line + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _shards(tmp_path / "bucket")
    telemetry = Telemetry()
    Monitor(_shipping(tmp_path), telemetry).close()  # a restart on the same spool
    (shard,) = _shards(tmp_path / "bucket")
    assert _rows(shard) == 7 and ShardName.parse(shard.name).replica.startswith("r1-")  # type: ignore[union-attr]
    assert not list((tmp_path / "spool").rglob("*.db"))


def test_shipping_settings(tmp_path: Path) -> None:
    assert Settings.from_env({}).monitor_spool_max_bytes == 256 * 2**20
    capped = Settings.from_env({"IMGCLF_MONITOR_SPOOL_MAX_BYTES": "1048576"})
    assert capped.monitor_spool_max_bytes == 2**20
    with pytest.raises(SettingsError, match="IMGCLF_MONITOR_SPOOL_MAX_BYTES"):
        Settings.from_env({"IMGCLF_MONITOR_SPOOL_MAX_BYTES": "0"})
    s = Settings.from_env({"IMGCLF_MONITOR_URL": "gs://b/m", "IMGCLF_MONITOR_SHARD_S": "60"})
    assert s.monitor_url == "gs://b/m" and s.monitor_shard_s == 60 and s.monitor_db is None
    for env, message in [
        ({"IMGCLF_MONITOR_URL": "s3://b/m"}, "IMGCLF_MONITOR_URL='s3://b/m'"),
        ({"IMGCLF_MONITOR_URL": "gs://"}, "names no bucket"),
        ({"IMGCLF_MONITOR_URL": "gs://b", "IMGCLF_MONITOR_SHARD_S": "90000"}, "over a day"),
        ({"IMGCLF_MONITOR_URL": "gs://b", "IMGCLF_MONITOR_DRAIN_S": "0"}, "DRAIN_S=0"),
    ]:
        with pytest.raises(SettingsError, match=message):
            Settings.from_env(env)
    # Samples may go with the shards instead of a database.
    Settings.from_env({"IMGCLF_MONITOR_URL": str(tmp_path), "IMGCLF_SAMPLE_DIR": str(tmp_path)})


# --- several processes on one spool (the worker processes of one replica) ---------------


def _waiting_shard(spool: Path, replica: str = "gone-1") -> Path:
    """A closed shard in ``spool/ready`` as a writer leaves it (3 records)."""
    ready = spool / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = ready / ShardName.for_records(now - 2, now - 1, replica, 1).name
    conn = connect(path)
    conn.execute("INSERT INTO feature_sets (id, names) VALUES (1, 'brightness')")
    conn.executemany(
        "INSERT INTO requests (ts, model_version, label, confidence, format, feature_set,"
        " features) VALUES (?, 'v1', '3', 0.9, 'PNG', 1, ?)",
        [(t, b"\0\0\0\0") for t in (now - 2, now - 1.5, now - 1)],
    )
    conn.commit()
    conn.close()
    return path


def test_siblings_on_one_spool_ship_a_shard_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two spools (two worker processes) see the same waiting shard while the first one's
    upload is slow: it is sent once, nobody counts a failure, and the size cap of the
    other never deletes it mid-upload."""
    shard = _waiting_shard(tmp_path / "spool")
    puts: list[str] = []
    counts: list[tuple[str, int]] = []
    real_open = shipping.open_target

    def slow_target(url: str) -> object:  # the real folder target, one second per put
        target = real_open(url)
        real_put = target.put

        def put(local: Path, key: str) -> None:
            puts.append(key)
            time.sleep(1.0)
            real_put(local, key)

        target.put = put  # type: ignore[method-assign]
        return target

    monkeypatch.setattr(shipping, "open_target", slow_target)
    config = ShipConfig(url=str(tmp_path / "bucket"), spool=tmp_path / "spool", max_bytes=0)
    count = lambda name, n: counts.append((name, n))  # noqa: E731
    spools = [ShardSpool(replace(config, replica=r), None, count) for r in ("w0", "w1")]
    time.sleep(0.3)  # both uploaders have listed ready/; the first is inside put()
    spools[1].enforce_cap()  # over the cap (0 bytes): the sibling's shard must stay
    spools[1]._wake.set()
    assert holds_within(lambda: not shard.exists(), 10)
    for spool in spools:
        spool.close(timeout=3)
    assert len(puts) == 1, puts
    assert [c for c in counts if c[0] != "shards_uploaded"] == []
    assert sum(_rows(s) for s in _shards(tmp_path / "bucket")) == 3


def test_a_starting_sibling_is_never_taken_for_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starting while another one recovers the spool: the recovering one must not
    find the new lock file unlocked (it would delete it, and the shards behind it later).
    The second spool is created at the worst moment: between the first one's open and
    its flock."""
    config = ShipConfig(url=str(tmp_path / "bucket"), spool=tmp_path / "spool")
    real_flock, started = shipping.fcntl.flock, []

    def flock(fh: object, op: int) -> None:
        if not started:
            started.append(None)  # once: the sibling's own flock goes straight through
            started[0] = ShardSpool(replace(config, replica="w1"), None, lambda *_: None)
        real_flock(fh, op)

    monkeypatch.setattr(shipping.fcntl, "flock", flock)
    first = ShardSpool(replace(config, replica="w0"), None, lambda *_: None)
    monkeypatch.setattr(shipping.fcntl, "flock", real_flock)
    assert (tmp_path / "spool" / "open" / f"{first.replica}.lock").exists()
    lock = tmp_path / "spool" / "open" / f"{first.replica}.lock"
    with lock.open("r") as fh, pytest.raises(BlockingIOError):  # held: nobody can take it
        real_flock(fh, shipping.fcntl.LOCK_EX | shipping.fcntl.LOCK_NB)
    for spool in (first, *started):
        spool.close(timeout=1)


def test_an_open_ended_window_lists_days_up_to_tomorrow() -> None:
    """``imgclf collect --since 1d`` (no end): it once looped over days forever."""
    now = time.time()
    listed = days(now - 86_400, float("inf"))
    assert 2 <= len(listed) <= 4, listed
    assert listed[-1] == time.strftime("%Y-%m-%d", time.gmtime(now + 86_400))


def test_collect_since_from_a_fleet_folder_finishes(tmp_path: Path) -> None:
    """The README's ``imgclf collect --db <fleet> --since 1d`` on a folder of shards."""
    fleet = tmp_path / "fleet"
    shard = _waiting_shard(tmp_path / "spool")
    day = ShardName.parse(shard.name).key  # type: ignore[union-attr]
    (fleet / day).parent.mkdir(parents=True)
    shard.replace(fleet / day)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(ROOT / ".venv/bin/imgclf") if (ROOT / ".venv/bin/imgclf").exists() else "imgclf",
         "collect", "--out", str(out), "--db", str(fleet), "--since", "1d"],
        cwd=tmp_path, env=tool_env(ROOT), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 2), done.stdout + done.stderr


def test_a_bad_object_in_the_fleet_is_left_out_and_counted(tmp_path: Path) -> None:
    """Found by a review: one non-SQLite object failed every report over its window, a
    row with an unknown feature set crashed it (KeyError), and rows with the wrong number
    of floats were silently reshaped into misaligned columns. Now, read from a fleet,
    they are left out and counted; a bad file the user named still fails with its reason."""
    import numpy as np

    fleet = tmp_path / "fleet"
    now = time.time()

    def shard(seq: int, rows: list[tuple[int, list[float]]]) -> Path:
        path = fleet / ShardName.for_records(now - 10, now - 1, "r", seq).key
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        conn.execute("INSERT INTO feature_sets (id, names) VALUES (1, 'a,b,c')")
        for feature_set, values in rows:
            conn.execute(
                "INSERT INTO requests (ts, model_version, label, confidence, format,"
                " feature_set, features) VALUES (?, 'v', 'cat', 0.9, 'PNG', ?, ?)",
                (now - 5, feature_set, np.array(values, "<f4").tobytes()),
            )
        conn.commit()
        conn.close()
        return path

    shard(1, [(1, [1.0, 2.0, 3.0])] * 40)
    shard(2, [(1, [9.0, 9.0]), (1, [9.0, 9.0, 9.0, 9.0]), (7, [1.0, 2.0, 3.0])])
    junk = fleet / ShardName.for_records(now - 10, now - 1, "z", 1).key
    junk.write_bytes(b"not a database")
    paths = local_paths([str(fleet)], now - 3600, now, tmp_path / "cache")
    traffic = load_traffic(paths, now - 3600, now, "v", from_fleet=paths)
    assert traffic.rows == 40 and traffic.features["a"] == [1.0] * 40
    assert traffic.features["c"] == [3.0] * 40  # no misaligned column
    assert traffic.unreadable_rows == 3 and len(traffic.unreadable_files) == 1
    with pytest.raises(TrafficError, match="not an imgclf monitoring database"):
        load_traffic([paths[0], junk], now - 3600, now, "v")  # a file the user named


def test_a_shard_the_bucket_keeps_refusing_does_not_hold_back_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the uploader stopped its pass at the first failure, so one shard
    the bucket refused every time (e.g. a retried upload of an object that exists, under
    a create-only key) held back every newer shard until the size cap dropped it."""
    spool = tmp_path / "spool"
    refused = _waiting_shard(spool, "old-1")
    time.sleep(0.01)
    newer = _waiting_shard(spool, "new-1")
    real_open = shipping.open_target

    def refusing(url: str) -> object:
        target = real_open(url)
        real_put = target.put

        def put(local: Path, key: str) -> None:
            if local.name == refused.name:
                raise PermissionError("403 Forbidden: storage.objects.delete")
            real_put(local, key)

        target.put = put  # type: ignore[method-assign]
        return target

    monkeypatch.setattr(shipping, "open_target", refusing)
    counts: list[tuple[str, int]] = []
    config = ShipConfig(url=str(tmp_path / "bucket"), spool=spool, replica="w0")
    ShardSpool(config, None, lambda name, n: counts.append((name, n))).close(timeout=3)
    assert [s.name for s in _shards(tmp_path / "bucket")] == [newer.name]
    assert refused.exists() and ("upload_failures", 1) in counts
