"""prepare on user-style folders: bad files are reported, not fatal; impossible splits are."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from imgclf.data.prepare import (
    PrepareError,
    prepare,
    scan_imagefolder,
    stratified_split,
)
from imgclf.data.prepared_files import load_meta, load_split
from imgclf.data.preprocessing import PreprocessSpec, preprocess
from imgclf.jsonio import expand
from imgclf.params import Params, validate_params
from tests.images import bad_files, encode, odd_images, shape_image, write_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]


def photo_params(**prepare: object) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepare"].update({"image_size": 16, "color_mode": "rgb", "min_side": 4, **prepare})
    return validate_params(raw)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Three classes of JPEGs plus every bad and odd file a real folder collects."""
    root = write_shapes_dataset(tmp_path / "raw", per_class=8)
    base = shape_image(0, (40, 40), seed=9)
    for name, data in bad_files(encode(base, "JPEG")).items():
        (root / "class_0" / name).write_bytes(data)
    for name, data in odd_images(base).items():
        (root / "class_1" / name).write_bytes(data)
    (root / "class_2" / ".DS_Store").write_bytes(b"\0\1")
    dup = (root / "class_2" / "img_000.jpg").read_bytes()
    (root / "class_2" / "copy_of_000.jpg").write_bytes(dup)
    return root


def test_bad_files_are_skipped_with_reasons_and_raw_is_untouched(
    messy: Path, tmp_path: Path
) -> None:
    before = tree_digest(messy)
    report = prepare(messy, tmp_path / "prepared", tmp_path / "prepare.json", photo_params())
    assert tree_digest(messy) == before
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons.pop("class_0/truncated.jpg") in {"truncated", "corrupt"}
    assert reasons == {
        "class_0/bomb.png": "too_many_pixels",
        "class_0/empty.jpg": "empty_file",
        "class_0/text.jpg": "not_an_image",
        "class_0/tiny.png": "too_small",
        # files are read in sorted order: the first copy is kept
        "class_2/img_000.jpg": "duplicate",
    }
    assert "class_2/copy_of_000.jpg" in report["skipped"][-1]["detail"]
    # all six odd-but-valid images were used
    by_class = {row["class"]: row for row in report["classes"]}
    assert by_class["class_1"]["used"] == 8 + 6
    assert expand(json.loads((tmp_path / "prepare.json").read_text())) == report


def test_outputs_are_uint8_arrays_with_an_index(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    report = prepare(messy, out, tmp_path / "prepare.json", photo_params())
    total = 0
    for split in ("train", "val", "test"):
        images, labels = load_split(out, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3)
        assert len(images) == len(labels) == report["split"][split]
        total += len(images)
    assert total == report["n_used"]
    meta = load_meta(out)
    assert meta["classes"] == ["class_0", "class_1", "class_2"]
    assert len(meta["dataset"]["fingerprint"]) == 64
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "split,position,label,class,path,sha256,width,height"
    assert len(index) == total + 1
    assert str(tmp_path) not in (out / "index.csv").read_text()  # no absolute paths


@pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
def test_rows_are_what_preprocess_gives_and_stats_are_exact(
    messy: Path, tmp_path: Path, color_mode: str
) -> None:
    """Every stored row is ``preprocess`` of its file, and meta's mean/std are those of the
    stored train pixels (the decoders write rows and take sums from their own copies)."""
    out = tmp_path / "prepared"
    params = photo_params(color_mode=color_mode)
    prepare(messy, out, tmp_path / "prepare.json", params)
    spec = PreprocessSpec(16, color_mode, params.prepare.resize, params.prepare.max_pixels)
    arrays = {split: load_split(out, split)[0] for split in ("train", "val", "test")}
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert rows
    for row in rows:
        expected = preprocess((messy / row["path"]).read_bytes(), spec)
        assert np.array_equal(arrays[row["split"]][int(row["position"])], expected), row["path"]
    train = arrays["train"].astype(np.float64) / 255
    meta = load_meta(out)
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))  # per channel
    assert len(meta["mean"]) == spec.channels
    np.testing.assert_allclose(meta["mean"], np.round(mean, 6), atol=2e-6)
    np.testing.assert_allclose(meta["std"], np.round(std, 6), atol=2e-6)


def test_prepare_is_byte_deterministic(messy: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        prepare(messy, tmp_path / run, tmp_path / f"{run}.json", photo_params())
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_a_class_without_usable_images_is_refused(tmp_path: Path) -> None:
    root = write_shapes_dataset(tmp_path / "raw", per_class=5)
    for path in (root / "class_2").iterdir():
        path.write_bytes(b"broken")
    earlier = tmp_path / "prepared"
    earlier.mkdir()
    (earlier / "keep.txt").write_text("earlier output")
    with pytest.raises(PrepareError, match=r"class 'class_2' has 0 usable images.*not_an_image"):
        prepare(root, earlier, tmp_path / "prepare.json", photo_params())
    assert (earlier / "keep.txt").read_text() == "earlier output"  # nothing lost
    assert not (tmp_path / "prepare.json").exists()


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    root = write_shapes_dataset(tmp_path / "raw", per_class=5)
    (root / "empty_class").mkdir()
    with pytest.raises(PrepareError, match="class 'empty_class' has 0 usable images"):
        prepare(root, tmp_path / "p", tmp_path / "r.json", photo_params())


def test_missing_or_flat_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="does not exist"):
        scan_imagefolder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(PrepareError, match="one sub-folder per class"):
        scan_imagefolder(tmp_path / "flat")


