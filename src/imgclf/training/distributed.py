"""Multi-process training through PyTorch's own launcher (torchrun), nothing home-made."""

from __future__ import annotations

import os


def relaunch_under_torchrun(processes: int, argv: list[str]) -> bool:
    """Run ``argv`` as ``processes`` DDP workers on this machine; True if it did.

    Already under torchrun (``LOCAL_RANK`` set, e.g. a multi-node launch written by
    hand), or a single process: do nothing and let the caller train.
    """
    if processes <= 1 or "LOCAL_RANK" in os.environ:
        return False
    from torch.distributed.run import main as torchrun

    torchrun(["--standalone", f"--nproc-per-node={processes}", *argv])
    return True
