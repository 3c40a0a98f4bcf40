"""model.weights: start from a local file, or fail clearly when it is for another model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgclf.errors import WeightsError
from imgclf.params import ModelParams, ParamsError, validate_params
from imgclf.training.architectures import build_model, load_initial_weights


def _model(classes: int, width: int = 8):
    return build_model(ModelParams(width=width), 1, classes, 8, [0.5], [0.25])


def test_checkpoint_of_a_previous_run_is_taken_over_except_the_new_head(tmp_path: Path) -> None:
    source = _model(10)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": source.state_dict(), "card": {"classes": list("0123456789")}}, path)

    same = _model(10)
    assert load_initial_weights(same, path) == []
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(same.backbone.state_dict()[key], value), key
    assert same.mean.item() == 0.5  # normalisation stays this dataset's

    fewer = _model(3)
    head_before = fewer.backbone[-1].weight.clone()
    notes = load_initial_weights(fewer, path)
    assert notes and "re-initialised" in notes[0]
    assert torch.equal(fewer.backbone[0].weight, source.backbone[0].weight)
    assert torch.equal(fewer.backbone[-1].weight, head_before)


def test_plain_backbone_state_dict_works(tmp_path: Path) -> None:
    source = _model(4)
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), path)
    target = _model(4)
    load_initial_weights(target, path)
    assert torch.equal(target.backbone[0].weight, source.backbone[0].weight)


def test_other_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save({"state_dict": _model(10, width=16).state_dict()}, path)
    with pytest.raises(WeightsError, match=r"does not fit .*shape 0\.weight \(16, 1, 3, 3\)"):
        load_initial_weights(_model(10, width=8), path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="not a torch state dict"):
        load_initial_weights(_model(10), junk)
    with pytest.raises(WeightsError, match="not found"):
        load_initial_weights(_model(10), tmp_path / "absent.pt")


def test_weights_must_live_in_the_tracked_folder() -> None:
    with pytest.raises(ParamsError, match="under weights/"):
        validate_params({"model": {"weights": "models/checkpoint.pt"}})
    assert validate_params({"model": {"weights": "weights/a.pt"}}).model.weights == "weights/a.pt"
