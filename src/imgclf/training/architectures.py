"""The model registry, and the wrapper that makes a model take raw uint8 pixels.

Normalisation lives *inside* the model (:class:`PixelModel`), so the exported
ONNX graph takes exactly what :func:`imgclf.data.preprocessing.preprocess` returns:
uint8 ``(N, H, W, C)``. Training, evaluation and serving therefore cannot
disagree about mean/std or channel order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import WeightsError
from imgclf.params import ModelParams


def small_cnn(in_channels: int, num_classes: int, image_size: int, p: ModelParams) -> nn.Module:
    """A compact CNN: full resolution for tiny inputs (8×8 digits), strided stem for photos.

    Blocks of conv-BN-ReLU double the width and halve the resolution until about
    4×4 remains; global average pooling makes it size-agnostic.
    """
    w = p.width
    layers: list[nn.Module] = []
    size, ch = image_size, in_channels
    if image_size > 32:  # photos: a strided stem keeps the cost per pixel low
        layers += [nn.Conv2d(ch, w, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(w)]
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        size, ch = size // 4, w
    width = w
    while True:
        layers += [nn.Conv2d(ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        layers += [nn.ReLU(inplace=True)]
        ch = width
        if size <= 4:
            break
        layers += [nn.Conv2d(ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        size //= 2
        width = min(width * 2, w * 8)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p.dropout)]
    layers += [nn.Linear(ch, num_classes)]
    return nn.Sequential(*layers)


def _torchvision(name: str) -> Callable[[int, int, int, ModelParams], nn.Module]:
    def build(in_channels: int, num_classes: int, image_size: int, p: ModelParams) -> nn.Module:
        import torchvision

        weights = "DEFAULT" if p.pretrained else None
        model = getattr(torchvision.models, name)(weights=weights)
        if name == "resnet18":
            model.fc = nn.Sequential(
                nn.Dropout(p.dropout), nn.Linear(model.fc.in_features, num_classes)
            )
        else:
            last = model.classifier[-1]
            model.classifier[-1] = nn.Linear(last.in_features, num_classes)
            model.classifier[-2] = nn.Dropout(p.dropout)
        return model

    return build


REGISTRY: dict[str, Callable[[int, int, int, ModelParams], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": _torchvision("resnet18"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
}
# torchvision backbones expect 3 channels: grayscale input is repeated.
NEEDS_RGB = {"resnet18", "mobilenet_v3_small"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PixelModel(nn.Module):
    """uint8 ``(N, H, W, C)`` → logits: scaling, normalisation and layout in the graph.

    The NHWC → NCHW permute yields a channels_last tensor for free, which is the
    fast layout on GPUs.
    """

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], repeat_to: int = 0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.repeat_to = repeat_to
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean * 255.0) / self.std
        if self.repeat_to and x.shape[1] != self.repeat_to:
            x = x.expand(-1, self.repeat_to, -1, -1)
        return self.backbone(x)


class WithSoftmax(nn.Module):
    """The exported graph: probabilities, so every consumer skips its own softmax.

    With ``embedding=True`` the forward pass also returns the input of the classifier
    head (the penultimate layer: 64 numbers for the digits CNN, 512 for resnet18). The
    monitoring profile and the out-of-distribution score use it, and exporting it from
    the same graph means the API still runs one ONNX file and no torch. A forward
    pre-hook on the head, registered for the duration of one call only, captures it: every
    architecture in :data:`REGISTRY` works without a forward of its own, and the wrapped
    model is left without hooks (``export_onnx`` deep-copies it; a lasting hook's closure
    would still point at the original).
    """

    def __init__(self, model: nn.Module, embedding: bool = False) -> None:
        super().__init__()
        self.model = model
        self.embedding = embedding
        self.head_name = _head_name(model) if embedding else ""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.embedding:
            return torch.softmax(self.model(pixels), dim=1)
        captured: list[torch.Tensor] = []
        head = self.model.get_submodule(self.head_name)
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            logits = self.model(pixels)
        finally:
            handle.remove()
        return torch.softmax(logits, dim=1), captured[-1].flatten(1)


def _head_name(model: nn.Module) -> str:
    """Module path of the classifier head: the model's last ``nn.Linear``."""
    heads = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not heads:
        raise ValueError("the model has no nn.Linear classifier head to take an embedding from")
    return heads[-1]


def build_model(
    p: ModelParams,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> PixelModel:
    """Instantiate ``p.name`` wrapped in :class:`PixelModel` with the right normalisation."""
    backbone = REGISTRY[p.name](in_channels, num_classes, image_size, p)
    if p.pretrained and p.name in NEEDS_RGB:  # pretrained weights expect ImageNet statistics
        mean, std = IMAGENET_MEAN[:in_channels], IMAGENET_STD[:in_channels]
    repeat = 3 if p.name in NEEDS_RGB else 0
    return PixelModel(backbone, mean, std, repeat_to=repeat)


def _head_prefix(backbone: nn.Module) -> str:
    """Parameter-name prefix of the classifier head: the backbone's last ``nn.Linear``."""
    heads = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    return f"{heads[-1]}." if heads else "\0"


def load_initial_weights(model: PixelModel, path: Path) -> list[str]:
    """Start ``model`` from a local file; return notes on what was not taken over.

    Accepts a previous run's ``checkpoint.pt`` (``{"state_dict": …}`` of a PixelModel)
    or a plain torchvision state dict of the backbone. Every backbone tensor must be
    present with the same shape — otherwise the file is for another architecture and
    training from it would silently be training from scratch, so it is an error naming
    the first differences. The classifier head alone may differ (other classes): it
    keeps its fresh initialisation. The normalisation buffers always come from this
    dataset, not from the file.
    """
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} not found (did you `dvc pull`?)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "not a weights file"
        raise WeightsError(f"model.weights: {path} is not a torch state dict ({exc})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"model.weights: {path} holds no state dict of tensors")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    head = _head_prefix(model.backbone)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape and not k.startswith(head)
    ]
    problems = [*(f"missing {k}" for k in missing), *(f"unexpected {k}" for k in unexpected)]
    problems += [f"shape {m}" for m in mismatched]
    if problems:
        more = f"; … {len(problems) - 5} more" if len(problems) > 5 else ""
        shown = "; ".join(problems[:5]) + more
        raise WeightsError(
            f"model.weights: {path} does not fit model.name with these params "
            f"({len(problems)} problems: {shown}). Use weights of the same architecture "
            "(and model.width for small_cnn)."
        )
    notes = []
    skipped = [k for k in own if k.startswith(head) and state[k].shape != own[k].shape]
    if skipped:
        state = {k: v for k, v in state.items() if k not in skipped}
        notes.append(f"classifier head {head.rstrip('.')} re-initialised (other number of classes)")
    model.backbone.load_state_dict(state, strict=not skipped)
    return notes
