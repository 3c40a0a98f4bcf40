"""CPU numerics that give the same weights, bit for bit, on any x86-64 CPU with AVX2.

Why this exists: torch picks kernels by the CPU it runs on. ATen dispatches to AVX2 or
AVX-512 code (``ATEN_CPU_CAPABILITY``), oneDNN chooses convolution algorithms by ISA and
cache sizes, and MKL picks code paths by vendor; its vector-math library (VML), which
ATen uses for ``torch.sqrt`` and friends, is not even correctly rounded on some CPUs.
Any of these changes the last bits of a training step, and after a few hundred steps a
different model: a lock made on an AMD EPYC did not reproduce on an Intel Sapphire
Rapids (test accuracy 0.9916 vs 0.9972).

``portable`` (the CPU default) removes each source, measured one by one under
``../shared/tools/other-cpu.sh`` (see docs/reproducibility.md):

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's own kernels are the AVX2 ones everywhere, also on
  AVX-512 CPUs (the same binary code ⇒ the same results);
- ``torch.backends.mkldnn.enabled = False`` and NNPACK off: convolutions use ATen's
  im2col + BLAS, not oneDNN's ISA- and cache-tuned algorithms nor NNPACK's cache-sized
  blocks;
- ``MKL_CBWR=COMPATIBLE``: MKL's BLAS takes its conditional-numerical-reproducibility path,
  the same on Intel and AMD;
- :class:`PortableAdamW`: AdamW whose square root comes from numpy (IEEE, correctly
  rounded on every CPU) instead of MKL's VML.

``fast`` keeps torch's defaults (oneDNN, the best ISA, fused AdamW): faster on big photo
models, bit-identical only on the same kind of CPU. The card records which was used.

The environment variables are read when torch loads, so :func:`configure` must run
before the first ``import torch`` of the process (the stage does it before importing
``imgclf.training.loop``). :func:`check` then verifies that it took effect.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

Numerics = Literal["portable", "fast"]

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
}
# torch's fast path still gets stable results run to run on one machine.
FAST_ENV = {"MKL_CBWR": "AUTO"}


class NumericsError(RuntimeError):
    """Portable numerics were asked for but torch was loaded with other settings."""


def configure(mode: Numerics) -> None:
    """Set the environment that decides torch's CPU kernels; call before importing torch.

    Portable settings *override* the caller's environment: a stray ``ATEN_CPU_CAPABILITY``
    would otherwise silently change the lock. DataLoader workers and torchrun children
    inherit them.
    """
    env = PORTABLE_ENV if mode == "portable" else FAST_ENV
    if mode == "portable" and "torch" in sys.modules:
        raise NumericsError(
            "train.numerics=portable must be configured before torch is imported "
            "(call imgclf.training.numerics.configure first)"
        )
    for key, value in env.items():
        if mode == "portable":
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def apply(mode: Numerics, device_type: str) -> str:
    """Apply the in-process switches and return the label written to the card.

    ``cuda`` training is never bit-identical across GPU models, so it is labelled as such
    whatever ``mode`` says.
    """
    import torch

    if device_type == "cuda":
        return "cuda"
    if mode == "portable":
        torch.backends.mkldnn.enabled = False
        # NNPACK (torch's other forward-convolution path) blocks its loops by the CPU's
        # cache sizes, so the summation order could follow the machine; ATen's own
        # convolution was also cheaper here (10.3 vs 12.5 s CPU for 6 digits epochs).
        torch.backends.nnpack.set_flags(False)
        check()
        return "portable-cpu"
    return "fast-cpu"


def check() -> None:
    """Fail loudly if torch runs other kernels than the portable ones (e.g. imported early)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    # A CPU without AVX2 gets ATen's "DEFAULT" kernels: still portable, only slower.
    if capability not in ("AVX2", "DEFAULT"):
        raise NumericsError(
            f"portable numerics need ATen's AVX2 kernels but torch uses {capability}: "
            "torch was imported before imgclf.training.numerics.configure('portable')"
        )
    if os.environ.get("MKL_CBWR") != PORTABLE_ENV["MKL_CBWR"]:
        raise NumericsError("portable numerics need MKL_CBWR=COMPATIBLE")


def _numpy_sqrt(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root of a CPU tensor (numpy uses the IEEE instruction)."""
    import torch

    return torch.from_numpy(np.sqrt(t.numpy()))


def make_optimizer(
    mode: Numerics, device_type: str, params: Any, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW: :class:`PortableAdamW` on the portable CPU path, torch's own otherwise."""
    import torch

    if mode == "portable" and device_type == "cpu":
        return _portable_adamw_class()(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@functools.cache
def _portable_adamw_class() -> type:
    import torch

    class _PortableAdamW(torch.optim.Optimizer):
        """torch's single-tensor AdamW, step for step, with numpy's square root.

        Same defaults and update as ``torch.optim.AdamW(foreach=False)`` (decoupled weight
        decay, bias correction), and it keeps ``betas`` in the param groups so
        ``OneCycleLR`` can cycle momentum exactly as it does for torch's AdamW.
        """

        def __init__(
            self,
            params: Any,
            lr: float = 1e-3,
            betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            weight_decay: float = 1e-2,
        ) -> None:
            defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
            super().__init__(params, defaults)

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                lr, (beta1, beta2) = group["lr"], group["betas"]
                eps, weight_decay = group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    step, grad = state["step"], p.grad
                    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                    p.mul_(1 - lr * weight_decay)
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    bias_correction1 = 1 - beta1**step
                    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                    denom = (_numpy_sqrt(exp_avg_sq) / bias_correction2_sqrt).add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            return loss

    return _PortableAdamW


def __getattr__(name: str) -> Any:
    # PortableAdamW subclasses torch's Optimizer, so it is built on first use: importing
    # this module must not import torch (configure() has to run first).
    if name == "PortableAdamW":
        cls = _portable_adamw_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
