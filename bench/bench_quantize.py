"""int8 vs fp32, model only (issue 12, item 4): where does ``export.quantize: int8`` pay?

For each photo architecture (:mod:`photo_models`, 224 px RGB) the fp32 ONNX file
and its static int8 version (:func:`imgclf.artifact.int8_export.quantize_int8`, calibrated on 64
training images, exactly what ``train`` does) are timed at batch 1 on one thread,
at both graph optimisation levels the project uses (EXTENDED: portable numerics;
ALL: fast numerics), as CPU time of the calling thread (robust to other jobs on a
shared machine), in interleaved rounds. The speed-up that
:data:`imgclf.artifact.int8_policy.MEASURED_SPEEDUP` records is best int8 ÷ fastest fp32.
Baseline: the portable fp32 file (EXTENDED); ceiling to beat: the fastest fp32 (ALL),
both measured in the same rounds. Test accuracy of both files is printed too (the model
is trained briefly, so only the difference means something).

    python bench/bench_quantize.py [--models resnet18,mobilenet_v3_small]  # "quantize"
    python bench/bench_quantize.py --quick    # a small CNN, one round; records nothing
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import results
from common import ROOT, table
from photo_models import ARCHITECTURES, build

from imgclf.artifact.int8_export import calibration_set, quantize_int8
from imgclf.data.prepared_files import load_split


def ms_per_image(session, name: str, x: np.ndarray, runs: int) -> float:
    session.run(None, {name: x})
    start = time.thread_time()
    for _ in range(runs):
        session.run(None, {name: x})
    return (time.thread_time() - start) / runs * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ARCHITECTURES))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small CNN, one round, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds = "small_cnn", 1
    import onnxruntime as ort

    levels = {"EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}  # fmt: skip
    rows = []
    for arch in args.models.split(","):
        model_dir = build(args.work, arch, images=48 if args.quick else 160)
        prepared = model_dir.parent / "prepared"
        train_x, _ = load_split(prepared, "train")
        test_x, test_y = load_split(prepared, "test")
        fp32 = (model_dir / "model.onnx").read_bytes()
        files = {"fp32": fp32, "int8": quantize_int8(fp32, calibration_set(train_x))}
        x = np.ascontiguousarray(test_x[:1])
        runs = 5 if args.quick else (10 if arch == "resnet18" else 40)
        sessions = {}
        for kind, data in files.items():
            for level, value in levels.items():
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
                options.graph_optimization_level = value
                options.add_session_config_entry("session.set_denormal_as_zero", "1")
                sessions[kind, level] = ort.InferenceSession(data, options)
        name = sessions["fp32", "ALL"].get_inputs()[0].name
        times: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):  # interleaved: a change of machine load hits every variant
            for key, session in sessions.items():
                times[key].append(ms_per_image(session, name, x, runs))
        ms = {k: float(np.median(v)) for k, v in times.items()}
        acc = {}
        for kind in files:
            s = sessions[kind, "EXTENDED"]
            probs = np.concatenate([s.run(None, {name: np.ascontiguousarray(test_x[i:i + 32])})[0]
                                    for i in range(0, len(test_x), 32)])  # fmt: skip
            acc[kind] = float((probs.argmax(1) == test_y).mean())
        fastest_fp32 = min(ms["fp32", lv] for lv in levels)
        best_int8 = min(ms["int8", lv] for lv in levels)
        rows.append([arch, f"{ms['fp32', 'EXTENDED']:.2f}", f"{ms['fp32', 'ALL']:.2f}",
                     f"{ms['int8', 'EXTENDED']:.2f}", f"{ms['int8', 'ALL']:.2f}",
                     f"**{fastest_fp32 / best_int8:.2f}×**",
                     f"{ms['fp32', 'EXTENDED'] / best_int8:.2f}×",
                     f"{acc['fp32']:.3f} → {acc['int8']:.3f}", len(test_y)])  # fmt: skip
        print(rows[-1], flush=True)
    header = ["model", "fp32 EXTENDED ms", "fp32 ALL ms", "int8 EXTENDED ms", "int8 ALL ms",
              "int8 speed-up (best int8 ÷ fastest fp32)", "vs portable fp32 (EXTENDED)",
              "test acc fp32 → int8", "test n"]  # fmt: skip
    body = (
        "Model only: batch 1, 1 intra-op thread, CPU time of the calling thread per image, "
        f"median of {args.rounds} interleaved rounds. int8 = static QDQ, per-channel, "
        "calibrated on 64 training images (`imgclf.artifact.int8_export`, what `train` does with "
        "`export.quantize: int8`). `imgclf.artifact.int8_policy.MEASURED_SPEEDUP` records the bold "
        "column; int8 is offered where it is >= 1.5×.\n\n" + table(header, rows)
    )
    results.report(args, "quantize", "int8 vs fp32, model only", body,
                   "python bench/bench_quantize.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
