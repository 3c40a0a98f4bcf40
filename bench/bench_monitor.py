"""What recording costs the API: req/s with monitoring off vs on, as a ratio within one run.

Three real uvicorn servers on the same model: monitoring off (the baseline and, for
this question, the ceiling), ``IMGCLF_MONITOR_DB`` on, and on with 1 % of uploads
sampled to disk. The load (:mod:`loadgen`, closed-loop keep-alive) alternates between
them in rounds (off, on, sampled, off, on, …), so a change in the machine's load during
the run hits all three alike; the per-round ratio to "off" is the overhead. Server CPU
per request (from /proc) is reported too, being less sensitive to neighbours than
req/s, and so are the in-process CPU of ``Service.classify`` off vs on and the
recorder's two parts alone. Goal: recording costs < 5 % of req/s.

Two uploads: the 8×8 digits PNG (inference is tiny, so the recorder's share is the
largest it can be) and a 600×400 photo-like JPEG (decoding dominates, as in real use).

    python bench/bench_monitor.py             # ~5 min; replaces the "monitor" section
    python bench/bench_monitor.py --quick     # seconds; records nothing
    python bench/bench_monitor.py --ship      # ~1 min; the "monitor-shipping" section

``--ship`` (issue 24, fleet shipping) measures instead: the in-process CPU per request
with recording to the local database vs shipping shards (``IMGCLF_MONITOR_URL``, a local
folder target, 2-second shards so that rotation and upload are inside the measurement),
and the shard formats weighed for the shipping (SQLite, gzipped SQLite, gzipped JSON
lines): bytes per record and CPU to write one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common
import loadgen
import numpy as np
import results
from common import ROOT

GOAL_OVERHEAD = 0.05  # recording may cost at most 5 % of req/s
MODES = {
    "off": {},
    "monitor": {"IMGCLF_MONITOR_DB": "{tmp}/monitor.db"},
    "monitor + 1 % samples": {
        "IMGCLF_MONITOR_DB": "{tmp}/sampled.db",
        "IMGCLF_SAMPLE_DIR": "{tmp}/samples",
        "IMGCLF_SAMPLE_RATE": "0.01",
    },
}


def lscpu_line() -> str:
    """`lscpu` model name and core count, and the load average now."""
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable, load average {load}"


def photo() -> bytes:
    """A 600×400 JPEG with texture (so it decodes like a photo, not like a flat block)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:400, 0:600]
    base = np.stack([x * 0.4, y * 0.6, (x + y) * 0.2], -1) + rng.normal(0, 20, (400, 600, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def start(mode: str, model_dir: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = common.free_port()
    env = common.server_env(model_dir, **{k: v.format(tmp=tmp) for k, v in MODES[mode].items()})
    return common.start_ready(common.uvicorn_cmd(port), port, env, timeout=60), port


def measure(args: argparse.Namespace, image_name: str, image: bytes, tmp: Path) -> list[list]:
    """Rounds of load on each mode in turn; one table row per mode.

    The order of the modes rotates from round to round, and the ratio to "off" is taken
    per round and then the median: a neighbour's burst of CPU use lands in one round
    and moves one ratio, not the result.
    """
    servers = {mode: start(mode, args.model_dir, tmp) for mode in MODES}
    modes = list(MODES)
    # per mode and round: req/s, server CPU s per request, errors, the client's CPU share
    runs: dict[str, list[tuple[float, float, int, float]]] = {m: [] for m in modes}
    try:
        for _, port in servers.values():  # warm-up
            request = loadgen.multipart_request("/predict", "file", image, 1, port)
            loadgen.run(port, request, 4, requests=args.warmup)
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                proc, port = servers[mode]
                request = loadgen.multipart_request("/predict", "file", image, 1, port)
                load = loadgen.run(port, request, args.concurrency, requests=args.requests,
                                   server_pid=proc.pid)  # fmt: skip
                runs[mode].append((load.rps, load.server_cpu_ms / 1000, load.errors,
                                   load.client_share))  # fmt: skip
    finally:
        common.stop(*(proc for proc, _ in servers.values()))
    rows = []
    for mode in modes:
        rps = [x[0] for x in runs[mode]]
        ratios = [a / b[0] for a, b in zip(rps, runs["off"], strict=True)]
        cpu = [x[1] / b[1] for x, b in zip(runs[mode], runs["off"], strict=True)]
        rows.append([
            image_name, mode, args.requests * args.rounds, sum(x[2] for x in runs[mode]),
            f"{np.median(rps):.0f}", f"{np.median(ratios):.3f}",
            f"{min(ratios):.3f}–{max(ratios):.3f}",
            f"{1000 * np.median([x[1] for x in runs[mode]]):.3f}", f"{np.median(cpu):.3f}",
            f"{np.median([x[3] for x in runs[mode]]):.0%}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def classify_once(svc: object, loop: asyncio.AbstractEventLoop, image: bytes) -> None:
    """One upload through the service as the API runs it: work pool, shared model call.

    ``Service.classify`` hands its decoded images to the coalescer and answers with a
    future of the event loop, so in-process timing drives it through ``classify_async``
    on one loop kept for the whole measurement (its per-call cost is the same for every
    service compared).
    """
    (result,) = loop.run_until_complete(
        svc.classify_async([bytearray(image)], loop.time() + 60.0)  # type: ignore[attr-defined]
    )
    if isinstance(result, Exception):
        raise result


def cpu_per_request(args: argparse.Namespace, image: bytes, tmp: Path) -> tuple[float, float]:
    """Process CPU µs per request through ``Service.classify``, monitoring off and on.

    No HTTP and no second process: CPU time counts only this process's work (the writer
    thread's included), so other jobs on the machine move it far less than req/s. Rounds
    alternate the two services; the medians are returned.
    """
    from imgclf.monitoring.recorder import FLUSH_S
    from imgclf.serving.service import Service
    from imgclf.serving.settings import Settings

    off = Service(Settings(model_dir=args.model_dir, workers=1))
    on = Service(Settings(model_dir=args.model_dir, workers=1, monitor_db=tmp / "inproc.db"))
    times: dict[str, list[float]] = {"off": [], "on": []}
    loop = asyncio.new_event_loop()
    try:
        for svc in (off, on):
            svc.load()
            for _ in range(args.warmup):
                classify_once(svc, loop, image)
        for r in range(args.rounds):
            for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                svc = off if name == "off" else on
                start = time.process_time()
                for _ in range(args.requests):
                    classify_once(svc, loop, image)
                time.sleep(1.5 * FLUSH_S)  # the writer commits this round's records
                times[name].append((time.process_time() - start) / args.requests * 1e6)
    finally:
        loop.close()
        for svc in (off, on):
            svc.pool.shutdown()
            if svc.monitor is not None:
                svc.monitor.close()
    return float(np.median(times["off"])), float(np.median(times["on"]))


def component_costs(model_dir: Path, image: bytes, tmp: Path, n: int) -> tuple[float, float]:
    """Best-of-5 µs of the recorder's two parts: per request in the worker, per image written.

    The steadiest number on a shared machine (timeit's minimum): the worker's part is the
    noting budget, :meth:`Monitor.upload` and :meth:`Monitor.observe`; the writer's part
    is computing the features and inserting the rows, for a batch of ``n`` images.
    """
    import timeit

    from imgclf.artifact.predictor import Predictor
    from imgclf.data.preprocessing import preprocess
    from imgclf.monitoring.recorder import Monitor, MonitorConfig

    predictor = Predictor(model_dir)
    monitor = Monitor(MonitorConfig(tmp / "components.db"))
    monitor._stop.set()  # no writer thread: this thread writes the batches itself
    monitor._writer.join()
    try:
        budget = monitor.budget(1 << 30)
        batch = preprocess(image, predictor.spec, budget)[None]
        img = budget.last
        probs, emb = predictor.predict_with_embedding(batch)

        def worker() -> None:
            b = monitor.budget(1 << 30)
            b.last = img
            monitor.observe([monitor.upload(image, b)], batch, probs, emb, predictor.classes, "v")

        runs = timeit.repeat(worker, number=n, repeat=5)
        pending, monitor._pending = monitor._pending, []
        worker_us = min(runs) / n * 1e6
        writes = []
        for start in range(0, len(pending), n):
            t = time.perf_counter()
            monitor._write(pending[start : start + n])
            writes.append((time.perf_counter() - t) / n * 1e6)
    finally:
        monitor.close()
    return worker_us, min(writes)


def ship_cpu(args: argparse.Namespace, image: bytes, tmp: Path) -> dict[str, float]:
    """Process CPU µs per request through ``Service.classify``: off, local db, shipping.

    The shipping service writes 2-second shards to a folder (a file copy per upload: the
    gs:// upload's own CPU, per shard, is amortised over ``IMGCLF_MONITOR_SHARD_S``);
    its writer and uploader threads run in this process, so their CPU is counted.
    """
    from imgclf.monitoring.recorder import FLUSH_S
    from imgclf.serving.service import Service
    from imgclf.serving.settings import Settings

    base = Settings(model_dir=args.model_dir, workers=1)
    services = {
        "off": Service(base),
        "local db": Service(replace(base, monitor_db=tmp / "ship-local.db")),
        "shipping": Service(
            replace(
                base,
                monitor_url=str(tmp / "bucket"),
                monitor_shard_s=2.0,
                monitor_spool=tmp / "spool",
            )
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in services}
    loop = asyncio.new_event_loop()
    try:
        for svc in services.values():
            svc.load()
            for _ in range(args.warmup):
                classify_once(svc, loop, image)
        names = list(services)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                svc = services[name]
                start = time.process_time()
                for _ in range(args.requests):
                    classify_once(svc, loop, image)
                time.sleep(2.5 * FLUSH_S)  # the writer commits (and a shard closes, ships)
                times[name].append((time.process_time() - start) / args.requests * 1e6)
    finally:
        loop.close()
        for svc in services.values():
            svc.pool.shutdown()
            if svc.monitor is not None:
                svc.monitor.close()
    shards = sorted((tmp / "bucket").rglob("*.db"))
    print(f"shipping wrote {len(shards)} shards", flush=True)
    return {name: float(np.median(t)) for name, t in times.items()}


def shard_cost(tmp: Path, n: int = 30) -> float:
    """CPU ms per shard: open one (schema), close it, upload it to a folder (best of 3)."""
    from imgclf.monitoring.shipping import ShardSpool, ShipConfig

    best = float("inf")
    for i in range(3):
        config = ShipConfig(url=str(tmp / f"cost-bucket{i}"), spool=tmp / f"cost-spool{i}")
        spool = ShardSpool(config, None, lambda *_: None)
        start = time.process_time()
        for _ in range(n):
            conn = spool.connection()
            ts = time.time()
            conn.execute(
                "INSERT INTO requests (ts, model_version, label, confidence, format, "
                "feature_set, features) VALUES (?, 'v', 'a', 1, 'PNG', 1, x'00')",
                (ts,),
            )
            spool.wrote(ts, ts, 1)
            spool.rotate()
        spool.close(60)
        best = min(best, (time.process_time() - start) / n * 1000)
    return best


def varied_rows(model_dir: Path, tmp: Path, limit: int = 1500) -> Path:
    """A monitoring database of ``limit`` different digits images (real features, embeddings)."""
    from imgclf.artifact.predictor import Predictor
    from imgclf.data.preprocessing import preprocess
    from imgclf.monitoring.recorder import Monitor, MonitorConfig

    predictor = Predictor(model_dir)
    db = tmp / "formats.db"
    monitor = Monitor(MonitorConfig(db))
    raw = model_dir.resolve().parent / "data" / "raw" / "digits"
    for path in sorted(raw.glob("*/*.png"))[:limit]:
        data = path.read_bytes()
        budget = monitor.budget(1 << 30)
        batch = preprocess(data, predictor.spec, budget)[None]
        probs, emb = predictor.predict_with_embedding(batch)
        upload = monitor.upload(data, budget)
        monitor.observe([upload], batch, probs, emb, predictor.classes, "v")
    monitor.close()
    return db


def shard_formats(db: Path, tmp: Path) -> list[list]:
    """Bytes per record and µs to write one, for the shard formats without new packages.

    Rows are those of a real shard (digits features + 64-float embedding). Parquet is
    not measured: it needs pyarrow, which the serving image must not gain.
    """
    import base64
    import gzip
    import json
    import sqlite3

    from imgclf.monitoring.store import connect

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT ts, model_version, label, confidence, format, feature_set, features, "
            "embedding, sample FROM requests"
        ).fetchall()
    n = len(rows)
    out: list[list] = []

    def sqlite_shard(path: Path) -> None:
        c = connect(path)
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT OR IGNORE INTO feature_sets (id, names) VALUES (1, 'x')")
        c.executemany(
            "INSERT INTO requests (ts, model_version, label, confidence, format, feature_set, "
            "features, embedding, sample) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        c.execute("COMMIT")
        c.execute("PRAGMA journal_mode = DELETE")
        c.close()

    def jsonl(blobs_as_lists: bool) -> bytes:
        lines = []
        for ts, ver, label, conf, fmt, fs, feat, emb, sample in rows:
            if blobs_as_lists:
                f = np.frombuffer(feat, "<f4").round(6).tolist()
                e = None if emb is None else np.frombuffer(emb, "<f4").round(6).tolist()
            else:
                f = base64.b64encode(feat).decode()
                e = None if emb is None else base64.b64encode(emb).decode()
            lines.append(json.dumps([ts, ver, label, conf, fmt, fs, f, e, sample]))
        return "\n".join(lines).encode()

    for name in (
        "SQLite",
        "SQLite, gzip",
        "JSON lines (floats), gzip",
        "JSON lines (base64), gzip",
    ):
        best, size = float("inf"), 0
        for i in range(3):
            path = tmp / f"fmt-{i}-{len(out)}.db"
            t = time.process_time()
            if name.startswith("SQLite"):
                sqlite_shard(path)
                data = path.read_bytes()
                if "gzip" in name:
                    data = gzip.compress(data, 6)
            else:
                data = gzip.compress(jsonl("floats" in name), 6)
            best = min(best, time.process_time() - t)
            size = len(data)
        out.append([name, n, f"{size / n:.0f}", f"{best / n * 1e6:.1f}",
                    "stdlib: sqlite3" if name.startswith("SQLite") else "stdlib: json, gzip",
                    "yes (the same SQL as one file)" if name == "SQLite" else
                    ("after gunzip" if "SQLite" in name else "a second reader")])  # fmt: skip
        print(out[-1], flush=True)
    return out


def main_ship(args: argparse.Namespace, images: dict[str, bytes]) -> int:
    """``--ship``: CPU per request with shipping on vs off, and the shard formats."""
    rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in images.items():
            t = ship_cpu(args, image, Path(tmp) / name.split()[0])
            rows.append([name, f"{t['off']:.1f}", f"{t['local db']:.1f}", f"{t['shipping']:.1f}",
                         f"{t['shipping'] - t['local db']:+.1f}",
                         f"{(t['shipping'] - t['off']) / t['off']:+.1%}"])  # fmt: skip
            print(rows[-1], flush=True)
        per_shard_ms = shard_cost(Path(tmp))
        fmt = shard_formats(varied_rows(args.model_dir, Path(tmp)), Path(tmp))
    header = ["upload", "off µs/req", "local db µs/req", "shipping µs/req",
              "shipping − local db µs", "shipping vs off"]  # fmt: skip
    fmt_header = ["format", "records", "bytes/record", "CPU µs/record to write",
                  "needs", "read by the report as is"]  # fmt: skip
    body = "\n".join([
        f"- machine (lscpu): {lscpu_line()}",
        f"- in-process `Service.classify`, {args.rounds} rounds × {args.requests} requests per "
        "mode (order rotating), median; shipping: 2-second shards to a local folder (rotation "
        "and upload inside the measurement), writer and uploader threads counted",
        "",
        common.table(header, rows),
        "",
        f"Fixed CPU per shard (open with the schema, close, upload to a folder; best of 3): "
        f"{per_shard_ms:.2f} ms, i.e. {per_shard_ms * 1000 / 3000:.2f} µs per request at the "
        "default 300-s shards and 10 req/s per replica (the 2-s shards above pay it every "
        "~1,000 requests: the worst case).",
        "",
        "Shard formats, on 1,500 different digits images recorded by the real recorder "
        "(best of 3):",
        "",
        common.table(fmt_header, fmt),
    ])  # fmt: skip
    results.report(args, "monitor-shipping", "Fleet shipping overhead (bench_monitor.py --ship)",
                   body, "python bench/bench_monitor.py --ship")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Monitoring overhead on /predict.")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--requests", type=int, default=1000, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a few hundred requests")
    parser.add_argument("--ship", action="store_true", help="shipping on vs off (in-process)")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.warmup = 100, 1, 20
    if not (args.model_dir / "model.onnx").is_file():
        print(f"{args.model_dir}/model.onnx missing: run `dvc repro` first", file=sys.stderr)
        return 2
    raw = args.model_dir.resolve().parent / "data" / "raw" / "digits"
    digits = next(iter(sorted(raw.glob("*/*.png"))), None)
    images = {"digits 8×8 PNG": digits.read_bytes()} if digits else {}
    if not (args.quick and images):  # --quick: one upload kind is enough to prove it runs
        images["600×400 JPEG"] = photo()
    if args.ship:
        if not args.quick:
            args.requests, args.rounds = min(args.requests, 1000), min(args.rounds, 5)
        return main_ship(args, images)
    start_line = lscpu_line()
    rows: list[list] = []
    cpu_rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in images.items():
            rows += measure(args, name, image, Path(tmp))
            http_cpu_us = 1000 * float(rows[-3][7])  # the "off" server's CPU per request
            off_us, on_us = cpu_per_request(args, image, Path(tmp))
            worker_us, writer_us = component_costs(args.model_dir, image, Path(tmp), args.requests)
            added, parts = on_us - off_us, worker_us + writer_us
            cpu_rows.append([name, f"{off_us:.1f}", f"{on_us:.1f}", f"{added:+.1f}",
                             f"{http_cpu_us:.0f}", f"{added / http_cpu_us:+.1%}",
                             f"{worker_us:.1f} + {writer_us:.1f}",
                             f"{parts / http_cpu_us:.1%}"])  # fmt: skip
            print(cpu_rows[-1], flush=True)
    worst = min(float(r[5]) for r in rows if r[1] != "off")
    verdict = "met" if worst >= 1 - GOAL_OVERHEAD else "NOT met"
    cpu_header = ["upload", "off µs/req", "monitor µs/req", "added µs", "HTTP request µs",
                  "added share", "parts: worker + writer µs", "parts' share"]  # fmt: skip
    header = ["upload", "mode", "requests", "errors", "req/s (median)", "req/s ratio to off",
              "range of rounds", "server CPU ms/req", "CPU ratio to off",
              "client CPU share"]  # fmt: skip
    lines = [
        f"- machine (lscpu): {start_line}; at the end: {lscpu_line().rsplit(', ', 1)[1]}",
        f"- {args.rounds} rounds × {args.requests} /predict requests per mode, concurrency "
        f"{args.concurrency}; the modes take turns within each round (order rotating), ratios "
        "to off are per round, then the median; one uvicorn worker each",
        f"- goal (recording costs < {GOAL_OVERHEAD:.0%} of req/s): {verdict} "
        f"(lowest median req/s ratio {worst:.3f})",
        "",
        common.table(header, rows),
        "",
        "CPU per request in-process (`Service.classify` alone, no HTTP; writer thread included;"
        " median of the rounds), and the recorder's share of a whole HTTP request's server CPU"
        " (the off row above); then the recorder's two parts alone, best of 5 timeit runs"
        " (worker: note, draw, queue; writer: features and insert, per image):",
        "",
        common.table(cpu_header, cpu_rows),
    ]
    body = "\n".join(lines)
    results.report(args, "monitor", "Monitoring overhead (bench_monitor.py)", body,
                   "python bench/bench_monitor.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
