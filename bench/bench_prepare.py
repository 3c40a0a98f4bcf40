"""prepare at scale (issue 21, item 1): the stage beside the decode ceiling, and its memory.

For each size, on generated 640×480 JPEGs (bench/make_photos.py, 224 px RGB), it times
in one run, alternating, (a) the ceiling: PIL draft decode + resize of every file in
one process per core and nothing else, (b) the real stage script
(``stages/prepare.py``: start-up, scan, sha256, decode, hash, sums, near-duplicate
groups, split, writing the arrays) and (c) the write ceiling: one process per core
putting as many bytes as the stage wrote into new files, row by row as the stage's
decoders do, and nothing else. It reports stage ÷ ceiling, stage ÷ (decode + write
ceilings), the stage's CPU time (user, system) and its peak resident set (the largest
of its processes: the main one or a decoder). Then, on the arrays the stage wrote, one
training epoch through ``train``'s own data path against the model-only ceiling (same
model and batches on a random batch in memory).

Why the write ceiling and the pauses: on the Firecracker VM these benches run on, memory
the guest freed more than ~2–4 s earlier has been handed back to the host (free page
reporting), and touching it again costs 4.5–6 s of CPU per GB, where recycling memory
freed a moment ago costs 0.26 s per GB (``docs/large-datasets.md``). Every page of the
prepared arrays is such new memory, so each timed part starts after a pause of
:data:`SETTLE_S` (the state a user's run starts from), the input files are read once
beforehand (every part then reads them from the page cache), and the cost of writing the
output is measured on its own.

    python bench/bench_prepare.py [--sizes 8000,32000] [--repeat 2]
    python bench/bench_prepare.py --quick     # 300 photos, once; records nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
# Seconds to wait before each timed part: long enough for the VM to hand memory freed by
# the previous part back to its host, so no part recycles another's pages (measured:
# memory freed 0.5 s earlier is re-touched at 0.26 s of CPU per GB, 4 s earlier at 4.5).
SETTLE_S = 6.0
# The stage's decoders write one row per image: 224 × 224 × 3 bytes.
ROW_BYTES = SIDE * SIDE * 3


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


def warm(files: list[Path]) -> int:
    """Read every input file once, so every timed part finds them in the page cache."""
    return sum(len(f.read_bytes()) for f in files)


def _write_part(job: tuple[Path, int]) -> int:
    path, rows = job
    row = bytes(range(256)) * (ROW_BYTES // 256) + bytes(ROW_BYTES % 256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for i in range(rows):
            os.pwrite(fd, row, i * ROW_BYTES)
    finally:
        os.close(fd)
    return rows


def write_ceiling(nbytes: int, workers: int, where: Path) -> float:
    """Seconds for ``workers`` processes to write ``nbytes`` into new files in ``where``
    (the page cache, as the stage's decoders do: one ``pwrite`` per row), nothing else.

    The caller removes them and pauses before the next timed part, so that part does not
    recycle their memory.
    """
    where.mkdir(parents=True, exist_ok=True)
    rows = -(-nbytes // ROW_BYTES)
    jobs = [(where / f"part{i}.u8", rows // workers + (i < rows % workers)) for i in range(workers)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        sum(pool.map(_write_part, jobs))
    return time.perf_counter() - start


def stage(raw: Path, work: Path) -> tuple[float, float, dict, tuple[float, float]]:
    """(seconds, peak RSS in MiB, report, (user, system) CPU seconds) of one run of the
    prepare stage script (all its processes)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"image_size": SIDE, "color_mode": "rgb"})
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # A wrapper process whose only child is the stage: its RUSAGE_CHILDREN peak is the
    # largest of the stage's processes (main or a decoder), nothing of this bench's own.
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode;"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(u.ru_maxrss, u.ru_utime, u.ru_stime); sys.exit(r)"
    )
    cmd = [sys.executable, "-c", wrapper, sys.executable, str(ROOT / "stages/prepare.py"),
           str(raw), "prepared", "prepare.json"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    maxrss, user, system = proc.stdout.strip().splitlines()[-1].split()
    # The flat view: headline and detail merged (n_near_dup_groups is in the detail).
    report = expand(json.loads((work / "prepare.json").read_text()))
    return seconds, int(maxrss) / 1024, report, (float(user), float(system))


def train_vs_model_only(prepared: Path, params_file: Path, images: int) -> dict[str, float]:
    """One training epoch on the prepared photos against the model-only ceiling.

    Epoch: the real path of ``train`` (memory-mapped uint8 train split, the augmentation
    of params.yaml, a DataLoader, the model, loss, backward, optimizer step) over the
    first ``images`` training images. Model-only: the same model, batch size and steps
    on one random uint8 batch already in memory (no data at all). Both with 2 torch
    threads in this process, one after the other.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from imgclf.data.prepared_files import load_meta, load_split
    from imgclf.params import validate_params
    from imgclf.training.architectures import build_model
    from imgclf.training.augment import build_augment
    from imgclf.training.loop import AugmentedArrays, _run_epoch, resolve_lr
    from imgclf.training.runtime import Runtime

    torch.set_num_threads(2)
    torch.manual_seed(0)
    params = validate_params(yaml.safe_load(params_file.read_text()))
    meta = load_meta(prepared)
    x, y = load_split(prepared, "train")
    n_train, n = len(y), min(images, len(y))
    size, channels = x.shape[1], x.shape[3]
    classes = len(meta["classes"])
    batch = params.batch_size

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
        model = build_model(params.model, channels, classes, size, meta["mean"], meta["std"])
        opt = torch.optim.AdamW(model.parameters(), lr=resolve_lr(params, model)[0])
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    model, opt, sched = fresh()
    data = AugmentedArrays(x[:n], y[:n], build_augment(params.augment, size), params.seed)
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    rt = Runtime(torch.device("cpu"))
    _run_epoch(model, DataLoader(data, batch_size=batch), rt, params, opt, sched)  # warm-up
    start = time.perf_counter()
    _run_epoch(model, loader, rt, params, opt, sched)
    epoch_s = time.perf_counter() - start

    model, opt, sched = fresh()
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (batch, size, size, channels), np.uint8))
    labels = torch.from_numpy(rng.integers(0, classes, batch))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing)
    model.train()
    steps = -(-n // batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(pixels), labels).backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    model_s = time.perf_counter() - start
    return {
        "images": n,
        "n_train": n_train,
        "epoch_img_s": n / epoch_s,
        "model_img_s": steps * batch / model_s,
        "model": params.model.name,
        "batch": batch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8000", help="numbers of photos, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated photo sets are kept between runs")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="300 photos, once, no record")
    parser.add_argument("--train-images", type=int, default=1024,
                        help="training images the epoch is timed on (quick: 64)")  # fmt: skip
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help="seconds of pause before each timed part (quick: 0)")  # fmt: skip
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat, args.train_images, args.settle = "300", 1, 64, 0.0
    from imgclf.data.prepare import workers

    n_workers = workers()
    rows, train_rows = [], []
    for n in (int(v) for v in args.sizes.split(",")):
        raw = make_photos_parallel(args.data / f"imgclf-bench-photos-640x480-{n}", n)
        files = sorted(raw.rglob("*.jpg"))
        warm(files)
        ceil_s, stage_s, write_s, peaks, cpu = [], [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):
                time.sleep(args.settle)
                ceil_s.append(ceiling(files, n_workers))
                time.sleep(args.settle)
                s, peak, report, used = stage(raw, Path(tmp) / f"run{i}")
                stage_s.append(s)
                peaks.append(peak)
                cpu.append(used)
                prepared = Path(tmp) / f"run{i}/prepared"
                size = sum(f.stat().st_size for f in prepared.iterdir())
                if i:  # run0's arrays stay for the training measurement
                    shutil.rmtree(prepared)
                time.sleep(args.settle)
                write_s.append(write_ceiling(size, n_workers, Path(tmp) / "write"))
                shutil.rmtree(Path(tmp) / "write")  # the next part starts after a pause
                print(f"{n}: ceiling {ceil_s[-1]:.1f} s, stage {s:.1f} s (user {used[0]:.1f} s, "
                      f"system {used[1]:.1f} s), write ceiling {write_s[-1]:.1f} s, "
                      f"peak {peak:.0f} MiB", flush=True)  # fmt: skip
            # After the timed runs: training on what prepare wrote (it competes for the cores).
            t = train_vs_model_only(Path(tmp) / "run0/prepared", Path(tmp) / "run0/params.yaml",
                                    args.train_images)  # fmt: skip
            print(f"{n}: train epoch {t['epoch_img_s']:.0f} img/s, model only "
                  f"{t['model_img_s']:.0f} img/s", flush=True)  # fmt: skip
            train_rows.append([
                f"{n:,}", f"{t['model']}, batch {t['batch']}",
                f"{t['images']:,} of {t['n_train']:,}", f"{t['epoch_img_s']:,.1f}",
                f"{t['model_img_s']:,.1f}", f"**{t['epoch_img_s'] / t['model_img_s']:.2f}**",
                f"{t['n_train'] / t['epoch_img_s']:,.0f} s",
            ])  # fmt: skip
        c, s = min(ceil_s), min(stage_s)
        user, system = cpu[stage_s.index(s)]
        pairs = ", ".join(f"{a / b:.2f}" for a, b in zip(ceil_s, stage_s, strict=True))
        # Per run, not best with best: the VM's memory state moves the write cost by 4x
        # between runs, and the stage pays whatever state its own run met.
        runs = zip(ceil_s, stage_s, write_s, strict=True)
        with_write = ", ".join(f"{(a + w_) / b:.2f}" for a, b, w_ in runs)
        writes = ", ".join(f"{w_:.1f}" for w_ in write_s)
        systems = ", ".join(f"{u[1]:.1f}" for u in cpu)
        rows.append([f"{n:,}", n_workers, f"{n / c:,.0f} img/s ({c:.1f} s)", f"{writes} s",
                     f"{n / s:,.0f} img/s ({s:.1f} s)", f"**{c / s:.2f}** ({pairs})",
                     with_write, f"{user:.1f} + {system:.1f} s (system in each run: {systems})",
                     f"{max(peaks):,.0f} MiB", f"{size / 2**20:,.0f} MiB",
                     report["n_near_dup_groups"]])  # fmt: skip
    header = ["photos", "processes", "ceiling (draft decode + resize)",
              "write ceiling (the prepared bytes into new files; each run)", "prepare stage",
              "stage ÷ ceiling (best; each pair)", "stage ÷ (decode + write ceilings), each run",
              "stage CPU, best run (user + system)", "peak RSS (largest process)", "prepared size",
              "near-dup groups"]  # fmt: skip
    body = (
        f"640×480 JPEGs (bench/make_photos.py), `image_size: {SIDE}`, `color_mode: rgb`, "
        "params.yaml's other defaults. Best of "
        f"{args.repeat} alternating runs each, each part after a {args.settle:g} s pause and "
        "with the input files already in the page cache; the stage time is the whole stage "
        "script (interpreter start-up and imports included). Goal: stage ÷ ceiling ≥ 0.7, "
        "peak RSS ≤ 2 GiB and independent of the number of images. The write ceiling is what "
        "putting the stage's output bytes into new files costs on this machine alone: on this "
        "VM mostly system CPU for memory new to the guest, 0.3–6 s per GB depending on what "
        "the guest freed shortly before (docs/large-datasets.md), so it is shown per run and "
        "set beside the stage of the same run. Near-dup "
        "groups: all photos are distinct, so these are the hash's false pairs at the default "
        "threshold.\n\n"
        + table(header, rows)
        + "\n\nTraining on those photos: one epoch through `train`'s own path (the "
        "memory-mapped uint8 split, params.yaml's augmentation, a DataLoader, forward, "
        "backward, optimizer step) against the model-only ceiling (the same model, batch "
        "and steps on one random batch already in memory), 2 torch threads, timed on the "
        "first training images; the whole-split epoch is projected from that rate.\n\n"
        + table(
            [
                "photos",
                "model",
                "images timed",
                "epoch img/s",
                "model only img/s",
                "epoch ÷ model only",
                "epoch of the whole train split",
            ],
            train_rows,
        )
    )
    results.report(args, "prepare", "prepare at scale vs the decode ceiling", body,
                   "python bench/bench_prepare.py --sizes 8000,32000")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
