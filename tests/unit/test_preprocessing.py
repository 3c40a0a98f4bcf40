"""The one preprocessing function, on every awkward and broken input we could make."""

import numpy as np
import pytest
from PIL import Image

from imgclf.data.preprocessing import (
    ImageError,
    PreprocessSpec,
    as_pixels,
    open_image,
    preprocess,
    preprocess_image,
)
from tests.images import bad_files, encode, exif_rotated_jpeg, odd_images, shape_image

RGB = PreprocessSpec(image_size=32, color_mode="rgb")
GRAY = PreprocessSpec(image_size=32, color_mode="grayscale")


@pytest.fixture(scope="module")
def base() -> Image.Image:
    return shape_image(1, (64, 48), seed=0)


@pytest.mark.parametrize("spec", [RGB, GRAY])
def test_output_is_uint8_hwc(base: Image.Image, spec: PreprocessSpec) -> None:
    out = preprocess(encode(base, "PNG"), spec)
    assert out.shape == (32, 32, spec.channels)
    assert out.dtype == np.uint8


@pytest.mark.parametrize(
    "name", ["rgba.png", "palette.png", "cmyk.jpg", "gray16.png", "gray.png", "animated.gif"]
)
def test_odd_but_valid_modes_give_the_same_picture(base: Image.Image, name: str) -> None:
    """Every mode lands close to the plain grayscale rendering of the same picture."""
    reference = preprocess(encode(base.convert("L"), "PNG"), GRAY).astype(int)
    out = preprocess(odd_images(base)[name], GRAY).astype(int)
    # palette quantisation and JPEG/CMYK round trips are lossy; a wrong mode is far off
    assert np.abs(out - reference).mean() < 12, name


@pytest.mark.parametrize("spec", [RGB, GRAY])
def test_the_image_step_is_preprocess_without_its_last_line(
    base: Image.Image, spec: PreprocessSpec
) -> None:
    """``prepare`` takes the Pillow image (for its histogram) and converts it itself."""
    for name, data in {"plain.png": encode(base, "PNG"), **odd_images(base)}.items():
        img = preprocess_image(data, spec)
        assert img.mode == ("L" if spec.color_mode == "grayscale" else "RGB"), name
        assert np.array_equal(as_pixels(img), preprocess(data, spec)), name


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.full((16, 16), 40000, dtype=np.uint16)
    out = preprocess(encode(Image.fromarray(arr), "PNG"), PreprocessSpec(16, "grayscale"))
    assert int(out[0, 0, 0]) == round(40000 / 257)


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    out = preprocess(encode(clear, "PNG"), PreprocessSpec(16, "rgb"))
    assert (out == 255).all()


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (60, 20), (0, 0, 0))
    upright.paste((255, 255, 255), (0, 0, 20, 20))  # white block on the left
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone sensor stores
    img = open_image(exif_rotated_jpeg(stored, orientation=6), max_pixels=10**6)
    assert img.size == (60, 20)
    arr = np.asarray(img.convert("L"))
    assert arr[:, :20].mean() > 200 and arr[:, 40:].mean() < 50


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "truncated"),
        ("empty.jpg", "not_an_image"),
        ("text.jpg", "not_an_image"),
        ("bomb.png", "too_many_pixels"),
    ],
)
def test_bad_files_raise_a_tagged_error(base: Image.Image, name: str, reason: str) -> None:
    data = bad_files(encode(base, "JPEG"))[name]
    with pytest.raises(ImageError) as err:
        preprocess(data, RGB)
    assert err.value.reason == reason
    assert str(err.value)


def test_bomb_is_refused_from_the_header_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """30000×30000 would need 900 MB; the refusal must come before any allocation.

    Pillow allocates in C, where tracemalloc cannot see: what proves "before decoding"
    is that Pillow's ``load`` (where it allocates the pixels) is never entered, and that
    the refusal is the header check's own (reason and text), not a later failure.
    """
    from PIL import ImageFile

    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = bad_files(b"")["bomb.png"]
    with pytest.raises(ImageError) as err:
        open_image(data, max_pixels=64_000_000)
    assert err.value.reason == "too_many_pixels"
    assert "declares 30000x30000" in str(err.value)
    assert loads == [], "the bomb's pixels were decoded before it was refused"
    open_image(encode(Image.new("L", (4, 4)), "PNG"), max_pixels=64_000_000)
    assert (4, 4) in loads, "the probe no longer sees Pillow decode"


@pytest.mark.parametrize("resize", ["squash", "center_crop", "pad"])
def test_resize_modes_give_square_outputs(base: Image.Image, resize: str) -> None:
    spec = PreprocessSpec(24, "rgb", resize)  # type: ignore[arg-type]
    assert preprocess(encode(base, "PNG"), spec).shape == (24, 24, 3)


def test_large_jpeg_uses_draft_decoding_and_matches_shape() -> None:
    big = shape_image(0, (3000, 2000), seed=3)
    out = preprocess(encode(big, "JPEG", quality=85), RGB)
    assert out.shape == (32, 32, 3)
    # the red square is in the middle of the picture
    assert out[16, 16, 0] > 150 and out[16, 16, 1] < 100


def test_spec_round_trips_through_the_card() -> None:
    assert PreprocessSpec.from_dict(RGB.to_dict()) == RGB


def test_phone_size_jpeg_decodes_at_an_eighth_and_keeps_its_source_size() -> None:
    """DCT-domain downscaling goes as far as still covers image_size (a 4000x3000 → 1/8)."""
    from imgclf.data.preprocessing import SOURCE_SIZE, draft_target

    data = encode(shape_image(0, (4000, 3000), seed=4), "JPEG", quality=85)
    spec = PreprocessSpec(image_size=224, color_mode="rgb")
    img = open_image(data, spec.max_pixels, draft_to=draft_target(spec))
    assert img.size == (500, 375)  # both sides still >= 224: the resize only shrinks
    assert img.info[SOURCE_SIZE] == (4000, 3000)
    assert preprocess(data, spec).shape == (224, 224, 3)


def test_a_jpeg_is_never_decoded_below_the_model_size() -> None:
    from imgclf.data.preprocessing import draft_target

    spec = PreprocessSpec(image_size=224, color_mode="rgb")
    for size in [(600, 400), (1920, 1080), (449, 3000), (224, 224)]:
        data = encode(shape_image(0, size, seed=5), "JPEG")
        img = open_image(data, spec.max_pixels, draft_to=draft_target(spec))
        assert min(img.size) >= min(224, *size), size
