"""Training throughput: decode-once uint8 arrays (ours) vs decoding JPEGs every epoch.

Measures training images per second, and the ratio to the baseline, on the same
photo-like JPEGs, same model, same epochs, same machine, same run. The baseline is
what most projects do: torchvision ``ImageFolder`` + PIL + transforms each epoch.
Ours: ``prepare`` decodes once (its time is counted in the last row), then every
epoch reads uint8 arrays and augments with albumentations. Goal: ≥ 3× the baseline.

    python bench/bench_train.py [--images 800] [--epochs 3] [--size 64]   # replaces "train"
    python bench/bench_train.py --quick       # 24 images, 1 epoch; records nothing
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import results
from common import ROOT, table
from make_photos import make_photos


def run(args: argparse.Namespace) -> dict[str, float]:
    images, epochs, size = args.images, args.epochs, args.size
    import torch
    import yaml
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from imgclf.data.prepare import prepare
    from imgclf.data.prepared_files import load_meta, load_split
    from imgclf.params import validate_params
    from imgclf.training.architectures import build_model
    from imgclf.training.augment import build_augment
    from imgclf.training.loop import AugmentedArrays, _run_epoch, resolve_lr
    from imgclf.training.runtime import Runtime

    torch.set_num_threads(2)
    raw_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw_params.update(epochs=epochs, batch_size=32)
    raw_params["prepare"].update(image_size=size, color_mode="rgb", min_side=16, test_fraction=0.1)
    raw_params["augment"].update(hflip=0.5, shift=0.05, rotate=10, p=0.5)
    params = validate_params(raw_params)
    rt = Runtime(torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        raw = make_photos(Path(tmp) / "raw", images, classes=4)

        # Ours: decode once, then epochs over uint8 arrays.
        start = time.perf_counter()
        prepare(raw, Path(tmp) / "prepared", Path(tmp) / "prepare.json", params)
        prep_s = time.perf_counter() - start
        meta = load_meta(Path(tmp) / "prepared")
        x, y = load_split(Path(tmp) / "prepared", "train")
        model = build_model(params.model, 3, 4, size, meta["mean"], meta["std"])
        opt = torch.optim.AdamW(model.parameters(), lr=resolve_lr(params, model)[0])
        data = AugmentedArrays(x, y, build_augment(params.augment, size), params.seed)
        loader = DataLoader(data, batch_size=32, shuffle=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        start = time.perf_counter()
        for epoch in range(epochs):
            data.epoch = epoch
            _run_epoch(model, loader, rt, params, opt, sched)
        ours_s = time.perf_counter() - start
        n = len(y)

        # Baseline: ImageFolder decodes and transforms every JPEG every epoch.
        tf = transforms.Compose(
            [
                transforms.Resize((size, size)),
                transforms.RandomHorizontalFlip(),
                transforms.RandomAffine(10, translate=(0.05, 0.05)),
                transforms.ToTensor(),
                transforms.Normalize(meta["mean"], meta["std"]),
            ]
        )
        folder = datasets.ImageFolder(str(raw), transform=tf)
        subset = torch.utils.data.Subset(folder, range(n))  # same number of images per epoch
        base_loader = DataLoader(subset, batch_size=32, shuffle=True)
        backbone = build_model(params.model, 3, 4, size, meta["mean"], meta["std"]).backbone
        opt = torch.optim.AdamW(backbone.parameters(), lr=resolve_lr(params, backbone)[0])
        loss_fn = torch.nn.CrossEntropyLoss()
        start = time.perf_counter()
        for _ in range(epochs):
            backbone.train()
            for xb, yb in base_loader:
                opt.zero_grad()
                loss_fn(backbone(xb), yb).backward()
                opt.step()
        base_s = time.perf_counter() - start

    seen = n * epochs
    out = {
        "ours_img_s": seen / ours_s,
        "ours_incl_prepare_img_s": seen / (ours_s + prep_s),
        "baseline_img_s": seen / base_s,
    }
    ratio = out["ours_img_s"] / out["baseline_img_s"]
    ratio_all = out["ours_incl_prepare_img_s"] / out["baseline_img_s"]
    body = table(
        ["path", "img/s", "ratio vs baseline"],
        [
            [
                "baseline: ImageFolder + PIL decode every epoch",
                f"{out['baseline_img_s']:.0f}",
                "1.00",
            ],
            [
                "ours: uint8 arrays + albumentations (epochs only)",
                f"{out['ours_img_s']:.0f}",
                f"{ratio:.2f}",
            ],
            [
                "ours incl. one-time prepare (decode once)",
                f"{out['ours_incl_prepare_img_s']:.0f}",
                f"{ratio_all:.2f}",
            ],
        ],
    )
    body += (
        f"\n\n{n} training images per epoch ({images} JPEGs of 256–640 px generated), "
        f"{epochs} epochs, small_cnn at {size}×{size} px, batch 32, 2 threads, "
        f"no loader workers; prepare took {prep_s:.1f} s."
    )
    title = "Training throughput: decode once vs decode every epoch"
    results.report(args, "train", title, body, "python bench/bench_train.py")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny run; records nothing")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.size = 24, 1, 32
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
