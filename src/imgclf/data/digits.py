"""Write scikit-learn's bundled digits out as real PNG files (the default dataset).

Why files and not the in-memory array: the default run then goes through the
exact loading path a user's folder of JPEGs takes (scan, verify, decode,
resize), so the demo exercises what production uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8×8 digits as uint8 images (0–16 scaled to 0–255) and their labels."""
    from sklearn.datasets import load_digits  # local import: only this stage needs sklearn

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def write_digits(out_dir: Path) -> int:
    """Write ``out_dir/<digit>/<index>.png``; byte-identical on every run. Returns the count."""
    images, labels = digits_images()
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        class_dir = out_dir / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        # No metadata chunks, fixed compression: the same pixels give the same bytes.
        Image.fromarray(image, mode="L").save(class_dir / f"{index:04d}.png", optimize=False)
    return len(images)
