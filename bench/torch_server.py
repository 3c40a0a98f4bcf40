"""The same API app, serving the model with torch eager instead of onnxruntime (benchmark only).

Rebuilds the network from ``models/checkpoint.pt`` (``state_dict`` + ``card``)
with the training code's own ``build_model`` and ``WithSoftmax``, and plugs it
into :func:`imgclf.serving.app.create_app` as the backend. Everything else — upload
parsing, preprocessing, metrics — is the serving app itself, so the benchmark
compares the inference runtimes and nothing else. Never used by the real API.

Usage: python bench/torch_server.py --model-dir models --port 8001
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np


class TorchPredictor:
    """The :class:`imgclf.serving.app.Backend` protocol on top of a torch eager model."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        import torch

        from imgclf.data.preprocessing import PreprocessSpec
        from imgclf.params import ModelParams
        from imgclf.training.architectures import WithSoftmax, build_model

        torch.set_num_threads(threads)
        checkpoint = torch.load(model_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        self.card: dict[str, Any] = checkpoint["card"]
        self.classes: list[str] = list(self.card["classes"])
        self.spec = PreprocessSpec.from_dict(self.card["preprocess"])
        norm = self.card["normalization"]
        model = build_model(
            ModelParams(**self.card["model"]),
            self.spec.channels,
            len(self.classes),
            self.spec.image_size,
            norm["mean"],
            norm["std"],
        )
        model.load_state_dict(checkpoint["state_dict"])
        self.model = WithSoftmax(model).eval()
        self._torch = torch

    @property
    def version(self) -> str:
        return str(self.card.get("model_sha256", ""))[:12] + "-torch"

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        tensor = self._torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        with self._torch.inference_mode():
            return self.model(tensor).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import uvicorn

    from imgclf.serving.app import create_app
    from imgclf.serving.settings import Settings

    settings = Settings.from_env().with_model_dir(args.model_dir)
    # torch's CPU kernels give an image last bits that depend on the batch it is in, and
    # the load client wants byte-identical answers: one model call per request here
    # (onnxruntime's answers do not depend on the batch; tests/api/test_coalesce.py).
    settings = dataclasses.replace(settings, coalesce_images=1)
    backend = TorchPredictor(args.model_dir, threads=args.threads)
    app = create_app(settings, backend=backend)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
