"""A slow, per-image re-statement of the CIFAR-10-C (32 px) and Tiny-ImageNet-C (64 px) corruptions.

Hendrycks & Dietterich's generating scripts (github.com/hendrycks/robustness,
ImageNet-C/create_c/make_cifar_c.py and make_tinyimagenet_c.py) written out again, family by
family, from their formulas, constants and library calls: numpy's global generator for every
random draw, skimage.filters.gaussian, scipy.ndimage.zoom and map_coordinates, OpenCV's
filter2D / GaussianBlur / cvtColor / getAffineTransform / warpAffine / imread / resize, PIL's
BOX resize and JPEG, skimage's HSV and salt-and-pepper noise. It is written for plainness, not
speed, and shares no code with imaging/corruptions.py (which it is the yardstick for); the
constants below are restated from the scripts, not read from imaging/corruption_tables.py.

One substitution: the scripts motion-blur with ImageMagick (Wand's MagickMotionBlurImage), which
is not available here. `imagecorruptions`' numpy port of that function (`_motion_blur`: the same
2 * radius + 1 taps with Gaussian weights over the tap index, trailing one way along the angle,
offsets rounded to whole pixels, edges replicated) stands in for it, fed and read back as 8-bit
images, as the scripts' PNG round trips through ImageMagick are.

`corrupt_one(image, kind, severity, table)` takes one uint8 HWC RGB image of the table's side and
returns the uint8 image the scripts would store (their `np.uint8(...)`, which truncates).
Tiny-ImageNet-C's files were also saved as JPEG (quality 85) after corruption; that storage step
is not part of the corruptions and is left out here.
"""
from __future__ import annotations

import math
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FROST_DIR = Path(__file__).resolve().parents[1] / "imaging" / "frost"  # the scripts' five frost photographs

SIDES = {"cifar": 32, "tiny": 64}

# per table and family, the five severities' constants as the two scripts give them
CONSTANTS = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # noise std (image in 0..1)
        "shot_noise": [500, 250, 100, 75, 50],  # photons at full intensity
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt-and-pepper amount
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias sigma
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, max delta, iterations
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma
        "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],  # zooms: arange(1, this, 0.01)
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, wibble decay
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],  # x side
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "tiny": {
        "gaussian_noise": [0.04, 0.08, 0.12, 0.15, 0.18],
        "shot_noise": [250, 100, 50, 30, 15],
        "impulse_noise": [0.01, 0.02, 0.05, 0.08, 0.14],
        "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
        "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
        "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
        "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
        "fog": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)],
        "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
        "jpeg_compression": [65, 58, 50, 40, 25],
    },
}
FROST_SCALE = {"cifar": 0.2, "tiny": 0.3}  # the scripts shrink the frost photographs by this before cropping


# ------------------------------------------------------------------ helpers


