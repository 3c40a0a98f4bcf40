"""The train stage's CPU set-up: deterministic, portable kernels, and cheap to start."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    from imgclf.training import numerics
    numerics.configure("portable")
    import torch
    from imgclf.params import validate_params
    from imgclf.training.runtime import setup_runtime

    rt = setup_runtime(validate_params({"train": {"device": "cpu"}}))
    print(json.dumps({
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "inductor_loaded": "torch._inductor" in sys.modules,
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "label": rt.numerics,
    }))
    """
)


def test_portable_runtime_is_deterministic_without_importing_inductor() -> None:
    """`setup_runtime` turns on deterministic algorithms without the 1.7 s inductor import."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    import json

    state = json.loads(out.strip().splitlines()[-1])
    assert state["deterministic"] is True
    assert state["inductor_loaded"] is False
    assert state["threads"] == 1  # params.yaml's default train.threads
    assert state["capability"] in ("AVX2", "DEFAULT")
    assert state["mkldnn"] is False
    assert state["label"] == "portable-cpu"


def test_portable_adamw_takes_no_square_root_from_aten(monkeypatch) -> None:
    """PortableAdamW's square root is numpy's (the IEEE instruction), never ATen's, whose
    VML path is not correctly rounded on some CPUs (the module's docstring).

    The probe makes ATen's sqrt one part in 2**-20 off: steps through numpy's sqrt do not
    move by a bit; one AdamW step computed with ``torch.sqrt`` would. And it is still AdamW:
    torch's own single-tensor AdamW agrees to float32 rounding.
    """
    import torch

    from imgclf.training.numerics import make_optimizer

    def trained(optimizer: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
        if optimizer == "portable":
            opt = make_optimizer("portable", "cpu", model.parameters(), 1e-2, 1e-2)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    exact = trained("portable")
    reference = trained("torch")
    for mine, theirs in zip(exact, reference, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-6)

    real_sqrt, real_method = torch.sqrt, torch.Tensor.sqrt
    monkeypatch.setattr(torch, "sqrt", lambda t, *a, **k: real_sqrt(t, *a, **k) * (1 + 2**-20))
    monkeypatch.setattr(torch.Tensor, "sqrt", lambda t: real_method(t) * (1 + 2**-20))
    assert torch.sqrt(torch.tensor([4.0])).item() != 2.0, "the probe perturbs ATen's sqrt"
    for before, after in zip(exact, trained("portable"), strict=True):
        assert torch.equal(before, after), "an AdamW step used ATen's square root"
