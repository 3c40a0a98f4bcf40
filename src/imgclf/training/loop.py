"""The training loop: prepared uint8 arrays → a checkpoint and the serving artifact (ONNX + card).

Deterministic on the CPU path (seeded everything, deterministic algorithms, a
fixed thread count, per-sample augmentation seeds), so the same inputs give a
byte-identical ``dvc.lock``. On CUDA it uses bf16 autocast and channels_last.
Under ``torchrun`` it trains with DistributedDataParallel; rank 0 alone writes.
Where it runs (device, seeds, threads, DDP group) is :mod:`imgclf.training.runtime`;
which epoch is kept is :mod:`imgclf.training.selection`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from imgclf.artifact.export import export_onnx, model_card
from imgclf.artifact.files import CARD_FILE, CHECKPOINT_FILE, MODEL_FILE
from imgclf.artifact.int8_policy import check_export
from imgclf.data.prepared_files import load_meta, load_split
from imgclf.jsonio import with_detail, write_json
from imgclf.params import Params
from imgclf.training import numerics
from imgclf.training.architectures import WithSoftmax, build_model, load_initial_weights
from imgclf.training.augment import build_augment
from imgclf.training.runtime import Runtime, setup_runtime
from imgclf.training.selection import EpochSelector, warmup_epochs


class AugmentedArrays(Dataset):
    """uint8 images from a (memory-mapped) array, augmented with a per-sample seed.

    The seed of sample ``i`` in epoch ``e`` is a function of (seed, e, i) alone,
    so the augmentation is identical whatever the worker count or DDP rank.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: Any, seed: int) -> None:
        self.images, self.labels, self.augment, self.seed = images, labels, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = np.array(self.images[i])
        if self.augment is not None:
            self.augment.set_random_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            image = self.augment(image=image)["image"].reshape(image.shape)
        return torch.from_numpy(image), int(self.labels[i])


def _loader(
    data: AugmentedArrays, batch_size: int, shuffle: bool, params: Params, rt: Runtime
) -> DataLoader:
    sampler = None
    if rt.world_size > 1:
        sampler = DistributedSampler(
            data, rt.world_size, rt.rank, shuffle=shuffle, seed=params.seed, drop_last=False
        )
    workers = params.train.num_workers
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=False,  # re-forked each epoch so workers see the new epoch number
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(params.seed),
    )


