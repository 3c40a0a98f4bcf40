"""The recorder on real SQLite files: batching, the ring buffer, the sample cap, processes."""

from __future__ import annotations

import io
import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data.preprocessing import DecodeBudget, PreprocessSpec, preprocess
from imgclf.monitoring.recorder import Monitor, MonitorConfig
from imgclf.monitoring.traffic import TrafficError, load_traffic, parse_time
from imgclf.serving.prometheus_metrics import Telemetry
from imgclf.serving.recording import open_monitor
from imgclf.serving.settings import Settings, SettingsError
from tests.support import ROOT, tool_env

CLASSES = ["a", "b"]


def _png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, "PNG")
    return buf.getvalue()


def _observe(monitor: Monitor, n: int, value: int = 100) -> None:
    """What Service.classify does for a request of ``n`` accepted uploads."""
    spec = PreprocessSpec(8, "grayscale")
    budget = monitor.budget(10**8)
    uploads, pixels = [], []
    for _ in range(n):
        data = _png(value)
        pixels.append(preprocess(data, spec, budget))
        uploads.append(monitor.upload(data, budget))
    probs = np.tile([0.3, 0.7], (n, 1))
    monitor.observe(uploads, np.stack(pixels), probs, np.ones((n, 4)), CLASSES, "v1")


def _count(db: Path, where: str = "1") -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM requests WHERE {where}").fetchone()[0])


def test_records_features_prediction_and_embedding(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    telemetry = Telemetry()
    monitor = Monitor(MonitorConfig(db=db), telemetry)
    _observe(monitor, 5)
    monitor.close()  # flushes
    traffic = load_traffic(db, 0, 2e9, "v1")
    assert traffic.rows == 5 and traffic.predicted == ["b"] * 5
    assert traffic.confidence == [pytest.approx(0.7)] * 5
    assert traffic.features["width"] == [12] * 5 and traffic.features["format"] == ["PNG"] * 5
    assert traffic.features["brightness"] == [pytest.approx(100 / 255, abs=1e-6)] * 5
    assert traffic.embedding is not None and traffic.embedding.shape == (5, 4)
    assert telemetry.monitor_records._value.get() == 5
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Other versions are counted, not mixed in.
    assert load_traffic(db, 0, 2e9, "v2").other_versions == {"v1": 5}


def test_ring_buffer_keeps_the_newest_rows(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    monitor = Monitor(MonitorConfig(db=db, max_rows=50))
    for value in range(12):  # 12 batches of 10, distinguishable by brightness
        _observe(monitor, 10, value=value * 20)
    monitor.close()
    assert _count(db) == 50
    traffic = load_traffic(db, 0, 2e9, None)
    brightness = sorted(set(traffic.features["brightness"]))
    assert brightness[0] == pytest.approx(7 * 20 / 255, abs=1e-6)  # batches 0-6 rotated out


def test_samples_are_kept_up_to_the_byte_cap(tmp_path: Path) -> None:
    db, samples = tmp_path / "m.db", tmp_path / "samples"
    size = len(_png(100))
    telemetry = Telemetry()
    config = MonitorConfig(db, sample_dir=samples, sample_rate=1.0, sample_max_bytes=3 * size)
    monitor = Monitor(config, telemetry)
    _observe(monitor, 5)
    monitor.close()
    files = sorted(p for p in samples.rglob("*") if p.is_file())
    assert len(files) == 3 and all(p.suffix == ".png" for p in files)
    assert files[0].read_bytes() == _png(100)
    assert _count(db, "sample IS NOT NULL") == 3 and _count(db) == 5  # nothing else lost
    assert telemetry.monitor_samples_skipped._value.get() == 2
    # The cap is in the database: a second process (here: a second recorder) sees it too.
    again = Monitor(config, telemetry)
    _observe(again, 1)
    again.close()
    assert len([p for p in samples.rglob("*") if p.is_file()]) == 3


def test_a_full_queue_drops_records_never_blocks(tmp_path: Path, monkeypatch) -> None:
    """A stuck disk (here: a writer that never drains) costs records, not requests."""
    monkeypatch.setattr("imgclf.monitoring.recorder.QUEUE_BYTES", 3 * 64)  # three 8×8 gray images
    monkeypatch.setattr(Monitor, "_run", lambda self: None)
    telemetry = Telemetry()
    monitor = Monitor(MonitorConfig(db=tmp_path / "m.db"), telemetry)
    for _ in range(40):
        _observe(monitor, 1)
    assert telemetry.monitor_dropped._value.get() == 37
    monitor.close(timeout=0.1)


def test_sizes_are_the_upright_image_and_the_bytes_are_not_read_twice(tmp_path: Path) -> None:
    """A phone photo stored sideways (EXIF orientation 6) is recorded as prepare sees it."""
    monitor = Monitor(MonitorConfig(db=tmp_path / "m.db"))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 90)).save(buf, "JPEG", exif=exif)
    budget = monitor.budget(10**8)
    preprocess(buf.getvalue(), PreprocessSpec(8, "grayscale"), budget)
    upload = monitor.upload(buf.getvalue(), budget)
    assert (upload.width, upload.height, upload.format, upload.sample) == (30, 40, "JPEG", None)
    # Without a noting budget (another caller), the header is read again: same answer.
    again = monitor.upload(buf.getvalue(), DecodeBudget(10**8))
    assert (again.width, again.height, again.format) == (30, 40, "JPEG")
    monitor.close()


