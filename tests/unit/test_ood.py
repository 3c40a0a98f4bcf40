"""The OOD detector's parts: range checks, the feature space, calibration, the generated sets.

Real numbers throughout (no mocks): Gaussian embeddings whose Mahalanobis distances are
known, images whose brightness is known, and the real generators and preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.data.features import image_features, source_info
from imgclf.data.preprocessing import PreprocessSpec, preprocess
from imgclf.jsonio import write_json
from imgclf.ood.detector import OOD_FILE, RangeCheck, detector_from_dict, load_detector
from imgclf.ood.fit import calibrate, fit_checks, fit_detector, fit_space
from imgclf.ood.synthetic_sets import GENERATORS, ood_sets
from imgclf.params import ParamsError, validate_params
from imgclf.serving.settings import Settings, SettingsError


def _blobs(n: int, seed: int, d: int = 6, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Classes as Gaussian blobs around far-apart means, with a shared covariance."""
    rng = np.random.default_rng(seed)
    means = np.eye(classes, d) * 20.0
    labels = np.arange(n) % classes
    scale = np.diag(np.linspace(0.5, 2.0, d))
    return means[labels] + rng.standard_normal((n, d)) @ scale, labels


def _pixels(n: int, seed: int, lo: int = 40, hi: int = 120) -> np.ndarray:
    """Gray 8×8 'training' images: a bright square on dark noise (brightness in a band)."""
    rng = np.random.default_rng(seed)
    px = rng.integers(lo, hi, (n, 8, 8, 1), dtype=np.uint8)
    px[:, 2:6, 2:6] = rng.integers(180, 250, (n, 4, 4, 1))
    return px


def _batch(pixels: np.ndarray, embedding: np.ndarray | None, side: int = 8) -> dict:
    n = len(pixels)
    return {"pixels": pixels, "embedding": embedding, "widths": [side] * n,
            "heights": [side] * n, "formats": ["PNG"] * n}  # fmt: skip


def test_range_checks_are_linear_or_log_and_zero_inside() -> None:
    lin = RangeCheck(0.2, 0.6, log=False, unit=0.05)
    assert lin.violation(np.array([0.2, 0.4, 0.6])).tolist() == [0, 0, 0]
    assert lin.violation(np.array([0.1, 0.7])) == pytest.approx([2.0, 2.0])
    log = RangeCheck(2.0, 32.0, log=True, unit=float(np.log(4)))
    # Four times too big is one unit out, as is four times too small.
    assert log.violation(np.array([128.0, 0.5, 8.0])) == pytest.approx([1.0, 1.0, 0.0])


def test_fitted_ranges_cover_the_training_data_with_a_margin() -> None:
    px = _pixels(400, 1)
    feats = image_features(px, [8] * 400, [8] * 400, ["PNG"] * 400)
    checks = fit_checks(feats)
    assert {"brightness", "contrast", "sharpness", "size", "aspect", "dark"} <= set(checks)
    b = np.asarray(feats["brightness"])
    assert checks["brightness"]["lo"] < b.min() and checks["brightness"]["hi"] > b.max()
    # 4x smaller to 8x larger than the training sizes (larger ones only lose by resizing).
    assert checks["size"] == {"lo": 2.0, "hi": 64.0, "log": True, "unit": pytest.approx(1.386294)}


def test_mahalanobis_space_finds_the_nearest_class_and_ignores_row_order() -> None:
    emb, labels = _blobs(900, 2)
    space = fit_space(emb, labels, 3)
    assert np.allclose(space["means"], np.eye(3, 6) * 20.0, atol=0.4)
    # The integer sums make the fit independent of row order (no SIMD summation order).
    order = np.random.default_rng(0).permutation(len(emb))
    assert fit_space(emb[order], labels[order], 3) == space
    doc = {"format": "imgclf-ood/1", "model_sha256": "x", "pass_rate": 0.95, "checks": {},
           "embedding": {**space, "threshold": 1.0}}  # fmt: skip
    det = detector_from_dict(doc)
    assert det.space is not None
    near, _ = _blobs(300, 3)
    far = near + np.array([0, 0, 0, 0, 0, 25.0])  # off every class along one axis
    d_near, d_far = det.space.distance(near), det.space.distance(far)
    # The squared distance of Gaussian data is about chi-square with d=6 degrees of freedom.
    assert 3 < np.median(d_near) < 10 and d_far.min() > 4 * np.percentile(d_near, 99)