def _run_epoch(
    model: nn.Module,
    loader: DataLoader,
    rt: Runtime,
    params: Params,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    desc: str = "",
) -> tuple[float, float]:
    """One pass (training if ``optimizer`` is given) → (mean loss, accuracy) over all ranks."""
    training = optimizer is not None
    model.train(training)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing if training else 0.0)
    amp = rt.device.type == "cuda" and params.train.amp
    totals = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss sum, correct, count
    # disable=None: a live bar on a terminal, nothing in CI logs (the epoch lines remain).
    quiet = not rt.is_main or not desc
    bar = tqdm(loader, desc=desc, leave=False, disable=True if quiet else None, ncols=90)
    with torch.set_grad_enabled(training):
        for pixels, labels in bar:
            pixels = pixels.to(rt.device, non_blocking=True)
            labels = labels.to(rt.device, non_blocking=True)
            with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(pixels)
                loss = loss_fn(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            totals[0] += loss.detach().double() * len(labels)
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += len(labels)
    if rt.world_size > 1:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


# `lr: auto` is this learning rate for a model whose widest convolution has this many
# channels (the digits default: 0.005 was the best of the sweep there), scaled inversely.
REFERENCE_LR, REFERENCE_WIDTH = 0.005, 64


def resolve_lr(params: Params, model: nn.Module) -> tuple[float, str]:
    """The learning rate to train with, and how it was chosen (recorded in the card).

    Why scale by width: an Adam step moves every weight by about ``lr``, so a unit's
    output moves by about ``lr × fan-in``; a model with 4× wider layers takes 4× larger
    steps in function space at the same ``lr`` (the argument behind muP's 1/width rule
    for Adam). Measured (bench/RESULTS.md, issue 10): on 10 classes × 48 RGB images at
    32 px (widest conv 256) lr 0.005 scored 0.56 — below the linear baseline — while
    0.002 gave 0.92 and 0.001 gave 1.00; on the 8 px digits (widest 64) 0.005 was best.
    An explicit number (``-S lr=1e-3``) is used as it is.
    """
    if params.lr != "auto":
        return float(params.lr), "set"
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    widest = max(widths, default=REFERENCE_WIDTH)
    # Multiplying by a power of two is exact: the digits default gets exactly 0.005.
    return REFERENCE_LR * REFERENCE_WIDTH / widest, f"auto: 0.005 x 64 / {widest} channels"


def _schedule(optimizer: torch.optim.Optimizer, params: Params, steps: int, lr: float) -> Any:
    total = params.epochs * steps
    if params.train.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    if params.train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train(params: Params, prepared: Path, model_dir: Path, live_dir: Path) -> dict[str, Any]:
    """Run the whole stage and return the model card (on every rank)."""
    check_export(params)  # before any epoch: an int8 export that is not offered fails now
    rt = setup_runtime(params)
    meta = load_meta(prepared)
    train_x, train_y = load_split(prepared, "train")
    val_x, val_y = load_split(prepared, "val")
    image_size, channels = int(train_x.shape[1]), int(train_x.shape[3])

    model = build_model(
        params.model, channels, len(meta["classes"]), image_size, meta["mean"], meta["std"]
    )
    if params.model.weights:  # transfer learning from a local, DVC-tracked file
        for note in load_initial_weights(model, Path(params.model.weights)):
            if rt.is_main:
                tqdm.write(f"model.weights: {note}")
    model = model.to(rt.device)
    if rt.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if rt.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    augment = build_augment(params.augment, image_size)
    per_rank_batch = max(1, params.batch_size // rt.world_size)
    train_data = AugmentedArrays(train_x, train_y, augment, params.seed)
    train_loader = _loader(train_data, per_rank_batch, True, params, rt)
    val_loader = _loader(AugmentedArrays(val_x, val_y, None, params.seed), 256, False, params, rt)
    lr, lr_source = resolve_lr(params, model)
    optimizer = numerics.make_optimizer(
        params.train.numerics,
        rt.device.type,
        model.parameters(),
        lr,
        params.train.weight_decay,
    )
    scheduler = _schedule(optimizer, params, len(train_loader), lr)

    live = None
    if rt.is_main:
        from dvclive import Live

        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    # Selection and early stopping ignore the warm-up: see `warmup_epochs`.
    warmup = warmup_epochs(params)
    selector = EpochSelector(warmup, params.train.patience)
    best: dict[str, Any] = {}
    epochs_run = 0
    for epoch in range(params.epochs):
        train_data.epoch = epoch
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{params.epochs}"
        tr_loss, tr_acc = _run_epoch(net, train_loader, rt, params, optimizer, scheduler, desc)
        va_loss, va_acc = _run_epoch(net, val_loader, rt, params)
        epochs_run = epoch + 1
        if live is not None:
            logged = {
                "train/loss": tr_loss,
                "train/accuracy": tr_acc,
                "val/loss": va_loss,
                "val/accuracy": va_acc,
                "lr": lr,
            }
            for name, value in logged.items():
                live.log_metric(name, round(value, 6))
            live.next_step()
            tqdm.write(
                f"{desc}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | "
                f"val loss {va_loss:.4f} acc {va_acc:.4f}"
            )
        if selector.offer(epochs_run, va_acc, va_loss):
            best = {
                "val_loss": va_loss,
                "val_accuracy": va_acc,
                "state": copy.deepcopy(model.state_dict()),
            }
        elif selector.should_stop(epochs_run):
            if rt.is_main:
                tqdm.write(
                    f"early stop: val accuracy (then loss) has not improved for "
                    f"{params.train.patience} epochs after the {warmup}-epoch warm-up"
                )
            break

    model.load_state_dict(best["state"])
    history = {
        "epochs_run": epochs_run,
        "best_epoch": selector.best_epoch,
        "best_val_loss": round(best["val_loss"], 6),
        "best_val_accuracy": round(best["val_accuracy"], 6),
        "selection": f"val accuracy, then val loss; epochs 1-{warmup} not eligible",
        "processes": rt.world_size,
        "lr": lr,  # what ran (params.lr may be "auto")
        "lr_source": lr_source,
    }
    card: dict[str, Any] = {}
    if rt.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        shape = (image_size, image_size, channels)
        sha = export_onnx(WithSoftmax(model, embedding=True), shape, model_dir / MODEL_FILE)
        card = model_card(params, meta, history, sha, rt.numerics)
        if params.export.quantize == "int8":
            # The served file is the scored file: model.onnx itself becomes the int8 one.
            from imgclf.artifact.int8_export import replace_with_int8

            sha, card["export"] = replace_with_int8(
                model_dir / MODEL_FILE, card, train_x, val_x, val_y
            )
            card["model_sha256"] = sha
        torch.save({"state_dict": model.state_dict(), "card": card}, model_dir / CHECKPOINT_FILE)
        write_json(model_dir / CARD_FILE, card)
        live.summary.update({"best_epoch": selector.best_epoch, "epochs_run": epochs_run})
        live.end()
        # dvclive's summary is the *last* epoch's values: detail, not columns of
        # `dvc exp show` (the kept epoch's are in the card). See dataio.DETAIL.
        summary = json.loads((live_dir / "metrics.json").read_text())
        detail = [k for k in summary if k not in ("best_epoch", "epochs_run")]
        write_json(live_dir / "metrics.json", with_detail(summary, detail))
    if rt.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return card