def test_split_is_stratified_seeded_and_complete() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 20, 3])
    split = stratified_split(labels, 0.15, 0.2, seed=7)
    assert (split == stratified_split(labels, 0.15, 0.2, seed=7)).all()
    assert not (split == stratified_split(labels, 0.15, 0.2, seed=8)).all()
    for label, n in enumerate([100, 50, 20, 3]):
        mine = split[labels == label]
        assert {"train", "val", "test"} <= set(mine)  # every class in every split
        if n >= 20:
            assert abs((mine == "test").mean() - 0.2) < 0.03
            assert abs((mine == "val").mean() - 0.15) < 0.03


def test_min_side_and_reported_sizes_use_the_file_not_the_reduced_decode(tmp_path: Path) -> None:
    """A 2000x1500 JPEG decodes at 1/8 for 32 px models (250x187): min_side 200 must pass."""
    root = tmp_path / "raw"
    for label in range(2):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(4):
            img = shape_image(label, (2000, 1500), seed=10 * label + i)
            (folder / f"{i}.jpg").write_bytes(encode(img, "JPEG", quality=80))
    # Synthetic shapes of one class hash alike: grouping off, this test is about sizes.
    params = photo_params(image_size=32, min_side=200, near_dup_distance=-1)
    report = prepare(root, tmp_path / "prepared", tmp_path / "prepare.json", params)
    assert report["n_skipped"] == 0, report["skipped"]
    assert report["n_used"] == 8


def _scratch(path: Path, rows: int, row_shape: tuple[int, ...], header: int) -> np.ndarray:
    """A scratch file as the decoders leave it: ``header`` reserved bytes, then rows."""
    pixels = np.random.default_rng(rows).integers(0, 256, (rows, *row_shape), dtype=np.uint8)
    path.write_bytes(b"\0" * header + pixels.tobytes())
    return pixels


@pytest.mark.parametrize("pick", ["scattered", "all", "none", "tail", "one"])
def test_the_largest_split_is_made_in_place_byte_for_byte_as_a_copy(
    tmp_path: Path, pick: str
) -> None:
    """split_in_place (the train split: no second copy of most of the pixels) writes the
    same bytes as write_split and np.save, for any pattern of rows; the others' rows are
    copied out first and still read right; a file too small for the move buffer works."""
    from imgclf.data import prepare as prep

    shape, n, header = (5, 5, 3), 40, prep.SCRATCH_HEADER
    rng = np.random.default_rng(7)
    rows = {
        "scattered": np.sort(rng.choice(n, 27, replace=False)),
        "all": np.arange(n),
        "none": np.arange(0),
        "tail": np.arange(30, n),
        "one": np.array([17]),
    }[pick]
    scratch = tmp_path / "scratch.u8"
    pixels = _scratch(scratch, n, shape, header)
    rest = np.setdiff1d(np.arange(n), rows)
    prep.write_split(tmp_path / "rest.npy", scratch, rest, shape, header)
    assert prep.split_in_place(tmp_path / "train.npy", scratch, rows, shape, header)
    assert not scratch.exists()
    np.save(tmp_path / "expected.npy", pixels[rows])
    assert (tmp_path / "train.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "rest.npy"), pixels[rest])


def test_in_place_refuses_what_it_cannot_do_and_leaves_the_scratch(tmp_path: Path) -> None:
    """Rows out of order, or a header that would not fit the reserved bytes: False, the
    scratch untouched (prepare then copies)."""
    from imgclf.data import prepare as prep

    shape, header = (4, 4, 1), prep.SCRATCH_HEADER
    scratch = tmp_path / "scratch.u8"
    _scratch(scratch, 10, shape, header)
    before = scratch.read_bytes()
    assert not prep.split_in_place(tmp_path / "x.npy", scratch, np.array([3, 1]), shape, header)
    assert not prep.split_in_place(tmp_path / "x.npy", scratch, np.array([1, 3]), shape, 64)
    assert scratch.read_bytes() == before and not (tmp_path / "x.npy").exists()


def test_moves_larger_than_the_buffer_keep_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs longer than MOVE_BYTES move in pieces (bounded memory) without losing a byte."""
    from imgclf.data import prepare as prep

    monkeypatch.setattr(prep, "MOVE_BYTES", 7)  # smaller than a row: every move is split
    shape, n, header = (3, 3, 3), 30, prep.SCRATCH_HEADER
    scratch = tmp_path / "scratch.u8"
    pixels = _scratch(scratch, n, shape, header)
    rows = np.array([2, 3, 4, 5, 9, 10, 11, 20, 21, 29])
    prep.write_split(tmp_path / "copy.npy", scratch, rows, shape, header)
    assert prep.split_in_place(tmp_path / "moved.npy", scratch, rows, shape, header)
    np.testing.assert_array_equal(np.load(tmp_path / "moved.npy"), pixels[rows])
    assert (tmp_path / "moved.npy").read_bytes() == (tmp_path / "copy.npy").read_bytes()
