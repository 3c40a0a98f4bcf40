"""Stage train: fit the model, write the checkpoint and the ONNX serving artifact.

Usage: python stages/train.py PREPARED_DIR MODEL_DIR LIVE_DIR
With ``train.processes: N > 1`` it relaunches itself under torchrun (DDP).
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning, leaving the cores to augmentation
# between steps (measured: ~3x faster epochs with albumentations on 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

from imgclf.params import Params
from imgclf.pipeline.stage import run_stage
from imgclf.training import numerics


def main(params: Params) -> None:
    # Before torch loads: which CPU kernels run decides the weights (see numerics.py).
    numerics.configure(params.train.numerics)
    from imgclf.training.distributed import relaunch_under_torchrun
    from imgclf.training.loop import train

    if relaunch_under_torchrun(params.train.processes, sys.argv):
        return
    prepared, model_dir, live_dir = map(Path, sys.argv[1:4])
    card = train(params, prepared, model_dir, live_dir)
    if card:
        t = card["training"]
        print(
            f"best epoch {t['best_epoch']}/{t['epochs_run']}: val accuracy {t['best_val_accuracy']}"
        )


if __name__ == "__main__":
    run_stage("train", main)
