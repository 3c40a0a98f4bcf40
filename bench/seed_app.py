"""The seed-style serving app, the way most first versions are written (benchmark only).

FastAPI, the same network in torch eager loaded once at start-up, and an
``async def`` handler that reads the ``UploadFile``, opens it with PIL, resizes
it and runs the model — all on the event loop, one request at a time. It is
the yardstick ``bench/bench_api.py --scenario photos`` compares ``imgclf
serve`` with; it has none of the API's limits and is never deployed.

It rebuilds the network from ``checkpoint.pt`` with the training code's own
``build_model`` (normalisation is a layer inside it, as in the ONNX file), so
for the same pixels it gives the same probabilities as the served artifact.

Usage: python bench/seed_app.py --model-dir MODELS --port 8002
"""

# No `from __future__ import annotations`: FastAPI must see the real UploadFile type.
import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np


def build_app(model_dir: Path) -> Any:
    """The FastAPI app with the torch model loaded (torch's default thread count)."""
    import torch
    from fastapi import FastAPI, File, UploadFile
    from PIL import Image

    from imgclf.params import ModelParams
    from imgclf.training.architectures import WithSoftmax, build_model

    checkpoint = torch.load(model_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    card = checkpoint["card"]
    classes = list(card["classes"])
    size = int(card["preprocess"]["image_size"])
    norm = card["normalization"]
    net = build_model(ModelParams(**card["model"]), 3, len(classes), size, norm["mean"],
                      norm["std"])  # fmt: skip
    net.load_state_dict(checkpoint["state_dict"])
    model = WithSoftmax(net).eval()
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        # Bilinear like the project's preprocessing, so both apps see the same pixels.
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8)[None].copy())
        with torch.inference_mode():
            probs = model(pixels)[0].numpy()
        index = int(probs.argmax())
        return {
            "label": classes[index],
            "confidence": float(probs[index]),
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()

    import uvicorn

    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, access_log=False,
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
