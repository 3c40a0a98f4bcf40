"""Optional int8 export (``export.quantize: int8``), offered only where it was measured to pay.

Static quantization (QDQ, per-channel weights, activations calibrated on training
images) is not a free win on CPU: onnxruntime's int8 kernels beat fp32 by a wide
margin on some networks and lose on others (depthwise convolutions, hard-swish).
So the option is accepted per architecture, from what ``bench/bench_quantize.py``
measured (model only, batch 1, one thread, against fp32 with every graph
optimisation — the fastest fp32 this project serves): see :data:`MEASURED_SPEEDUP`.

This module is the policy only (it imports nothing heavy); :mod:`imgclf.artifact.int8_export`
does the export. The schema (:mod:`imgclf.params`) does *not* import it: every stage
validates params, so a re-measured speed-up would otherwise re-run prepare, train and
evaluate. It is applied by :func:`check_export` in ``params_check``, ``imgclf
check-params`` and ``train`` — the stages whose result it can change.
"""

from __future__ import annotations

from imgclf.params import Params, ParamsError

# int8 speed ÷ fp32 speed, model only (bench/RESULTS.md, "int8 vs fp32, model only",
# 2026-11-30, AMD EPYC with AVX-512 VNNI, 2 cores, 224 px RGB, 1 thread).
MEASURED_SPEEDUP: dict[str, float] = {"resnet18": 3.03, "mobilenet_v3_small": 0.80}
# Below this the accuracy risk of int8 is not worth it.
MIN_SPEEDUP = 1.5
BENCH_REFERENCE = "bench/RESULTS.md, section 'int8 vs fp32, model only'"


def int8_refusal(architecture: str) -> str | None:
    """Why ``export.quantize: int8`` is refused for ``architecture``, or None when offered."""
    speedup = MEASURED_SPEEDUP.get(architecture)
    if speedup is None:
        return (
            f"int8 export is not offered for {architecture}: its speed was never measured "
            f"(offered where {BENCH_REFERENCE} shows >= {MIN_SPEEDUP}x: "
            f"{', '.join(offered()) or 'none'})"
        )
    if speedup < MIN_SPEEDUP:
        return (
            f"int8 export is not offered for {architecture}: it ran {speedup:.2f}x the fp32 "
            f"speed ({BENCH_REFERENCE}); it is offered where that is >= {MIN_SPEEDUP}x: "
            f"{', '.join(offered()) or 'none'}"
        )
    return None


def offered() -> list[str]:
    """Architectures for which int8 export is accepted."""
    return sorted(a for a, s in MEASURED_SPEEDUP.items() if s >= MIN_SPEEDUP)


def check_export(params: Params) -> None:
    """Raise :class:`ParamsError` when ``params`` asks for an int8 export that is not offered."""
    if params.export.quantize == "int8":
        refusal = int8_refusal(params.model.name)
        if refusal:
            raise ParamsError(f"params.yaml: 'export.quantize' = 'int8': {refusal}")
