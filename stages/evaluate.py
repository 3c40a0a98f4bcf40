"""Stage evaluate: score the ONNX artifact on the test split (no torch).

Usage: python stages/evaluate.py PREPARED_DIR MODEL_DIR METRICS_DIR
"""

import sys
from pathlib import Path

from imgclf.evaluation.baseline import warning
from imgclf.evaluation.evaluate import evaluate
from imgclf.params import Params
from imgclf.pipeline.stage import run_stage


def main(params: Params) -> None:
    prepared, model_dir, out = map(Path, sys.argv[1:4])
    m = evaluate(params, prepared, model_dir, out)
    print(f"test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f}")
    b = m["baseline"]
    print(
        f"baselines: linear accuracy {b['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f}; "
        f"majority class accuracy {b['majority_accuracy']:.4f}"
    )
    alarm = warning(m)
    if alarm:  # stderr too, so it shows in `dvc exp run` and CI logs even when stdout is quiet
        print(alarm, file=sys.stderr)


if __name__ == "__main__":
    run_stage("evaluate", main)
