"""GPU ceiling: our full training loop vs the same model on random tensors already on the GPU.

Measures training images per second of ours and of the ceiling, and ours ÷ ceiling.
Ours: prepared uint8 arrays → DataLoader workers → albumentations → pinned,
non-blocking copies → bf16 autocast, channels_last. Ceiling: the same model,
optimiser and autocast on a fixed random batch resident on the GPU. The ratio
says how much of the GPU our input pipeline leaves unused (goal ≥ 0.8).

    python bench/bench_gpu.py [--model resnet18] [--size 224] [--images 4096]  # "gpu"
    python bench/bench_gpu.py --quick     # a tiny CPU run of the same code; records nothing

Without CUDA a full run says so and exits 0 (``--quick`` exercises the code on the CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import results
from common import ROOT, table


def gpu_utilisation() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return out or "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def run(
    model_name: str,
    size: int,
    images: int,
    batch: int,
    workers: int,
    steps: int,
    device: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    import torch
    import yaml
    from torch.utils.data import DataLoader

    from imgclf.params import validate_params
    from imgclf.training.architectures import build_model
    from imgclf.training.augment import build_augment
    from imgclf.training.loop import AugmentedArrays

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name"] = model_name
    raw["augment"].update(hflip=0.5, shift=0.05, rotate=10, p=0.5)
    params = validate_params(raw)
    dev = torch.device(device)
    amp = dev.type == "cuda"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, images)

    def make_model() -> torch.nn.Module:
        m = build_model(params.model, 3, 10, size, [0.5] * 3, [0.25] * 3).to(dev)
        return m.to(memory_format=torch.channels_last) if amp else m

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if amp:
            torch.cuda.synchronize()

    # Ceiling: a resident random batch.
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for _ in range(3):
        step(model, opt, x, y)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y)
    sync()
    ceiling = steps * batch / (time.perf_counter() - start)

    # Ours: the real dataset, augmentation and loader.
    data = AugmentedArrays(pixels, labels, build_augment(params.augment, size), seed=0)
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=amp,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        drop_last=True,
    )
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done, util = 0, "n/a"
    it = iter(loader)
    for _ in range(3):  # warm-up (workers start)
        xb, yb = next(it)
        step(model, opt, xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))
    sync()
    start = time.perf_counter()
    for i in range(steps):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        step(model, opt, xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))
        done += len(yb)
        if i == steps // 2 and amp:
            util = gpu_utilisation()
    sync()
    ours = done / (time.perf_counter() - start)
    body = table(
        ["loop", "img/s", "ratio"],
        [
            ["ceiling: random tensors resident on the device", f"{ceiling:.0f}", "1.00"],
            [
                "ours: prepared arrays + albumentations + loader",
                f"{ours:.0f}",
                f"{ours / ceiling:.2f}",
            ],
        ],
    )
    body += (
        f"\n\n{model_name} at {size}×{size}, batch {batch}, {workers} loader workers, "
        f"{'bf16 autocast + channels_last' if amp else 'fp32 on CPU'}, "
        f"{steps} timed steps; GPU utilisation mid-run: {util}."
    )
    results.report(args, "gpu", f"GPU ceiling ({device})", body, "python bench/bench_gpu.py")
    return {"ours": ours, "ceiling": ceiling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny CPU run; records nothing")
    results.add_options(parser)
    args = parser.parse_args(argv)
    import torch

    if args.quick:
        run("small_cnn", 32, 64, 16, 0, 3, "cpu", args)
    elif not torch.cuda.is_available():
        print("no CUDA device here: the GPU ceiling benchmark needs one (see README, GPU).")
    else:
        run(args.model, args.size, args.images, args.batch, args.workers, args.steps, "cuda",
            args)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