def _writer(db: str, n: int) -> None:
    monitor = Monitor(MonitorConfig(db=Path(db)))
    for _ in range(n):
        _observe(monitor, 4)
    monitor.close()


def test_several_processes_share_one_file(tmp_path: Path) -> None:
    """What ``uvicorn --workers 3`` does: three recorders, one database, nothing lost."""
    db = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert _count(db) == 3 * 25 * 4


def test_settings_are_validated_with_the_variable_name(tmp_path: Path) -> None:
    env = {"IMGCLF_MONITOR_DB": str(tmp_path / "m.db")}
    s = Settings.from_env({**env, "IMGCLF_SAMPLE_DIR": str(tmp_path), "IMGCLF_SAMPLE_RATE": "0.5"})
    assert s.sample_rate == 0.5 and s.monitor_db == tmp_path / "m.db"
    bad = [
        ({**env, "IMGCLF_SAMPLE_DIR": "s", "IMGCLF_SAMPLE_RATE": "1.5"}, "IMGCLF_SAMPLE_RATE"),
        ({**env, "IMGCLF_SAMPLE_DIR": "s", "IMGCLF_SAMPLE_RATE": "often"}, "not a number"),
        ({"IMGCLF_SAMPLE_DIR": "s"}, "IMGCLF_MONITOR_DB is not"),
        ({**env, "IMGCLF_SAMPLE_RATE": "0.1"}, "IMGCLF_SAMPLE_DIR is not"),
        ({**env, "IMGCLF_SAMPLE_DIR": "s", "IMGCLF_SAMPLE_MAX_BYTES": "-1"}, ">= 1"),
        ({**env, "IMGCLF_MONITOR_MAX_ROWS": "0"}, "IMGCLF_MONITOR_MAX_ROWS"),
        ({"IMGCLF_MONITOR_DB": str(tmp_path)}, "is a directory"),
    ]
    for values, message in bad:
        with pytest.raises(SettingsError, match=message):
            Settings.from_env(values)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(SettingsError, match=r"IMGCLF_MONITOR_DB=.* cannot be used"):
        open_monitor(Settings(monitor_db=blocked / "m.db"))
    assert open_monitor(Settings()) is None
    future = tmp_path / "future.db"
    Monitor(MonitorConfig(db=future)).close()
    with sqlite3.connect(future) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(SettingsError, match="has monitoring schema 99; this server writes 1"):
        open_monitor(Settings(monitor_db=future))


