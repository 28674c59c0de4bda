"""Datasets: the embedded mnist5k, folders, image modes and every bad input."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder, pattern, runs_of, run_cli, write_image
from imaging.datasets import load_dataset, materialise_mnist5k, scan_folder
from imaging.errors import InputError
from imaging.images import BadImage, decode, open_image, to_array


def test_mnist5k_is_materialised_once_with_a_stratified_80_10_10_split():
    manifest, report = load_dataset("mnist5k")
    assert len(manifest) == 5000 and report.skipped == 0
    counts = manifest.frame.groupby(["split", "label"]).size()
    assert set(counts["train"]) == {400} and set(counts["val"]) == {50} and set(counts["test"]) == {50}
    assert manifest.classes == [str(d) for d in range(10)]
    marker = materialise_mnist5k() / "COMPLETE"
    stamp = marker.stat().st_mtime_ns
    again, _ = load_dataset("mnist5k")
    assert marker.stat().st_mtime_ns == stamp  # not rewritten
    assert again.digest == manifest.digest
    first = decode((materialise_mnist5k() / again.frame["path"][0]).read_bytes())
    assert first.shape == (28, 28, 1) and first.dtype == np.uint8 and first.max() > 200


def test_folder_without_splits_gets_a_seeded_stratified_split(tmp_path):
    root = make_folder(tmp_path / "d", per_class=20)
    manifest, _ = scan_folder(root, val_fraction=0.1, test_fraction=0.2, split_seed=3)
    counts = manifest.frame.groupby(["split", "label"]).size()
    assert set(counts["train"]) == {14} and set(counts["val"]) == {2} and set(counts["test"]) == {4}
    same, _ = scan_folder(root, val_fraction=0.1, test_fraction=0.2, split_seed=3)
    other, _ = scan_folder(root, val_fraction=0.1, test_fraction=0.2, split_seed=4)
    assert same.digest == manifest.digest and other.digest != manifest.digest
    assert manifest.frame["sha256"].str.len().eq(64).all()


def test_train_and_test_folders_get_val_carved_from_train(tmp_path):
    root = make_folder(tmp_path / "d", splits={"train": 10, "test": 3})
    manifest, _ = scan_folder(root, val_fraction=0.2)
    counts = manifest.frame.groupby(["split", "label"]).size()
    assert set(counts["test"]) == {3} and set(counts["val"]) == {2} and set(counts["train"]) == {8}
    assert manifest.frame.loc[manifest.frame["split"] == "test", "path"].str.startswith("test/").all()


@pytest.mark.parametrize(
    "mode, make, expected",
    [
        ("L", lambda: np.full((5, 6), 77, np.uint8), (5, 6, 1)),
        ("RGB", lambda: np.full((5, 6, 3), 9, np.uint8), (5, 6, 3)),
        ("RGBA", lambda: np.dstack([np.full((5, 6, 3), 200, np.uint8), np.zeros((5, 6), np.uint8)]), (5, 6, 3)),
        ("I;16", lambda: np.full((5, 6), 65535, np.uint16), (5, 6, 1)),
    ],
)
def test_every_image_mode_becomes_uint8_grey_or_rgb(mode, make, expected):
    image = Image.fromarray(make())
    assert image.mode == mode
    array = to_array(image)
    assert array.shape == expected and array.dtype == np.uint8
    if mode == "RGBA":
        assert array.max() == 0  # fully transparent: composited over black
    if mode == "I;16":
        assert array.min() == 255  # 16-bit full scale is 8-bit full scale


def test_palette_and_grey_alpha_images_convert(tmp_path):
    palette = Image.fromarray(np.arange(30, dtype=np.uint8).reshape(5, 6)).convert("P")
    assert to_array(palette).shape == (5, 6, 3)
    grey_alpha = Image.new("LA", (4, 4), (100, 255))
    assert to_array(grey_alpha).tolist() == np.full((4, 4, 1), 100).tolist()
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(buffer, "PNG")
    assert decode(buffer.getvalue(), channels=1, size=4).shape == (4, 4, 1)


# --- bad input: one clear message, nothing written ------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"data folder .*nope does not exist; pass 'mnist5k' or a folder"):
        load_dataset(str(tmp_path / "nope"))


def test_no_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", pattern(0, 0))
    with pytest.raises(InputError, match=r"has no class sub-folders; put each class's images in"):
        scan_folder(tmp_path / "flat")


def test_empty_class(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    (root / "dog").mkdir()
    with pytest.raises(InputError, match=r"class 'dog' has no images in .*dog; add images or remove the folder"):
        scan_folder(root)


def test_single_class(tmp_path):
    root = make_folder(tmp_path / "d", classes=("ant",), per_class=5)
    with pytest.raises(InputError, match=r"has only one class \('ant'\); a classifier needs at least two"):
        scan_folder(root)


def test_bad_files_are_listed_or_skipped(tmp_path):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "ant" / "photo.jpg").write_text("not an image")
    good = (root / "bee" / "000.png").read_bytes()
    (root / "bee" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError) as error:
        scan_folder(root)
    message = str(error.value)
    assert "2 file(s)" in message and "ant/photo.jpg (not an image (Pillow cannot identify the format))" in message and "bee/cut.png (truncated" in message
    assert "--skip-bad-images" in message and "BytesIO" not in message and " at 0x" not in message
    manifest, report = scan_folder(root, skip_bad_images=True)
    assert report.skipped == 2 and len(manifest) == 30


def test_non_image_files_are_ignored_and_counted(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    for name in ("Thumbs.db", "desktop.ini", "README", "README.md", "notes.txt", ".DS_Store"):
        (root / "ant" / name).write_text("not an image")
    write_image(root / "bee" / "UPPER.PNG", pattern(1, 50))
    manifest, report = scan_folder(root)
    assert len(manifest) == 16 and "bee/UPPER.PNG" in set(manifest.frame["path"])  # suffixes match in any case
    assert report.skipped == 0 and report.ignored == 5  # .DS_Store is hidden, left out as before
    assert sorted(report.ignored_files) == ["ant/README", "ant/README.md", "ant/Thumbs.db", "ant/desktop.ini", "ant/notes.txt"]


def test_class_of_only_non_image_files(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    (root / "dog").mkdir()
    (root / "dog" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "dog" / "README.md").write_text("# dogs")
    with pytest.raises(InputError, match=r"class 'dog' has no images in .*dog \(ignored 2 non-image file\(s\), e.g. README.md; images end in .*\.png.*\); add images or remove the folder"):
        scan_folder(root)


def test_skipping_cannot_empty_a_class(tmp_path):
    root = make_folder(tmp_path / "d", per_class=12)
    for path in (root / "cat").iterdir():
        path.write_text("not an image")
    with pytest.raises(InputError, match=r"^class 'cat' has no usable images: all 12 of its files were skipped as bad \(cat/000.png: not an image \(Pillow cannot identify the format\)\); add readable images to cat/ or remove the folder\.$"):
        scan_folder(root, skip_bad_images=True)
    for path in root.rglob("*.png"):
        path.write_text("not an image")
    with pytest.raises(InputError, match=r"^class 'ant' has no usable images: all 12 of its files were skipped as bad"):  # not a KeyError
        scan_folder(root, skip_bad_images=True)


def test_skipping_cannot_empty_a_class_of_one_split(tmp_path):
    root = make_folder(tmp_path / "d", splits={"train": 5, "test": 2})
    for path in (root / "test" / "bee").iterdir():
        path.write_bytes(b"")
    with pytest.raises(InputError, match=r"^class 'bee' in test/ has no usable images: all 2 of its files were skipped as bad \(test/bee/005.png: not an image .*\); add readable images to test/bee/"):
        scan_folder(root, skip_bad_images=True)


def test_decompression_bomb_is_refused(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    write_image(root / "cat" / "huge.png", np.zeros((300, 300), np.uint8))
    with pytest.raises(InputError, match=r"cat/huge.png \(300x300 = 90,000 pixels is over the --max-pixels limit of 10,000 \(a possible decompression bomb\); raise --max-pixels if the file is genuine\)"):
        scan_folder(root, max_pixels=10_000)


@pytest.mark.parametrize("pillow_limit", [1_000, 60_000])  # 90,000 pixels: over twice Pillow's limit (its error), over once (its warning)
def test_max_pixels_not_pillows_limit_decides(monkeypatch, pillow_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(buffer, "PNG")
    with pytest.raises(BadImage, match=r"^300x300 = 90,000 pixels is over the --max-pixels limit of 10,000 "):
        open_image(buffer.getvalue(), max_pixels=10_000)
    assert open_image(buffer.getvalue(), max_pixels=100_000).size == (300, 300)  # raising --max-pixels is enough
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_splits_with_different_classes(tmp_path):
    root = make_folder(tmp_path / "d", splits={"train": 5, "test": 2})
    for name in ("000", "001"):
        write_image(root / "test" / "dog" / f"{name}.png", pattern(3, 0))
    with pytest.raises(InputError, match=r"test/ and train/ have different classes \(extra \['dog'\]\); give every split the same class folders"):
        scan_folder(root)


def test_val_split_too_small_for_every_class(tmp_path):
    root = make_folder(tmp_path / "d", splits={"train": 5, "val": 1, "test": 1})
    for path in (root / "val" / "cat").iterdir():
        path.unlink()
    (root / "val" / "cat").rmdir()
    write_image(root / "val" / "ant" / "extra.png", pattern(0, 99))
    with pytest.raises(InputError, match=r"val/ and train/ have different classes \(missing \['cat'\]\)"):
        scan_folder(root)
    tiny = make_folder(tmp_path / "t", per_class=2)
    with pytest.raises(InputError, match=r"class 'ant' has 2 images, too few to split into train, val, test; give it at least 3"):
        scan_folder(tiny)


def test_cli_bad_data_exits_2_and_creates_no_run(tmp_path, experiment):
    result = run_cli("train", "--data", str(tmp_path / "missing"), "--model", "smallcnn")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: data folder")
    assert "Traceback" not in result.stderr
    assert runs_of(experiment) == []


def test_scan_cache_notices_a_changed_file(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5)
    first, _ = scan_folder(root)
    target = root / "ant" / "000.png"
    write_image(target, pattern(1, 7))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10_000_000))
    second, _ = scan_folder(root)
    assert first.digest != second.digest