def test_calibration_lets_the_stated_fraction_of_the_test_split_pass() -> None:
    emb, labels = _blobs(600, 4)
    test_emb, _ = _blobs(200, 5)
    train = _batch(_pixels(600, 6), emb)
    test = _batch(_pixels(200, 7), test_emb)
    for rate in (0.9, 0.95, 0.99):
        doc = fit_detector(train, labels, test, 3, "sha", rate)
        det = detector_from_dict(doc)
        ok = [v.in_distribution for v in det.judge(**test)]
        assert np.mean(ok) == pytest.approx(rate, abs=0.006), rate
        assert doc["embedding"]["threshold"] == calibrate(det, doc, test)
    json.dumps(doc)  # the document is plain JSON


def test_verdicts_name_the_failing_checks_and_score_above_one() -> None:
    emb, labels = _blobs(600, 8)
    train, test = _batch(_pixels(600, 9), emb), _batch(_pixels(200, 10), _blobs(200, 11)[0])
    det = detector_from_dict(fit_detector(train, labels, test, 3, "sha", 0.95))
    black = np.zeros((1, 8, 8, 1), np.uint8)
    (v,) = det.judge(black, emb[:1], [8], [8], ["PNG"])
    assert not v.in_distribution and v.score > 1
    assert any(r.startswith("brightness outside the training range") for r in v.reasons)
    assert "brightness" in v.codes and "features" not in v.codes  # the embedding is a class's
    big, _ = _blobs(1, 12)
    (v,) = det.judge(_pixels(1, 13), big + 40.0, [600], [400], ["JPEG"])
    assert v.codes[0] in {"size", "features"} and {"size", "aspect", "features"} <= set(v.codes)
    assert v.reasons[0].startswith(("image size", "unlike every training class"))
    assert v.as_json()["in_distribution"] is False and v.as_json()["ood_reasons"] == v.reasons
    (ok,) = det.judge(**_batch(_pixels(1, 14), emb[1:2]))
    assert ok.in_distribution and ok.reasons == [] and ok.score <= 1


def test_without_an_embedding_only_the_input_checks_decide() -> None:
    train, test = _batch(_pixels(300, 15), None), _batch(_pixels(100, 16), None)
    doc = fit_detector(train, np.zeros(300, int), test, 1, "sha", 0.95)
    assert doc["embedding"] is None
    det = detector_from_dict(doc)
    assert det.judge(np.full((1, 8, 8, 1), 255, np.uint8), None, [8], [8], ["PNG"])[0].codes


def test_load_detector_refuses_missing_foreign_and_stale_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluate stage writes it"):
        load_detector(tmp_path, "abc")
    write_json(tmp_path / OOD_FILE, {"format": "something/1"})
    with pytest.raises(ValueError, match="not an imgclf OOD file"):
        load_detector(tmp_path, "abc")
    doc = fit_detector(_batch(_pixels(50, 1), None), np.zeros(50, int),
                       _batch(_pixels(20, 2), None), 1, "old", 0.95)  # fmt: skip
    write_json(tmp_path / OOD_FILE, doc)
    with pytest.raises(ValueError, match="another model"):
        load_detector(tmp_path, "new")
    assert load_detector(tmp_path, "old").model_sha256 == "old"


@pytest.mark.parametrize("spec", [PreprocessSpec(8, "grayscale"), PreprocessSpec(64, "rgb")])
def test_generated_sets_are_deterministic_real_files(spec: PreprocessSpec) -> None:
    test = np.random.default_rng(0).integers(0, 256, (5, spec.image_size, spec.image_size,
                                                      spec.channels), dtype=np.uint8)  # fmt: skip
    sets = ood_sets(test, seed=3, per_set=3)
    assert set(sets) == set(GENERATORS) and all(len(v) == 3 for v in sets.values())
    assert ood_sets(test, seed=3, per_set=3) == sets  # byte-identical
    assert ood_sets(test, seed=4, per_set=3) != sets
    for files in sets.values():
        for data in files:
            assert preprocess(data, spec).shape == (spec.image_size, spec.image_size,
                                                    spec.channels)  # fmt: skip
            assert source_info(data)[2] in {"PNG", "JPEG"}


def test_ood_pass_rate_param_is_validated_with_a_suggestion() -> None:
    assert validate_params({"evaluate": {"ood_pass_rate": 0.99}}).evaluate.ood_pass_rate == 0.99
    with pytest.raises(ParamsError, match="ood_pass_rate"):
        validate_params({"evaluate": {"ood_pass_rate": 1.0}})
    with pytest.raises(ParamsError, match=r"Did you mean 'evaluate\.ood_pass_rate'"):
        validate_params({"evaluate": {"ood_passrate": 0.9}})


def test_imgclf_ood_setting_names_the_allowed_values() -> None:
    assert Settings.from_env({}).ood == "flag"
    assert Settings.from_env({"IMGCLF_OOD": " Refuse "}).ood == "refuse"
    assert Settings.from_env({"IMGCLF_OOD": "off"}).ood == "off"
    with pytest.raises(SettingsError, match="IMGCLF_OOD='block' is not one of flag, refuse, off"):
        Settings.from_env({"IMGCLF_OOD": "block"})


