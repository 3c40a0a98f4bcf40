"""Every registry model takes uint8 NHWC pixels and returns one logit per class."""

import pytest
import torch

from imgclf.params import ModelParams
from imgclf.training.architectures import REGISTRY, build_model


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize(("size", "channels"), [(8, 1), (32, 3), (64, 3)])
def test_output_shape(name: str, size: int, channels: int) -> None:
    model = build_model(
        ModelParams(name=name), channels, 5, size, [0.5] * channels, [0.25] * channels
    ).eval()
    pixels = torch.randint(0, 256, (2, size, size, channels), dtype=torch.uint8)
    with torch.no_grad():
        assert model(pixels).shape == (2, 5)


def test_normalisation_is_inside_the_model() -> None:
    """Pixels equal to the mean become zeros before the backbone sees them."""
    model = build_model(ModelParams(), 3, 2, 8, [0.2, 0.4, 0.6], [0.5, 0.5, 0.5])
    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    pixels = torch.tensor([51, 102, 153], dtype=torch.uint8).repeat(1, 8, 8, 1)
    model.eval()(pixels)
    assert torch.allclose(seen["x"], torch.zeros(1, 3, 8, 8), atol=1e-6)
