"""The params schema: the real file is valid, every kind of mistake is named clearly."""

from pathlib import Path

import pytest
import yaml

from imgclf.params import ParamsError, load_params, validate_params
from tests.support import ROOT


def real() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.model.name == "small_cnn"
    assert params.lr == "auto"  # resolved from the model when training starts


def test_misspelled_top_level_key_suggests_the_right_one() -> None:
    with pytest.raises(ParamsError) as err:
        validate_params({**real(), "lr_rate": 1e-3})
    assert "unknown key 'lr_rate'" in str(err.value)
    assert "Did you mean 'lr'?" in str(err.value)


def test_misspelled_nested_key_names_the_section() -> None:
    raw = real()
    raw["model"]["nmae"] = "resnet18"
    with pytest.raises(ParamsError, match=r"unknown key 'model\.nmae'.*Did you mean 'model\.name'"):
        validate_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lr", -1, "'lr' = -1: lr must be 'auto' or a number > 0"),
        ("epochs", 0, "'epochs'"),
        ("batch_size", "big", "'batch_size' = 'big'"),
    ],
)
def test_impossible_values_name_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        validate_params({**real(), key: value})
    assert expected in str(err.value)


def test_unknown_model_lists_the_allowed_names() -> None:
    raw = real()
    raw["model"]["name"] = "nope"
    with pytest.raises(ParamsError) as err:
        validate_params(raw)
    message = str(err.value)
    assert "'model.name' = 'nope'" in message
    for allowed in ("small_cnn", "resnet18", "mobilenet_v3_small"):
        assert allowed in message


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ParamsError) as err:
        validate_params({**real(), "lr": -1, "epochs": -3, "foo": 1})
    assert str(err.value).count("\n- ") == 3


def test_split_fractions_must_leave_training_data() -> None:
    raw = real()
    raw["prepare"].update(val_fraction=0.45, test_fraction=0.45)
    with pytest.raises(ParamsError, match="val_fraction \\+ test_fraction"):
        validate_params(raw)


def test_unreadable_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)


def test_int8_export_is_offered_only_where_the_benchmark_says_it_pays() -> None:
    from imgclf.artifact.int8_policy import MEASURED_SPEEDUP, MIN_SPEEDUP, check_export, offered

    assert offered() == sorted(a for a, s in MEASURED_SPEEDUP.items() if s >= MIN_SPEEDUP)
    for name in ("resnet18", "mobilenet_v3_small", "small_cnn"):
        raw = {"model": {"name": name}, "export": {"quantize": "int8"}}
        if name in offered():
            check_export(validate_params(raw))  # accepted
        else:
            params = validate_params(raw)  # the schema alone does not read the policy
            with pytest.raises(ParamsError) as err:
                check_export(params)
            message = str(err.value)
            assert "'export.quantize' = 'int8'" in message and "bench/RESULTS.md" in message
            assert name in message


def test_lr_is_auto_or_a_positive_number_with_one_clear_message() -> None:
    from imgclf.params import ParamsError, validate_params

    assert validate_params({"lr": "auto"}).lr == "auto"
    assert validate_params({"lr": "1e-3"}).lr == 0.001  # what `-S lr=1e-3` passes
    for bad in ("fast", -1, 0, True, "nan", 11):
        with pytest.raises(ParamsError, match=r"lr must be 'auto' or a number > 0"):
            validate_params({"lr": bad})


def test_auto_lr_scales_inversely_with_the_widest_convolution() -> None:
    from imgclf.params import validate_params
    from imgclf.training.architectures import build_model
    from imgclf.training.loop import resolve_lr

    def lr_for(size: int, channels: int, lr: object = "auto") -> tuple[float, str]:
        p = validate_params({"lr": lr})
        return resolve_lr(p, build_model(p.model, channels, 10, size, [0.5], [0.25]))

    assert lr_for(8, 1) == (0.005, "auto: 0.005 x 64 / 64 channels")  # the digits: exact
    assert lr_for(32, 3)[0] == 0.00125  # widest conv 256
    assert lr_for(32, 3, 0.01) == (0.01, "set")