def test_windows_and_bad_databases_have_clear_errors(tmp_path: Path) -> None:
    assert parse_time("2h", now=10_000) == 10_000 - 7200
    assert parse_time("2026-11-30T06:00:00Z") == pytest.approx(1796018400)
    for text in ("yesterday", "2026-11-30T06:00:00"):
        with pytest.raises(TrafficError):
            parse_time(text)
    with pytest.raises(TrafficError, match="does not exist"):
        load_traffic(tmp_path / "none.db", 0, 1, None)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(TrafficError, match="not an imgclf monitoring database"):
        load_traffic(other, 0, 1, None)


def test_snapshot_is_a_consistent_self_contained_copy(tmp_path: Path) -> None:
    """What a deployment uploads for the scheduled report: rows still in the WAL included."""
    db = tmp_path / "live.db"
    monitor = Monitor(MonitorConfig(db=db))
    keeper = sqlite3.connect(db)  # another process still has it open: no final checkpoint
    keeper.execute("SELECT 1 FROM requests").fetchall()
    _observe(monitor, 7)
    monitor.close()
    assert (tmp_path / "live.db-wal").stat().st_size > 0  # the rows live in the WAL only
    target = tmp_path / "copy" / "snap.db"
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.monitoring.store", "snapshot", str(db), str(target)],
        capture_output=True, text=True, env=tool_env(ROOT), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "7 recorded predictions" in proc.stdout
    assert not (tmp_path / "copy" / "snap.db-wal").exists()
    assert load_traffic(target, 0, 2e9, "v1").rows == 7
    bad = subprocess.run(
        [sys.executable, "-m", "imgclf.monitoring.store", "snapshot", str(tmp_path / "no.db"),
         str(target)],
        capture_output=True, text=True, env=tool_env(ROOT), timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "cannot snapshot" in bad.stderr
    keeper.close()


def test_several_files_read_as_one_window(tmp_path: Path) -> None:
    """One database per replica (hosts cannot share a WAL file): the report reads them all."""
    for name, n in (("a.db", 3), ("b #1?.db", 5)):  # URI-special characters in a name
        monitor = Monitor(MonitorConfig(db=tmp_path / name))
        _observe(monitor, n)
        monitor.close()
    traffic = load_traffic([tmp_path / "a.db", tmp_path / "b #1?.db"], 0, 2e9, "v1")
    assert traffic.rows == 8 and len(traffic.features["brightness"]) == 8
    assert traffic.embedding is not None and traffic.embedding.shape == (8, 4)


def test_every_setting_is_documented() -> None:
    """Each IMGCLF_* variable the server reads appears in the docs (docs/serving.md's table)."""
    import re

    names = set(
        re.findall(r'"(IMGCLF_[A-Z_]+)"', (ROOT / "src/imgclf/serving/settings.py").read_text())
    )
    assert {"IMGCLF_MONITOR_DB", "IMGCLF_SAMPLE_DIR", "IMGCLF_SAMPLE_MAX_BYTES"} <= names
    docs = (ROOT / "docs/serving.md").read_text()
    assert not {n for n in names if n not in docs}


def _open_at_once(path: str, barrier: object, out: object) -> None:
    """Wait for the others, then open the monitoring database (a server worker at start)."""
    from imgclf.monitoring.store import connect

    barrier.wait()  # type: ignore[attr-defined]
    try:
        connect(Path(path)).close()
        out.put("ok")  # type: ignore[attr-defined]
    except sqlite3.Error as exc:
        out.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_several_processes_open_a_new_database_at_once(tmp_path: Path) -> None:
    """The server's workers (IMGCLF_PROCESSES) open the monitoring database together at
    start: none may fail with "database is locked" (the switch to WAL skips SQLite's busy
    handler; the container's second worker died on it)."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):  # a fresh file each time: the race is at creation
        path = tmp_path / f"monitor{attempt}.db"
        barrier, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(str(path), barrier, out))
                 for _ in range(6)]  # fmt: skip
        for proc in procs:
            proc.start()
        results = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(30)
        assert results == ["ok"] * 6, results