def _motion_blur_8bit(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """uint8 image (H, W[, C]) motion-blurred, back as uint8: stands in for the scripts' ImageMagick call."""
    import imagecorruptions.corruptions as theirs  # imported after benchmarks/corruptions.py's shims

    blurred = theirs._motion_blur(image.astype(np.float64), radius=radius, sigma=sigma, angle=angle)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def _gaussian(image: np.ndarray, sigma: float, **options) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(image, sigma=sigma, channel_axis=-1 if image.ndim == 3 else None, **options)


def _centre_zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """The scripts' clipped zoom: the central ceil(side / factor) square enlarged `factor` times by
    scipy.ndimage.zoom (order 1), then its central `side` x `side` kept. image: (side, side, C)."""
    from scipy.ndimage import zoom

    side = image.shape[0]
    crop = int(np.ceil(side / factor))
    top = (side - crop) // 2
    enlarged = zoom(image[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (enlarged.shape[0] - side) // 2
    return enlarged[trim:trim + side, trim:trim + side]


def _plasma(size: int, decay: float) -> np.ndarray:
    """Diamond-square height map on a size x size torus (size a power of two), scaled to [0, 1].

    Corners of the current grid (spacing `step`) are known; each pass sets the square centres
    to the mean of their four corners, then the edge midpoints to the mean of their two corners
    and two neighbouring centres, each plus wibble * uniform(-wibble, wibble); then the step
    halves and wibble is divided by `decay`. Neighbours wrap around the edges."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half, k = step // 2, size // step
        noise = wibble * np.random.uniform(-wibble, wibble, (k, k))
        for i in range(k):
            for j in range(k):
                y, x = i * step, j * step
                corners = grid[y, x] + grid[(y + step) % size, x] + grid[y, (x + step) % size] + grid[(y + step) % size, (x + step) % size]
                grid[y + half, x + half] = corners / 4 + noise[i, j]
        noise = wibble * np.random.uniform(-wibble, wibble, (k, k))
        for i in range(k):  # midpoints of the top edges: corners left and right, centres below and above
            for j in range(k):
                y, x = i * step, j * step + half
                around = grid[y, x - half] + grid[y, (x + half) % size] + grid[(y + half) % size, x] + grid[(y - half) % size, x]
                grid[y, x] = around / 4 + noise[i, j]
        noise = wibble * np.random.uniform(-wibble, wibble, (k, k))
        for i in range(k):  # midpoints of the left edges: corners above and below, centres right and left
            for j in range(k):
                y, x = i * step + half, j * step
                around = grid[y - half, x] + grid[(y + half) % size, x] + grid[y, (x + half) % size] + grid[y, (x - half) % size]
                grid[y, x] = around / 4 + noise[i, j]
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


# ------------------------------------------------------------------ the 15 families
# each takes uint8 HWC RGB of the table's side and returns floats in 0..255 (what the scripts return)


def gaussian_noise(x, c, side):
    pixels = x / 255.0
    return np.clip(pixels + np.random.normal(size=pixels.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, side):
    pixels = x / 255.0
    return np.clip(np.random.poisson(pixels * c) / c, 0, 1) * 255


def impulse_noise(x, c, side):
    from skimage.util import random_noise

    # the scripts' scikit-image drew from numpy's global generator; today's takes a seed, drawn from it
    noisy = random_noise(x / 255.0, mode="s&p", amount=c, rng=np.random.randint(2**31))
    return np.clip(noisy, 0, 1) * 255


def defocus_blur(x, c, side):
    radius, alias_blur = c
    reach = 8 if radius <= 8 else radius
    offsets = np.arange(-reach, reach + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    kernel = cv2.GaussianBlur(disk, ksize=(3, 3) if radius <= 8 else (5, 5), sigmaX=alias_blur)
    pixels = x / 255.0
    out = np.stack([cv2.filter2D(pixels[:, :, channel], -1, kernel) for channel in range(3)], axis=2)
    return np.clip(out, 0, 1) * 255


def glass_blur(x, c, side):
    sigma, delta, iterations = c
    pixels = np.uint8(_gaussian(x / 255.0, sigma) * 255)
    for _ in range(iterations):
        for h in range(side - delta, delta, -1):
            for w in range(side - delta, delta, -1):
                dx, dy = np.random.randint(-delta, delta, size=(2,))
                # The scripts write this as a tuple "swap" of two numpy row views; the right-hand
                # views are read after the first assignment, so the net effect is a one-way copy:
                # (h, w) takes the value at (h + dy, w + dx), which keeps its own.
                pixels[h, w] = pixels[h + dy, w + dx]
    return np.clip(_gaussian(pixels / 255.0, sigma), 0, 1) * 255


def motion_blur(x, c, side):
    radius, sigma = c
    return _motion_blur_8bit(x, radius, sigma, np.random.uniform(-45, 45)).astype(np.float64)


def zoom_blur(x, c, side):
    zooms = np.arange(1, c, 0.01)
    pixels = (x / 255.0).astype(np.float32)
    total = np.zeros_like(pixels)
    for factor in zooms:
        total += _centre_zoom(pixels, factor)
    return np.clip((pixels + total) / (len(zooms) + 1), 0, 1) * 255


def snow(x, c, side):
    mean, std, zoom_factor, threshold, radius, sigma, kept = c
    pixels = x.astype(np.float32) / 255.0
    flakes = np.random.normal(size=pixels.shape[:2], loc=mean, scale=std)
    flakes = _centre_zoom(flakes[..., None], zoom_factor)
    flakes[flakes < threshold] = 0
    flakes = (np.clip(flakes[..., 0], 0, 1) * 255).astype(np.uint8)  # the scripts' 8-bit grey PIL image
    flakes = _motion_blur_8bit(flakes, radius, sigma, np.random.uniform(-135, -45)) / 255.0
    flakes = flakes[..., None]
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).reshape(side, side, 1)
    pixels = kept * pixels + (1 - kept) * np.maximum(pixels, grey * 1.5 + 0.5)
    return np.clip(pixels + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost(x, c, side, scale):
    image_weight, frost_weight = c
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][np.random.randint(5)]
    picture = cv2.imread(str(FROST_DIR / name))  # BGR
    picture = cv2.resize(picture, (0, 0), fx=scale, fy=scale)
    top, left = np.random.randint(0, picture.shape[0] - side), np.random.randint(0, picture.shape[1] - side)
    picture = picture[top:top + side, left:left + side][..., ::-1]  # to RGB
    return np.clip(image_weight * x.astype(np.float64) + frost_weight * picture, 0, 255)


def fog(x, c, side):
    strength, decay = c
    pixels = x / 255.0
    brightest = pixels.max()
    pixels = pixels + strength * _plasma(side, decay)[:side, :side][..., None]
    return np.clip(pixels * brightest / (brightest + strength), 0, 1) * 255


def brightness(x, c, side):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x / 255.0)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def contrast(x, c, side):
    pixels = x / 255.0
    means = pixels.mean(axis=(0, 1), keepdims=True)
    return np.clip((pixels - means) * c + means, 0, 1) * 255


def elastic_transform(x, c, side):
    from scipy.ndimage import map_coordinates

    alpha, sigma, jitter = (side * v for v in c)
    image = x.astype(np.float32) / 255.0
    # random affine: three points a third of the side around the centre, each moved by up to `jitter` px
    centre = np.float32([side, side]) // 2
    reach = side // 3
    before = np.float32([centre + reach, [centre[0] + reach, centre[1] - reach], centre - reach])
    after = before + np.random.uniform(-jitter, jitter, size=before.shape).astype(np.float32)
    image = cv2.warpAffine(image, cv2.getAffineTransform(before, after), (side, side), borderMode=cv2.BORDER_REFLECT_101)
    # displacement: uniform noise in [-1, 1], Gaussian-smoothed (reflect, truncate 3), times alpha
    dx = (_gaussian(np.random.uniform(-1, 1, size=(side, side)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(np.random.uniform(-1, 1, size=(side, side)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    rows, cols, channels = np.meshgrid(np.arange(side), np.arange(side), np.arange(3), indexing="ij")
    coordinates = (rows + dy[..., None]).reshape(-1), (cols + dx[..., None]).reshape(-1), channels.reshape(-1)
    warped = map_coordinates(image, coordinates, order=1, mode="reflect").reshape(image.shape)
    return np.clip(warped, 0, 1) * 255


def pixelate(x, c, side):
    small = int(side * c)
    image = Image.fromarray(x).resize((small, small), Image.Resampling.BOX).resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def jpeg_compression(x, c, side):
    buffer = BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=c)
    return np.asarray(Image.open(buffer), dtype=np.float64)


FAMILIES = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}


def corrupt_one(image: np.ndarray, kind: str, severity: int, table: str) -> np.ndarray:
    """One uint8 HWC RGB image of side SIDES[table], corrupted as the table's script does (numpy's global generator)."""
    side = SIDES[table]
    assert image.shape == (side, side, 3) and image.dtype == np.uint8, image.shape
    c = CONSTANTS[table][kind][severity - 1]
    if kind == "frost":
        out = frost(image, c, side, FROST_SCALE[table])
    else:
        out = FAMILIES[kind](image, c, side)
    assert math.isfinite(float(np.sum(out)))
    return np.uint8(np.clip(out, 0, 255))  # the scripts store np.uint8(result): truncation
