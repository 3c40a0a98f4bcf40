"""The one schema for ``params.yaml``, validated whenever a stage starts.

Why a strict schema: ``dvc exp run -S lr_rate=1e-3`` silently *adds* a key in
plain DVC, so a typo would train with the default and look like a real
experiment. Every section forbids unknown keys, and the error names the key,
the value and what is allowed (with a "did you mean" for typos).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")
WEIGHTS_DIR = "weights"


class ParamsError(ValueError):
    """``params.yaml`` is invalid; the message lists every problem found."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Bits (of 64) two perceptual hashes may differ by for one group: bench/bench_near_dups.py.
NEAR_DUP_DISTANCE = 8


class DataParams(_Section):
    """Which ImageFolder tree to use: ``<dataset>/<class>/<image>``."""

    dataset: str = Field("data/raw/digits", min_length=1)


class PrepareParams(_Section):
    """How raw images become fixed-size uint8 arrays, and how they are split."""

    image_size: int = Field(8, ge=4, le=1024, description="square side in pixels")
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    resize: Literal["squash", "center_crop", "pad"] = "squash"
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    min_side: int = Field(8, ge=1, description="skip images smaller than this")
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb guard")
    dedupe: bool = True
    near_dup_distance: int = Field(
        NEAR_DUP_DISTANCE,
        ge=-1,
        le=32,
        description="images whose 64-bit perceptual hashes differ in at most this many bits "
        "are one group, kept in one split and reported (re-encoded, resized, lightly cropped "
        "or brightened copies, bursts); -1 turns grouping off. Default measured in "
        "docs/large-datasets.md",
    )
    near_dup_min_side: int = Field(
        32,
        ge=8,
        description="images with a side below this are not hashed (each is its own group): "
        "tiny images such as the 8x8 digits would be grouped by class shape",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                "val_fraction + test_fraction must be < 0.8 so that training keeps data"
            )
        return self


class AugmentParams(_Section):
    """Albumentations applied to uint8 training images only (0 disables each)."""

    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability")
    shift: float = Field(0.0, ge=0.0, le=0.5, description="fraction of the side")
    scale: float = Field(0.0, ge=0.0, le=0.5, description="+/- zoom fraction")
    rotate: float = Field(0.0, ge=0.0, le=180.0, description="+/- degrees")
    brightness_contrast: float = Field(0.0, ge=0.0, le=1.0)
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of the affine")


ModelName = Literal["small_cnn", "resnet18", "mobilenet_v3_small"]


class ModelParams(_Section):
    """Which architecture from the registry in :mod:`imgclf.training.architectures`."""

    name: ModelName = "small_cnn"
    pretrained: bool = False
    weights: str = Field(
        "",
        description="start from this local file under weights/ (a torchvision state dict "
        "or a previous run's checkpoint.pt); empty: random initialisation",
    )

    @model_validator(mode="after")
    def _weights_under_the_tracked_folder(self) -> ModelParams:
        # train depends on the whole weights/ folder in dvc.yaml (a dependency cannot be
        # optional), so a file elsewhere would change the model without DVC noticing.
        if self.weights and not self.weights.startswith(f"{WEIGHTS_DIR}/"):
            raise ValueError(
                f"model.weights must be a file under {WEIGHTS_DIR}/ (the folder train "
                f"depends on): copy it there and `dvc add {WEIGHTS_DIR}/<file>`"
            )
        if self.weights and self.pretrained:
            raise ValueError("set model.weights or model.pretrained, not both")
        return self

    width: int = Field(32, ge=4, le=512, description="small_cnn base channels")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainParams(_Section):
    """Optimiser, schedule, hardware. ``cpu`` + fixed ``threads`` is bit-reproducible."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, le=256)
    weight_decay: float = Field(1e-4, ge=0.0)
    scheduler: Literal["onecycle", "cosine", "constant"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    patience: int = Field(
        10, ge=1, description="early stop after this many epochs without a better val score"
    )
    select_after: float = Field(
        0.3,
        ge=0.0,
        le=0.9,
        description="fraction of epochs (the warm-up) never selected as best nor counted "
        "by patience: an early, untrained epoch can have the lowest val loss",
    )
    num_workers: int = Field(0, ge=0, le=64)
    amp: bool = Field(True, description="bf16 autocast, CUDA only")
    processes: int = Field(1, ge=1, le=64, description="DDP processes (torchrun)")
    numerics: Literal["portable", "fast"] = Field(
        "portable",
        description="portable: bit-identical weights on any x86-64 CPU with AVX2; "
        "fast: torch's CPU defaults (oneDNN), reproducible only on the same kind of CPU",
    )


class EvaluateParams(_Section):
    """Scoring of the exported ONNX artifact."""

    batch_size: int = Field(256, ge=1)
    calibration_bins: int = Field(10, ge=2, le=100)
    ood_pass_rate: float = Field(
        0.95,
        ge=0.5,
        le=0.999,
        description="fraction of the in-distribution test split the OOD flag lets pass: "
        "the threshold is set there (higher: fewer false alarms, more OOD accepted)",
    )


def _lr(value: Any) -> Any:
    """``auto`` or a number in (0, 10], with one message instead of one per union branch."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 < number <= 10.0:
        raise ValueError(f"lr must be 'auto' or a number > 0 and <= 10, got {value!r}")
    return number


class ExportParams(_Section):
    """What ``train`` writes as the serving artifact besides the fp32 network."""

    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: static int8 ONNX calibrated on training images; offered only for "
        "the architectures where the benchmark measured it >= 1.5x faster",
    )


class Params(_Section):
    """The whole ``params.yaml``. Top-level keys are the ones people tune most."""

    seed: int = Field(42, ge=0, le=2**32 - 1)
    # "auto": scaled to the model's width when training starts (imgclf.training.loop.resolve_lr).
    lr: Annotated[float | Literal["auto"], BeforeValidator(_lr)] = "auto"
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that owns the key at ``loc`` (to suggest its valid keys)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


# Names people type for our keys (other frameworks' spellings).
SYNONYMS = {"learning_rate": "lr", "n_epochs": "epochs", "num_epochs": "epochs", "bs": "batch_size"}


def suggest(key: str, known: list[str]) -> str | None:
    """The key the user probably meant: synonym, prefix (``lr_rate`` → ``lr``) or near miss."""
    if SYNONYMS.get(key) in known:
        return SYNONYMS[key]
    prefixes = [k for k in known if len(k) >= 2 and (key.startswith(k) or k.startswith(key))]
    if prefixes:
        return max(prefixes, key=len)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _describe(err: dict[str, Any]) -> str:
    loc = err["loc"]
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc)
        known = sorted(owner.model_fields) if owner else []
        close = suggest(str(loc[-1]), known)
        hint = f" Did you mean '{'.'.join([*map(str, loc[:-1]), close])}'?" if close else ""
        return f"unknown key '{key}'.{hint} Allowed here: {', '.join(known)}."
    message = str(err["msg"]).removeprefix("Value error, ")  # our own validators' wording
    if not loc:  # a check across sections (its message names the key itself)
        return f"{message}."
    return f"'{key}' = {err.get('input')!r}: {message}."


def validate_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate already-parsed params; raise :class:`ParamsError` listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"- {_describe(e)}" for e in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (the only way stages get their settings)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return validate_params(raw, str(path))
