"""prepare at scale (issue 21, item 1): the stage beside the decode ceiling, and its memory.

For each size, on generated 640×480 JPEGs (bench/make_photos.py, 224 px RGB), it times
in one run, alternating, (a) the ceiling: PIL draft decode + resize of every file in
one process per core and nothing else, and (b) the real stage script
(``stages/prepare.py``: start-up, scan, sha256, decode, hash, sums, near-duplicate
groups, split, writing the arrays), and reports stage ÷ ceiling and the stage's peak
resident set (the largest of its processes: the main one or a decoder).

    python bench/bench_prepare.py [--sizes 8000,32000] [--repeat 2]
    python bench/bench_prepare.py --quick     # 300 photos, once; records nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import results
import yaml
from common import ROOT, table
from make_photos import make_photos_parallel
from PIL import Image

from imgclf.data.prepare import keep_image_memory
from imgclf.jsonio import expand

SIDE = 224


def _ceiling_part(paths: list[Path]) -> int:
    # The decoder configured as the stage configures it (Pillow keeps freed memory
    # blocks): the ceiling is the best this decoder does, not its defaults.
    keep_image_memory()
    for path in paths:
        with Image.open(path) as img:
            img.draft("RGB", (SIDE, SIDE))
            img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return len(paths)


def ceiling(files: list[Path], workers: int) -> float:
    """Seconds to draft-decode and resize every file in ``workers`` processes."""
    step = 64
    parts = [files[i : i + step] for i in range(0, len(files), step)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        sum(pool.map(_ceiling_part, parts))
    return time.perf_counter() - start


def stage(raw: Path, work: Path) -> tuple[float, float, dict]:
    """(seconds, peak RSS in MiB, report) of one run of the prepare stage script."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"image_size": SIDE, "color_mode": "rgb"})
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # A wrapper process whose only child is the stage: its RUSAGE_CHILDREN peak is the
    # largest of the stage's processes (main or a decoder), nothing of this bench's own.
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)"
    )
    cmd = [sys.executable, "-c", wrapper, sys.executable, str(ROOT / "stages/prepare.py"),
           str(raw), "prepared", "prepare.json"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    peak = int(proc.stdout.strip().splitlines()[-1]) / 1024
    # The flat view: headline and detail merged (n_near_dup_groups is in the detail).
    return seconds, peak, expand(json.loads((work / "prepare.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8000", help="numbers of photos, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated photo sets are kept between runs")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="300 photos, once, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = "300", 1
    from imgclf.data.prepare import workers

    n_workers = workers()
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        raw = make_photos_parallel(args.data / f"imgclf-bench-photos-640x480-{n}", n)
        files = sorted(raw.rglob("*.jpg"))
        ceil_s, stage_s, peaks = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):
                ceil_s.append(ceiling(files, n_workers))
                s, peak, report = stage(raw, Path(tmp) / f"run{i}")
                stage_s.append(s)
                peaks.append(peak)
                print(f"{n}: ceiling {ceil_s[-1]:.1f} s, stage {s:.1f} s, peak {peak:.0f} MiB",
                      flush=True)  # fmt: skip
            size = sum(f.stat().st_size for f in (Path(tmp) / "run0/prepared").iterdir())
        c, s = min(ceil_s), min(stage_s)
        pairs = ", ".join(f"{a / b:.2f}" for a, b in zip(ceil_s, stage_s, strict=True))
        rows.append([f"{n:,}", n_workers, f"{n / c:,.0f} img/s ({c:.1f} s)",
                     f"{n / s:,.0f} img/s ({s:.1f} s)", f"**{c / s:.2f}** ({pairs})",
                     f"{max(peaks):,.0f} MiB", f"{size / 2**20:,.0f} MiB",
                     report["n_near_dup_groups"]])  # fmt: skip
    header = ["photos", "processes", "ceiling (draft decode + resize)", "prepare stage",
              "stage ÷ ceiling (best; each pair)", "peak RSS (largest process)", "prepared size",
              "near-dup groups"]  # fmt: skip
    body = (
        f"640×480 JPEGs (bench/make_photos.py), `image_size: {SIDE}`, `color_mode: rgb`, "
        "params.yaml's other defaults. Best of "
        f"{args.repeat} alternating runs each; the stage time is the whole stage script "
        "(interpreter start-up and imports included). Goal: stage ÷ ceiling ≥ 0.7, peak "
        "RSS ≤ 2 GiB and independent of the number of images. Near-dup groups: all photos are "
        "distinct, so these are the hash's false pairs at the default threshold.\n\n"
        + table(header, rows)
    )
    results.report(args, "prepare", "prepare at scale vs the decode ceiling", body,
                   "python bench/bench_prepare.py --sizes 8000,32000")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
