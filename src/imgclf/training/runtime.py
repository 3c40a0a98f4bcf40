"""Where a training process runs: device, seeds, threads, portable numerics, its DDP rank.

Set up once, before the first tensor is made, because every one of these choices changes
the weights: the seeds, the thread count and the CPU kernels (``imgclf.training.numerics``)
are what make the CPU path give a bit-identical ``dvc.lock`` on any x86-64.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from imgclf.params import Params
from imgclf.training import numerics


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: device, and its place in a DDP group (if any)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    numerics: str = "portable-cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(params: Params) -> Runtime:
    """Pick the device, seed everything, pin threads, join the DDP group under torchrun."""
    t = params.train
    if t.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    use_cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        _deterministic_cpu()
    label = numerics.apply(t.numerics, device.type)
    # train.threads is the machine's budget: DDP processes on the CPU share it.
    torch.set_num_threads(t.threads if use_cuda else max(1, t.threads // world_size))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    random.seed(params.seed)
    np.random.seed(params.seed)
    torch.manual_seed(params.seed)
    return Runtime(device, rank, world_size, label)


def _deterministic_cpu() -> None:
    """Deterministic algorithms, without the 2 s that ``use_deterministic_algorithms`` costs.

    ``torch.use_deterministic_algorithms`` imports ``torch._inductor`` only to set a
    ``torch.compile`` option this stage never uses: 1.7 s of a 13 s train stage here.
    The flag it sets for eager kernels is the one below (checked by
    tests/unit/test_numerics.py). Filling uninitialized memory (the deterministic mode's
    guard against kernels that read it) is switched off: 2,800 ``fill_`` calls per epoch,
    8 % of the loop, and the same weights with or without it (the cross-CPU and
    committed-lock tests would see a kernel that depends on garbage).
    """
    torch._C._set_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
