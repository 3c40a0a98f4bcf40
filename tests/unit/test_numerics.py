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