def test_spd_inverse_matches_lapack_without_its_cpu_dependent_kernels() -> None:
    from imgclf.ood.fit import spd_inverse

    r = np.random.default_rng(0).standard_normal((300, 32))
    a = r.T @ r / 300 + 0.1 * np.eye(32)
    inv = spd_inverse(a)
    np.testing.assert_allclose(inv @ a, np.eye(32), atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(a), rtol=1e-10, atol=1e-12)


def _png(img: object, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt)  # type: ignore[attr-defined]
    return buf.getvalue()


def test_a_grayscale_model_flags_colour_files_by_their_original_colours() -> None:
    """Its pixels are gray, so the colour check reads the file: a red photo is flagged as
    colour, a gray image saved as RGB is not (it has no colour, whatever its mode)."""
    from PIL import Image

    from imgclf.data.features import source_colorfulness

    gray_files = [_png(Image.fromarray(p[..., 0])) for p in _pixels(40, 20)]
    assert {source_colorfulness(f) for f in gray_files} == {0.0}
    emb, labels = _blobs(40, 21)
    train = {**_batch(_pixels(40, 20), emb), "colours": [0.0] * 40}
    test = {**_batch(_pixels(40, 22), _blobs(40, 23)[0]), "colours": [0.0] * 40}
    doc = fit_detector(train, labels, test, 3, "sha", 0.95)
    assert doc["checks"]["source_colour"]["hi"] == 0.05
    det = detector_from_dict(doc)
    red = Image.new("RGB", (8, 8), (200, 30, 30))
    gray_rgb = Image.new("RGB", (8, 8), (90, 90, 90))
    files = [_png(red), _png(gray_rgb, "JPEG")]
    px = np.stack([preprocess(f, PreprocessSpec(8, "grayscale")) for f in files])
    red_v, gray_v = det.judge_uploads(px, None, files)
    assert "source_colour" in red_v.codes
    assert any(
        r.startswith("a colour image, the training images are grayscale") for r in red_v.reasons
    )
    assert "source_colour" not in gray_v.codes
    # Without measured colours (no raw files at evaluate time) there is no colour check.
    assert "source_colour" not in fit_detector({**train, "colours": None}, labels, test, 3,
                                               "sha", 0.95)["checks"]  # fmt: skip


def test_an_unreadable_original_size_is_no_size_verdict() -> None:
    emb, labels = _blobs(300, 30)
    train, test = _batch(_pixels(300, 31), emb), _batch(_pixels(100, 32), _blobs(100, 33)[0])
    det = detector_from_dict(fit_detector(train, labels, test, 3, "sha", 0.95))
    (v,) = det.judge(_pixels(1, 34), emb[:1], [0], [0], [""])
    assert "size" not in v.codes and "aspect" not in v.codes


def test_the_checks_judged_together_equal_each_check_alone_bit_for_bit() -> None:
    """raw_scores judges all range checks of a batch in a few numpy calls (the API's cost
    under load); each violation must still be exactly RangeCheck.violation of its feature."""
    rng = np.random.default_rng(21)
    px = rng.integers(30, 200, (300, 16, 16, 3), dtype=np.uint8)
    sides = rng.integers(40, 400, (2, 300)).tolist()
    train = {"pixels": px, "embedding": None, "widths": sides[0], "heights": sides[1],
             "formats": ["JPEG"] * 300}  # fmt: skip
    det = detector_from_dict(fit_detector(train, np.zeros(300, int), train, 1, "sha", 0.95))
    # In range, too dark, saturated, flat, huge, tiny, an unreadable size (0): all kinds.
    odd = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    odd[1] //= 8
    odd[2] = 255
    odd[3] = 90
    widths, heights = [100, 100, 100, 100, 9000, 3, 0], [120, 100, 100, 100, 50, 2, 0]
    _, violations, values = det.raw_scores(odd, None, widths, heights, ["PNG"] * 7)
    assert list(violations) == list(det.checks)  # the checks' order (reasons tie-break on it)
    known = (np.asarray(widths) > 0) & (np.asarray(heights) > 0)
    for name, check in det.checks.items():
        if name == "size":
            w = check.violation(np.asarray(values["width"], np.float64))
            h = check.violation(np.asarray(values["height"], np.float64))
            expected = np.where(known, np.maximum(w, h), 0.0)
        else:
            expected = check.violation(np.asarray(values[name], np.float64))
            expected = np.where(known, expected, 0.0) if name == "aspect" else expected
        assert violations[name].tobytes() == expected.tobytes(), name
    assert sum(bool((v > 0).any()) for v in violations.values()) >= 5  # they did fail
