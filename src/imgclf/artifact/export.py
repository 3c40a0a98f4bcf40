"""Write the serving artifact: the ONNX export and the JSON card (``train`` runs this).

The writer half of the artifact room (:mod:`imgclf.artifact.files` holds the names every
reader uses). Kept apart because it needs torch and onnx, which the serving image never
installs: the API imports the names, never this module.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.artifact.files import CARD_FORMAT, EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

    from imgclf.params import Params


def export_onnx(model: torch.nn.Module, shape: tuple[int, int, int], path: Path) -> str:
    """Export uint8 NHWC → probabilities with a dynamic batch; return the file's sha256.

    ``model`` must already end in a softmax. When it returns ``(probabilities,
    embedding)`` (``WithSoftmax(…, embedding=True)``) the graph gets a second output,
    ``embedding``, computed by the same pass. The serialised graph carries no paths,
    timestamps or producer stack traces and no constants computed at export time, so
    the same weights give the same bytes on any machine.
    """
    import onnx
    import torch

    # A CPU float copy in eval mode: the exporter would otherwise flip the caller's
    # module back to training mode on its way out.
    model = copy.deepcopy(model).cpu().float().eval()
    dummy = torch.zeros((1, *shape), dtype=torch.uint8)
    with torch.no_grad():
        two = isinstance(model(dummy), tuple)
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if two else [OUTPUT_NAME]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but byte-stable
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
            opset_version=17,
            dynamo=False,
            # No folding here: torch would fold BatchNorm into the convolutions with its
            # own CPU kernels (a square root through MKL's VML), and the file's bytes
            # would depend on the CPU that exported it. onnxruntime folds them at load.
            do_constant_folding=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
    data = proto.SerializeToString(deterministic=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def model_card(
    params: Params, meta: dict[str, Any], history: dict[str, Any], sha: str, numerics: str
) -> dict[str, Any]:
    """The JSON card served as ``GET /model`` and read by every consumer of the ONNX file.

    ``numerics`` records how the weights were computed (``portable-cpu``, ``fast-cpu``,
    ``cuda``): it says whether another machine can be expected to reproduce them bit
    for bit (see docs/reproducibility.md).
    """
    spec = meta["preprocess"]
    channels = 1 if spec["color_mode"] == "grayscale" else 3
    return {
        "format": CARD_FORMAT,
        "classes": meta["classes"],
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NHWC",
            "shape": ["batch", spec["image_size"], spec["image_size"], channels],
        },
        "output": {"name": OUTPUT_NAME, "meaning": "softmax probabilities per class"},
        # Read by Predictor from the graph itself; stated here for people reading the card.
        "embedding": {"name": EMBEDDING_NAME, "meaning": "penultimate-layer features"},
        "preprocess": spec,
        "normalization": {"mean": meta["mean"], "std": meta["std"], "inside_model": True},
        "model": params.model.model_dump(),
        "training": {
            "seed": params.seed,
            "lr": params.lr,
            "epochs": params.epochs,
            "batch_size": params.batch_size,
            "augment": params.augment.model_dump(),
            "numerics": numerics,
            **history,
        },
        "dataset": {**meta["dataset"], "counts": meta["counts"]},
        "model_sha256": sha,
    }
