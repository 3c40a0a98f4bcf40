"""Training-time augmentation with albumentations, on uint8 ``(H, W, C)`` arrays.

Only geometric and photometric changes that keep the uint8 dtype: normalisation
belongs to the model (see :class:`imgclf.training.architectures.PixelModel`), so augmented
pixels and served pixels go through the same graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.params import AugmentParams

if TYPE_CHECKING:
    import albumentations as A  # noqa: N812 - the library's documented alias


def build_augment(p: AugmentParams, image_size: int) -> A.Compose | None:
    """The albumentations pipeline for ``augment:`` in params.yaml, or None if all are off.

    albumentations and OpenCV are imported only when some augmentation is on: they cost
    1.7 s of every train stage's start-up, for nothing on the default digits run.
    """
    if not (
        p.hflip > 0
        or (p.p > 0 and (p.shift > 0 or p.scale > 0 or p.rotate > 0))
        or p.brightness_contrast > 0
    ):
        return None
    import albumentations as A  # noqa: N812
    import cv2

    # OpenCV's thread pool fights torch's OpenMP threads for the cores: on 2 cores that
    # made training with augmentation several times slower. Parallelism comes from
    # loader workers instead (see also OMP_WAIT_POLICY in stages/train.py).
    cv2.setNumThreads(0)
    transforms: list[A.BasicTransform] = []
    if p.hflip > 0:
        transforms.append(A.HorizontalFlip(p=p.hflip))
    if p.p > 0 and (p.shift > 0 or p.scale > 0 or p.rotate > 0):
        transforms.append(
            A.Affine(
                translate_percent=(-p.shift, p.shift),
                scale=(1.0 - p.scale, 1.0 + p.scale),
                rotate=(-p.rotate, p.rotate),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=p.p,
            )
        )
    if p.brightness_contrast > 0:
        limit = p.brightness_contrast
        transforms.append(A.RandomBrightnessContrast(limit, limit, p=0.5))
    if not transforms:
        return None
    # The per-sample seed is set by the dataset before each call (see train.AugmentedArrays).
    return A.Compose(transforms, seed=0)
