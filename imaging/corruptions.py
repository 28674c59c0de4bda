"""Image corruptions: each family at severities 1..5, on whole uint8 batches.

Used three ways: the `corrupt` stage writes a corrupted copy of a split,
`train --augment kind:severity:probability` corrupts batches on the fly, and
`evaluate` measures accuracy per kind x severity (mCE, Hendrycks & Dietterich
2019). Every op takes uint8 NHWC (C = 1 or 3, any H and W; NHW is grey) and
returns the same shape and dtype, deterministically for a given `seed`.

Families and the parameter behind each severity 1..5
(`level` overrides the parameter of the families that have a "level"):

| family            | level means                                                             |
|-------------------|-------------------------------------------------------------------------|
| salt_pepper       | fraction of pixels, half black, half white, all channels: 0.02 0.05 0.10 0.20 0.30 |
| gradient_noise    | fraction of pixels, grown from the strongest edges, set to random values: as salt_pepper |
| blend             | weight of another-class image: 0.10 0.20 0.30 0.40 0.50                 |
| gaussian_noise    | noise std, fraction of 255                                              |
| shot_noise        | photons at full intensity (fewer = noisier)                             |
| impulse_noise     | fraction of values (per channel) set to 0 or 255                        |
| brightness        | added value, fraction of 255                                            |
| contrast          | kept fraction of contrast (less = harsher)                              |
| pixelate          | kept fraction of resolution (less = harsher)                            |
| jpeg_compression  | JPEG quality 1..100 (less = harsher)                                    |
| the other seven   | no level: tuples of the severity table (imaging/corruption_tables.py)   |

The three study families (salt_pepper, gradient_noise, blend) are ours and the
same at every image size. salt_pepper and gradient_noise share their fractions,
so their accuracies differ only by *where* the pixels are replaced. blend stops
at 0.5, where the other class weighs as much as the true one. salt_pepper and
gradient_noise replace exactly round(level * H * W) pixels of every image.

The other 15 families follow ImageNet-C (Hendrycks' scripts, as packaged by
`imagecorruptions`), written here as batch operations, with the parameters of
the published benchmark nearest in size (`TABLES`): CIFAR-10-C's
(make_cifar_c.py, 32 px), Tiny-ImageNet-C's (make_tinyimagenet_c.py, 64 px) or
ImageNet-C's (make_imagenet_c.py, 224 px). `table_for_size(min(H, W))` picks the
nearest on a log scale (up to 45 px: cifar, 46..119 px: tiny, from 120 px:
imagenet); `table=` overrides it. A table's lengths (blur radii, jumps, streaks,
flake zooms, elastic smoothing) are in pixels of images of its size and are used
as they are, not rescaled to the image. frost blends a random crop of one of
the benchmark's five frost photographs (imaging/frost/, scaled 0.2 / 0.3 / 1 for
the cifar / tiny / imagenet table, enlarged when an image is bigger than it).
Differences from the published code, all deliberate:
- elastic_transform draws the scripts' random affine (three points moved by up
  to `affine` px) and displacement field (uniform noise in [-1, 1], Gaussian
  smoothed by `sigma` px, times `alpha`) for cifar and tiny; at 224 px it
  follows `imagecorruptions`, without the original's affine (its size peaks at
  severity 2, so distortion did not grow with severity): alpha 12.5..30 times
  noise of +-1.12 px smoothed by 2.24 px.
- glass_blur does the original's pixel pass between its two blurs as whole-array
  gathers, in place of its per-pixel Python loop (seconds per 224 px image): the
  same integer offsets (numpy's randint(-d, d), so -d .. d - 1), the same band of
  pixels, and the same one-way copies chained in reverse raster order (the
  original's tuple "swap" of numpy views copies one way only), so the image also
  drifts by about half a pixel per pass, as in the published data.
- gaussian noise comes from a 65,536-entry inverse-CDF table (tails cut at
  4.3 sigma, 1 sample in 65,000); shot noise from a 4,096-entry Poisson
  quantile table per input value (only the rarest 1/8192 of draws differ).
  They are about 7x and 40x faster than numpy's normal and Poisson samplers.
- pixelate shows in each block the mean of exactly the pixels it covers; PIL's
  BOX resize (ImageNet-C) also mixes in slivers of neighbouring pixels when the
  ratio is not whole, which made severity 1 distort MNIST more than 2.
- zoom_blur magnifies on the scripts' own grid (clipped_zoom: the central
  ceil(side / zoom) px enlarged by scipy.ndimage.zoom, order 1), which is anchored
  at the crop's corner, so each zoom also shifts the image by up to a few pixels;
  at 32 px that shift is half of severity 1's distortion. The zooms are the scripts'
  numpy.arange(1, stop, step), quirks included (224 px severity 1: 1.00..1.11).
- outputs are rounded to the nearest integer (imagecorruptions truncates).
snow follows the reference exactly in method: a normal field drawn at
1 / zoom of the image, enlarged bilinearly (scipy.ndimage.zoom's order-1 grid,
centre-cropped) *before* thresholding, so interpolation thins the flakes as
in the published data; streaked by the table's motion blur, rounded to 8 bits.
Grey images: brightness adds to the value directly (no HSV), snow whitens
with the grey value itself, JPEG codes one channel, and a grey batch is coded
as one mosaic JPEG, bit-identical to one file per image (colour images are
coded one by one: chroma upsampling would bleed across mosaic tiles).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

from imaging.corruption_tables import TABLE_SIZES, TABLES, params as _table_params
from imaging.corruption_tables import table_for_size as _nearest_table
from imaging.errors import InputError

KINDS: tuple[str, ...] = (
    "salt_pepper",
    "gradient_noise",
    "blend",
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# the 15 ImageNet-C families, for mCE
IMAGENET_C_KINDS: tuple[str, ...] = KINDS[3:]
SEVERITIES = (1, 2, 3, 4, 5)

# the one continuous parameter per severity of our own families (the same at every size)
OWN_LEVELS: dict[str, tuple[float, ...]] = {
    "salt_pepper": (0.02, 0.05, 0.1, 0.2, 0.3),
    "gradient_noise": (0.02, 0.05, 0.1, 0.2, 0.3),
    "blend": (0.1, 0.2, 0.3, 0.4, 0.5),
}
# ImageNet-C families whose table entry is one number, which `level` overrides
TABLE_LEVEL_KINDS = ("gaussian_noise", "shot_noise", "impulse_noise", "brightness", "contrast", "pixelate", "jpeg_compression")
# the levels of the 224 px table (ImageNet-C); other sizes: TABLES[table_for_size(side)]
LEVELS: dict[str, tuple[float, ...]] = {**OWN_LEVELS, **{kind: TABLES["imagenet"][kind] for kind in TABLE_LEVEL_KINDS}}
# allowed range of `level`, inclusive
LEVEL_RANGES: dict[str, tuple[float, float]] = {
    "salt_pepper": (0.0, 1.0),
    "gradient_noise": (0.0, 1.0),
    "blend": (0.0, 1.0),
    "gaussian_noise": (0.0, 10.0),
    "shot_noise": (0.01, 1000.0),
    "impulse_noise": (0.0, 1.0),
    "brightness": (-1.0, 1.0),
    "contrast": (0.0, 10.0),
    "pixelate": (1e-3, 1.0),
    "jpeg_compression": (1, 100),
}
GRADIENT_SEED_SHARE = 0.25  # share of the replaced pixels that start at the strongest edges
GRADIENT_CANDIDATES = 2  # regions grow over the (this x budget) highest-gradient pixels


@dataclass(frozen=True)
class AugmentSpec:
    kind: str
    severity: int
    probability: float  # chance that each training image gets this corruption


# ---------------------------------------------------------------- public API


def corrupt(
    images: np.ndarray,
    kind: str,
    severity: int,
    *,
    seed: int,
    level: float | None = None,
    labels: np.ndarray | None = None,
    table: str | None = None,
) -> np.ndarray:
    """`images` corrupted by `kind` at `severity` (or at `level`); same shape and dtype.

    `table` ("cifar", "tiny", "imagenet") sets the ImageNet-C families' parameters;
    None takes the one nearest the images' size (`table_for_size`).
    """
    batch, grey_2d = _as_nhwc(images)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
    level, entry = _resolve_call(kind, severity, level, table, min(batch.shape[1:3]), len(batch), labels)
    if batch.size == 0:
        return images.copy()
    rng = np.random.default_rng(seed)
    out = _FAMILIES[kind](batch, entry, level, rng, labels)
    return out[..., 0] if grey_2d else out


# families that `corrupt_torch(..., on_device=True)` (and so `apply_augment`) runs as torch ops on
# the tensor's own device, and how that path agrees with `corrupt` (the NumPy path):
#   brightness      the same float32 arithmetic: equal (checked exactly on CPU tensors)
#   contrast        equal but for the channel means' summation order: within 1 grey level, on
#                   under 1% of values (at severity 5 nearly every value is the mean, so a mean
#                   that rounds the other way moves many of them)
#   defocus_blur    the same disk kernel by conv2d (reflected borders): within 1 grey level, on
#                   under 1% of values
#   blend           the same partner rule and weight; partners drawn by torch: every output is the
#                   rounded blend with an image of another class (exactly), partners differ
#   salt_pepper     exactly round(level * H * W) pixels per image, half black, chosen by torch's draws
#   gaussian_noise  torch.randn (not the 4.3-sigma inverse-CDF table): noise std within 3%
#   shot_noise      torch.poisson: mean and std within 3% of the NumPy path's
#   impulse_noise   each value 0 / 255 with probability level / 2 each: fractions within 0.5 points
# Random families draw from a torch.Generator on the tensor's device seeded with `seed`: for a
# given seed and device the result is fixed, but the draws are not NumPy's (nor the same on CPU
# and CUDA). The other families copy the batch to the host, run `corrupt`, and copy it back.
DEVICE_KINDS: tuple[str, ...] = ("salt_pepper", "blend", "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "brightness", "contrast")


def corrupt_torch(batch, kind: str, severity: int, *, seed: int, level: float | None = None, labels=None, table: str | None = None, on_device: bool = False):
    """`corrupt` for a uint8 NCHW tensor on any device; the result is on the same device.

    on_device=False: through NumPy on the host, equal to `corrupt` (evaluate and --val-corruption
    use this, so their numbers match the `corrupt` stage's). on_device=True: the DEVICE_KINDS run
    as torch ops on the tensor's device (agreement with `corrupt` as listed at DEVICE_KINDS); the
    other families still go through the host.
    """
    import torch

    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise InputError(f"expected a uint8 tensor of shape (N, C, H, W); got {batch.dtype} {tuple(batch.shape)}.")
    if on_device and kind in DEVICE_KINDS:
        return _corrupt_on_device(batch, kind, severity, seed=seed, level=level, labels=labels, table=table)
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    images = batch.detach().permute(0, 2, 3, 1).cpu().numpy()
    out = corrupt(images, kind, severity, seed=seed, level=level, labels=labels, table=table)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))).to(batch.device)


def severity_level(kind: str, severity: int, *, table: str | None = None, level: float | None = None) -> float | None:
    """The continuous level `kind` uses at `severity`; None where the family has no single one.

    `table` None means the 224 px table (ImageNet-C), as before tables by size; pass
    `table_for_size(side)` for the level that `corrupt` uses on images of that side.
    """
    _check_kind_severity(kind, severity)
    return _resolve_level(kind, severity, level, _check_table(table if table is not None else "imagenet"))


def table_for_size(size: int) -> str:
    """The severity table for images whose shorter side is `size` px: the published benchmark
    nearest in size on a log scale (<= 45 px: "cifar", 46..119: "tiny", >= 120: "imagenet")."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"image size {size!r} is not a positive whole number of pixels; pass the shorter side of the images.")
    return _nearest_table(int(size))


def replaced_pixels(images: np.ndarray, kind: str, severity: int, *, seed: int, level: float | None = None) -> np.ndarray:
    """bool (N, H, W): the pixels `corrupt` replaces for this seed (salt_pepper, gradient_noise)."""
    if kind not in ("salt_pepper", "gradient_noise"):
        raise InputError(f"replaced_pixels covers salt_pepper and gradient_noise, not {kind!r}.")
    batch, _ = _as_nhwc(images)
    level = _resolve_level(kind, severity, level, "imagenet")  # our own families: the same in every table
    rng = np.random.default_rng(seed)
    if kind == "salt_pepper":
        return _salt_pepper_masks(rng, batch.shape[:3], level)[0]
    return _gradient_noise_mask(batch, level, rng)


def parse_kinds(text: str) -> list[str]:
    """--corruptions: comma-separated kinds or 'all' (every family); empty: none."""
    if not text or not str(text).strip():
        return []
    if str(text).strip() == "all":
        return list(KINDS)
    kinds = [k.strip() for k in str(text).split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InputError(f"--corruptions has unknown kinds {unknown}; choose from {', '.join(KINDS)} or 'all'.")
    return kinds


def parse_severities(text: str) -> list[int]:
    """--severities: comma-separated integers 1..5, sorted and without repeats."""
    try:
        severities = sorted({int(s) for s in str(text).split(",") if s.strip()})
    except ValueError as error:
        raise InputError(f"--severities {text!r} is not a comma-separated list of integers 1..5, e.g. 1,3,5.") from error
    if not severities or any(s < 1 or s > 5 for s in severities):
        raise InputError(f"--severities {text!r} must list integers from 1 to 5, e.g. 1,2,3,4,5.")
    return severities


def parse_val_corruption(text: str) -> tuple[str, int]:
    """'salt_pepper:3' -> ('salt_pepper', 3); InputError names a bad one."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise InputError(f"--val-corruption {text!r} is not kind:severity; write e.g. salt_pepper:3.")
    spec = parse_augment(f"{parts[0]}:{parts[1]}:1")[0]
    return spec.kind, spec.severity


def parse_augment(spec: str) -> list[AugmentSpec]:
    """`"salt_pepper:3:0.5,blend:2:0.25"` -> one AugmentSpec per comma-separated kind:severity:probability."""
    specs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) != 3:
            raise InputError(f"augment item {item!r} is not kind:severity:probability; write e.g. salt_pepper:3:0.5.")
        kind, severity_text, probability_text = (field.strip() for field in fields)
        if kind not in KINDS:
            raise InputError(f"augment item {item!r} names unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
        try:
            severity = int(severity_text)
        except ValueError:
            severity = 0
        if str(severity) != severity_text.lstrip("+") or severity not in SEVERITIES:
            raise InputError(f"augment item {item!r} has severity {severity_text!r}; use a whole number from 1 to 5.")
        try:
            probability = float(probability_text)
        except ValueError:
            probability = math.nan
        if not 0.0 <= probability <= 1.0:
            raise InputError(f"augment item {item!r} has probability {probability_text!r}; use a number from 0 to 1.")
        specs.append(AugmentSpec(kind, severity, probability))
    if not specs:
        raise InputError(f"augment {spec!r} names no corruption; write e.g. salt_pepper:3:0.5,blend:2:0.25.")
    return specs


def apply_augment(batch, specs: list[AugmentSpec], *, generator_seed: int, labels=None, table: str | None = None, on_device: bool = True):
    """Each spec, in order, corrupts each image of a uint8 NCHW tensor with its probability.

    The specs draw independently, so an image can get several corruptions. The
    images and the corruption seeds come from `generator_seed` alone. `table` as in `corrupt`
    (None: by the batch's size). The DEVICE_KINDS corrupt on the batch's own device
    (`corrupt_torch(on_device=True)`), so a batch on the GPU stays there; on_device=False
    sends every family through NumPy on the host, as before.
    """
    import torch

    from imaging.batches import to_device

    rng = np.random.default_rng(generator_seed)
    out = batch
    for spec in specs:
        chosen = np.flatnonzero(rng.random(len(batch)) < spec.probability)
        seed = int(rng.integers(2**63))
        if len(chosen) == 0:
            continue
        index = to_device(torch.from_numpy(chosen), batch.device)  # queued, not waited for, on a GPU
        if spec.kind == "blend":
            # partners come from the whole batch, not only the chosen images
            part = corrupt_torch(out, spec.kind, spec.severity, seed=seed, labels=labels, table=table, on_device=on_device)[index]
        else:
            part = corrupt_torch(out[index], spec.kind, spec.severity, seed=seed, table=table, on_device=on_device)
        out = out.clone() if out is batch else out  # never write into the caller's tensor
        out[index] = part
    return out


# ------------------------------------------------------------- validation


def _check_kind_severity(kind: str, severity: int) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown corruption kind {kind!r}; use one of {', '.join(KINDS)}.")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise InputError(f"severity {severity!r} for {kind} is not one of 1..5; pass a whole number from 1 to 5.")


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise InputError(f"unknown severity table {table!r}; use one of {', '.join(TABLES)} (published at {', '.join(f'{size} px' for size in TABLE_SIZES.values())}) or leave it unset to choose by image size.")
    return table


def _resolve_call(kind: str, severity: int, level: float | None, table: str | None, side: int, count: int, labels) -> tuple[float | None, object]:
    """(level, table entry) of one corruption call on `count` images of shorter side `side`, after
    checking the kind, severity, table and the number of labels; both paths (NumPy, torch) use it."""
    _check_kind_severity(kind, severity)
    table = _check_table(table) if table is not None else table_for_size(max(int(side), 1))
    level = _resolve_level(kind, severity, level, table)
    if labels is not None and len(labels) != count:
        raise InputError(f"labels has {len(labels)} entries for {count} images; pass one label per image.")
    return level, (_table_params(kind, table)[severity - 1] if kind in IMAGENET_C_KINDS else None)


def _resolve_level(kind: str, severity: int, level: float | None, table: str) -> float | None:
    _check_kind_severity(kind, severity)
    if level is None:
        if kind in OWN_LEVELS:
            return OWN_LEVELS[kind][severity - 1]
        return float(_table_params(kind, table)[severity - 1]) if kind in TABLE_LEVEL_KINDS else None
    if kind not in LEVEL_RANGES:
        raise InputError(f"{kind} has no single level to override; leave level unset and choose a severity (kinds with a level: {', '.join(LEVEL_RANGES)}).")
    low, high = LEVEL_RANGES[kind]
    if not low <= level <= high:
        raise InputError(f"level {level} is outside {low}..{high} for {kind}; pass a level in that range.")
    return float(level)


def _as_nhwc(images) -> tuple[np.ndarray, bool]:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise InputError(f"images must be a uint8 array (N, H, W, C) with C 1 or 3, or (N, H, W) for grey; got {dtype} {shape}.")
    if images.ndim == 3:
        return np.ascontiguousarray(images)[..., None], True
    return np.ascontiguousarray(images), False


# ---------------------------------------------------------------- helpers


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _random_u16(rng: np.random.Generator, count: int) -> np.ndarray:
    # raw generator output is ~6x faster than rng.integers and exactly uniform on 0..65535
    return rng.bit_generator.random_raw((count + 3) // 4).view(np.uint16)[:count]


@functools.cache
def _normal_quantiles() -> np.ndarray:
    normal = NormalDist()
    return np.array([normal.inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)


def _standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # inverse CDF on 16-bit uniforms: 4x faster than rng.standard_normal, tails cut at 4.3 sigma
    return _normal_quantiles()[_random_u16(rng, math.prod(shape))].reshape(shape)


def _pad_stack(batch: np.ndarray, pad_y: int, pad_x: int, mode: str) -> np.ndarray:
    # each image padded with its own border, then stacked into one tall image that
    # OpenCV filters in one call; the pads keep neighbouring images apart
    n, h, w, c = batch.shape
    padded = np.pad(batch, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode=mode)
    return padded.reshape(n * (h + 2 * pad_y), w + 2 * pad_x, c)


def _unstack(stacked: np.ndarray, n: int, h: int, w: int, pad_y: int, pad_x: int) -> np.ndarray:
    c = stacked.shape[2] if stacked.ndim == 3 else 1
    return stacked.reshape(n, h + 2 * pad_y, w + 2 * pad_x, c)[:, pad_y : pad_y + h, pad_x : pad_x + w]


def _filter_each(batch: np.ndarray, kernel: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Correlate every image (NHWC) with one odd-sized kernel; `mode` is numpy's border.
    float32 in, float32 out; uint8 in, uint8 out (rounded to nearest, saturated)."""
    n, h, w, _ = batch.shape
    pad_y, pad_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    stacked = _pad_stack(batch, pad_y, pad_x, mode)
    filtered = cv2.filter2D(stacked, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return _unstack(filtered, n, h, w, pad_y, pad_x)


def _gaussian_each(batch: np.ndarray, sigma_y: float, sigma_x: float, mode: str = "symmetric") -> np.ndarray:
    """Gaussian blur of every image (float32 NHWC), kernels truncated at 3 sigma like skimage's."""
    kernel_y = _gaussian_kernel(sigma_y)
    kernel_x = _gaussian_kernel(sigma_x)
    n, h, w, _ = batch.shape
    pad_y, pad_x = len(kernel_y) // 2, len(kernel_x) // 2
    stacked = _pad_stack(batch, pad_y, pad_x, mode)
    filtered = cv2.sepFilter2D(stacked, cv2.CV_32F, kernel_x, kernel_y, borderType=cv2.BORDER_CONSTANT)
    return _unstack(filtered, n, h, w, pad_y, pad_x)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.ones(1, np.float32)
    radius = max(int(3 * sigma + 0.5), 1)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _remap_each(batch: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, border: int) -> np.ndarray:
    """Bilinear resampling of each float32 HWC image at its own (H, W) float32 coordinates."""
    out = np.empty_like(batch)
    for i in range(len(batch)):
        out[i] = cv2.remap(batch[i], map_x[i], map_y[i], cv2.INTER_LINEAR, borderMode=border).reshape(out.shape[1:])
    return out


def _streak_kernels(angles_deg: np.ndarray, radius: int, sigma: float, spacing: float) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Per angle, a motion-blur kernel and its anchor: 2 * radius + 1 taps `spacing` px apart
    along the angle, Gaussian weights over the tap index, tap 0 at the anchor (the streak trails
    one way, like ImageNet-C's)."""
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    angles = np.deg2rad(angles_deg)[:, None]
    x = taps * spacing * np.cos(angles)  # (angles, taps) px
    y = taps * spacing * np.sin(angles)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    # bilinear splat of the sub-pixel taps onto each kernel's grid, all kernels in one np.add.at
    left, top = x0.min(axis=1).astype(int), y0.min(axis=1).astype(int)
    widths, heights = x0.max(axis=1).astype(int) - left + 2, y0.max(axis=1).astype(int) - top + 2
    cols, rows = (x0 - left[:, None]).astype(int), (y0 - top[:, None]).astype(int)
    grid = np.zeros((len(angles_deg), int(heights.max()), int(widths.max())), np.float64)
    image = np.broadcast_to(np.arange(len(angles_deg))[:, None], cols.shape)
    for d_row, d_col, share in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(grid, (image, rows + d_row, cols + d_col), weights * share)
    grid = grid.astype(np.float32)
    return [(grid[i, : heights[i], : widths[i]], (-int(left[i]), -int(top[i]))) for i in range(len(angles_deg))]


def _streak_each(batch: np.ndarray, angles_deg: np.ndarray, radius: int, sigma: float, spacing: float) -> np.ndarray:
    """Motion blur of each NHWC image along its own angle, edges replicated (float32 or uint8
    in, the same out; uint8 rounded to nearest and saturated)."""
    out = np.empty_like(batch)
    for i, (kernel, anchor) in enumerate(_streak_kernels(angles_deg, radius, sigma, spacing)):
        out[i] = _filter_one(batch[i], kernel, anchor, cv2.BORDER_REPLICATE).reshape(out.shape[1:])
    return out


def _filter_one(image: np.ndarray, kernel: np.ndarray, anchor: tuple[int, int], border: int) -> np.ndarray:
    """cv2.filter2D of one HWC image in float32; uint8 images come back rounded to nearest and
    saturated. (OpenCV's uint8 path rounds the same, but on some CPUs, AMD's among them, it takes
    twice as long as converting, filtering in float32 and converting back.)"""
    if image.dtype != np.uint8:
        return cv2.filter2D(image, -1, kernel, anchor=anchor, borderType=border)
    filtered = cv2.filter2D(image.astype(np.float32), -1, kernel, anchor=anchor, borderType=border)
    return cv2.convertScaleAbs(filtered)  # the kernels are non-negative: |x| rounded and saturated


def _clipped_zoom_grid(side: int, zoom: float) -> tuple[int, np.ndarray]:
    """ImageNet-C's clipped_zoom along one axis: (crop, (side,) positions in the crop). The
    central crop = ceil(side / zoom) samples are enlarged to round(crop * zoom) on
    scipy.ndimage.zoom's order-1 grid (output o reads crop sample o * (crop - 1) / (out - 1)),
    and the central `side` of those are kept."""
    crop = max(int(math.ceil(side / zoom)), 1)
    zoomed = max(int(round(crop * zoom)), side)
    trim = (zoomed - side) // 2
    return crop, np.arange(trim, trim + side) * ((crop - 1) / max(zoomed - 1, 1))


def _zoom_positions(side: int, zoom: float) -> np.ndarray:
    """(side,) float32: where each output sample of clipped_zoom reads in the image along one axis.
    The enlargement is anchored at the crop's first sample, not the image's centre, so small
    images also shift by up to a few pixels, as in the published data."""
    crop, positions = _clipped_zoom_grid(side, zoom)
    return ((side - crop) // 2 + positions).astype(np.float32)


def _zoom_sum(batch: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Sum over `zooms` of every float32 NHWC image magnified as ImageNet-C's clipped_zoom does (bilinear)."""
    n, h, w, c = batch.shape
    stacked = batch.reshape(n * h, w, c)
    total = np.zeros_like(stacked)
    tile_top = (np.arange(n, dtype=np.float32) * h)[:, None]
    for zoom in zooms:
        # one remap over the stacked images: every output pixel reads inside its own image
        map_x = np.broadcast_to(_zoom_positions(w, zoom), (n * h, w))
        map_y = (tile_top + _zoom_positions(h, zoom)).reshape(n * h, 1)
        map_y = np.broadcast_to(map_y, (n * h, w))
        total += cv2.remap(stacked, np.ascontiguousarray(map_x, np.float32), np.ascontiguousarray(map_y, np.float32), cv2.INTER_LINEAR).reshape(total.shape)
    return total.reshape(n, h, w, c)


def _grey(batch: np.ndarray) -> np.ndarray:
    """float32 (N, H, W) luma (ITU-R 601, as OpenCV's RGB2GRAY)."""
    if batch.shape[3] == 1:
        return batch[..., 0].astype(np.float32)
    pixels = batch.astype(np.float32)
    return 0.299 * pixels[..., 0] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 2]


# ---------------------------------------------------------------- study families


def _salt_pepper_masks(rng: np.random.Generator, shape: tuple[int, int, int], level: float) -> tuple[np.ndarray, np.ndarray]:
    """(replaced, black): exactly round(level * H * W) replaced pixels per image, the first half black."""
    n, h, w = shape
    count = int(math.floor(level * h * w + 0.5))
    replaced = np.zeros((n, h * w), bool)
    black = np.zeros((n, h * w), bool)
    if count > 0:
        keys = rng.random((n, h * w))
        ordered = np.sort(keys, axis=1)
        replaced = _lowest(keys, ordered, count)
        black = _lowest(keys, ordered, count // 2) if count >= 2 else black
    return replaced.reshape(n, h, w), black.reshape(n, h, w)


def _lowest(keys: np.ndarray, ordered: np.ndarray, count: int) -> np.ndarray:
    """bool mask of the `count` smallest keys of each row (`ordered`: keys sorted per row)."""
    mask = keys <= ordered[:, count - 1 : count]
    tied = mask.sum(axis=1) != count  # float keys almost never tie; stay exact when they do
    if tied.any():
        order = np.argsort(keys[tied], axis=1, kind="stable")
        fixed = np.zeros((int(tied.sum()), keys.shape[1]), bool)
        np.put_along_axis(fixed, order[:, :count], True, axis=1)
        mask[tied] = fixed
    return mask


def _salt_pepper(batch, entry, level, rng, labels):
    replaced, black = _salt_pepper_masks(rng, batch.shape[:3], level)
    out = batch.copy()
    out[replaced] = 255
    out[black] = 0
    return out


def _gradient_noise_mask(batch: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(level * H * W) pixels per image, grown breadth-first from the strongest edges.

    Seeds: the GRADIENT_SEED_SHARE of the budget with the largest Sobel magnitude.
    Each round adds every pixel next to the region (8-neighbours) among the
    GRADIENT_CANDIDATES x budget highest-gradient pixels; the round that would
    overshoot adds only its highest-gradient pixels. A region that cannot grow
    doubles its candidates. Ties in gradient are broken at random.
    """
    n, h, w, _ = batch.shape
    budget = min(int(math.floor(level * h * w + 0.5)), h * w)
    if budget == 0:
        return np.zeros((n, h, w), bool)
    grey = np.rint(_grey(batch)).astype(np.int32)
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="reflect" if min(h, w) > 1 else "edge")
    # Sobel, integer-exact: smooth across, difference along
    smooth_rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    smooth_cols = padded[:, :, :-2] + 2 * padded[:, :, 1:-1] + padded[:, :, 2:]
    gx = smooth_rows[:, :, 2:] - smooth_rows[:, :, :-2]
    gy = smooth_cols[:, 2:, :] - smooth_cols[:, :-2, :]
    # squared magnitude is an integer, so a [0, 1) draw breaks ties without reordering
    keys = gx.astype(np.int64) ** 2 + gy.astype(np.int64) ** 2 + rng.random((n, h, w))
    # one never-chosen row under each image keeps regions from growing into the next
    # image when the masks are dilated stacked: layout (N, (H + 1) * W)
    keys = np.concatenate([keys, np.full((n, 1, w), -np.inf)], axis=1).reshape(n, -1)
    descending = -np.sort(-keys, axis=1)
    seed_count = max(1, int(budget * GRADIENT_SEED_SHARE))
    selected = keys >= descending[:, seed_count - 1 : seed_count]
    candidate_counts = np.full(n, min(GRADIENT_CANDIDATES * budget, h * w))
    candidates = keys >= descending[np.arange(n), candidate_counts - 1][:, None]
    remaining = budget - np.count_nonzero(selected, axis=1)
    active = np.flatnonzero(remaining > 0)
    while active.size:
        region, left = selected[active], remaining[active]
        frontier = _dilate_stacked(region, h + 1, w) & candidates[active] & ~region
        counts = np.count_nonzero(frontier, axis=1)
        fits = counts <= left
        region |= frontier & fits[:, None]
        if not fits.all():
            # the last ring: only its `left` highest-gradient pixels
            ring_keys = np.where(frontier[~fits], keys[active[~fits]], -np.inf)
            cut = -np.sort(-ring_keys, axis=1)[np.arange(len(ring_keys)), left[~fits] - 1]
            region[~fits] |= ring_keys >= cut[:, None]
        stuck = active[counts == 0]
        if stuck.size:
            candidate_counts[stuck] = np.minimum(candidate_counts[stuck] * 2, h * w)
            candidates[stuck] = keys[stuck] >= descending[stuck, candidate_counts[stuck] - 1][:, None]
        selected[active] = region
        remaining[active] = np.where(fits, left - counts, 0)
        active = active[remaining[active] > 0]
    return selected.reshape(n, h + 1, w)[:, :h]


def _dilate_stacked(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """3x3 binary dilation of (K, height * width) bool masks, as one stacked OpenCV call."""
    stacked = masks.view(np.uint8).reshape(-1, width)
    return cv2.dilate(stacked, np.ones((3, 3), np.uint8)).view(bool).reshape(masks.shape)


def _gradient_noise(batch, entry, level, rng, labels):
    mask = _gradient_noise_mask(batch, level, rng)
    out = batch.copy()
    out[mask] = rng.integers(0, 256, (int(mask.sum()), batch.shape[3]), dtype=np.uint8)
    return out


def _blend_partners(rng: np.random.Generator, n: int, labels: np.ndarray | None) -> np.ndarray:
    """For each image, a uniformly drawn other image of the batch, of another class where one exists."""
    draws = rng.random(n)
    if labels is not None:
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, labels, side="left")
        ends = np.searchsorted(sorted_labels, labels, side="right")
        others = n - (ends - starts)
        if (others > 0).all():
            # pick the t-th image outside the own class's run in the sorted order
            t = np.minimum((draws * others).astype(np.int64), others - 1)
            return order[np.where(t < starts, t, t + (ends - starts))]
    t = np.minimum((draws * (n - 1)).astype(np.int64), n - 2)
    return np.where(t < np.arange(n), t, t + 1)


def _blend(batch, entry, level, rng, labels):
    """Alpha-blend each image with another-class image of the batch at weight `level`.

    Without labels, or with a batch of one class, the partner is any other image
    of the batch. A batch of one image is blended with a smooth random image
    (uniform noise on a 4x4 grid, bicubically enlarged), so it still gets structure
    that is not its own.
    """
    n, h, w, c = batch.shape
    if n == 1:
        coarse = rng.integers(0, 256, (4, 4, c), dtype=np.uint8).astype(np.float32)
        partner = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(1, h, w, c)
    else:
        partner = batch[_blend_partners(rng, n, labels)].astype(np.float32)
    return _to_uint8((1.0 - level) * batch.astype(np.float32) + level * partner)


# ---------------------------------------------------------------- ImageNet-C: noise


@functools.lru_cache(maxsize=16)
def _noise_levels(std: float) -> np.ndarray:
    """int16 (65536,): the normal quantiles at `std` (fraction of 255), rounded to grey levels."""
    return np.clip(np.rint(_normal_quantiles() * (std * 255.0)), -32768, 32767).astype(np.int16)


def _gaussian_noise(batch, entry, level, rng, labels):
    # x + round(noise) == round(x + noise) for integer x; cv2.add saturates to 0..255
    noise = np.take(_noise_levels(float(level)), _random_u16(rng, batch.size))
    added = cv2.add(batch.reshape(-1, 1), noise.reshape(-1, 1), dtype=cv2.CV_8U)
    return added.reshape(batch.shape)


@functools.lru_cache(maxsize=16)
def _poisson_table(photons: float) -> np.ndarray:
    """(256 * 4096,) uint8: output value for input value v and 12-bit uniform u, at index v * 4096 + u."""
    rates = np.arange(256) / 255.0 * photons
    top = int(photons + 12 * math.sqrt(photons) + 12)
    counts = np.arange(top + 1)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1)))])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = counts * np.log(rates)[:, None] - rates[:, None] - log_factorial
    log_pmf[0] = np.where(counts == 0, 0.0, -np.inf)  # rate 0: always 0 photons
    cdf = np.cumsum(np.exp(log_pmf), axis=1)
    quantiles = (np.arange(4096) + 0.5) / 4096
    photon_counts = np.stack([np.searchsorted(row, quantiles) for row in cdf])
    return _to_uint8(photon_counts / photons * 255.0).reshape(-1)


def _shot_noise(batch, entry, level, rng, labels):
    table = _poisson_table(float(level))
    index = batch.reshape(-1).astype(np.uint32) << 12
    index |= _random_u16(rng, batch.size) >> 4
    return table[index].reshape(batch.shape)


def _impulse_noise(batch, entry, level, rng, labels):
    # each value independently: 0 with probability level / 2, 255 with level / 2;
    # written through the indices of the few hit values, not two full-size masks
    draws = _random_u16(rng, batch.size)
    out = batch.reshape(-1).copy()
    hit = np.flatnonzero(draws < level * 65536)
    out[hit] = (draws[hit] >= level / 2 * 65536).astype(np.uint8) * 255
    return out.reshape(batch.shape)


# ---------------------------------------------------------------- ImageNet-C: blur


def _disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: the integer offsets within `radius` px, equally weighted,
    then a 3x3 Gaussian of `alias_sigma` px (5x5 above radius 8), trimmed to its support."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    offsets = np.arange(-half, half + 1)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    kernel = cv2.GaussianBlur(disk, (size, size), alias_sigma)
    reach = half - int(np.flatnonzero(kernel.any(axis=0))[0])  # the kernel is symmetric about its centre
    return kernel[half - reach : half + reach + 1, half - reach : half + reach + 1]


def _defocus_blur(batch, entry, level, rng, labels):
    radius, alias_sigma = entry
    kernel = _disk_kernel(radius, alias_sigma)
    if kernel.shape[0] // 2 >= min(batch.shape[1:3]):  # images smaller than the kernel: numpy's repeated reflections
        return _filter_each(batch, kernel)
    # one image at a time, OpenCV's own borders (REFLECT_101 = numpy's "reflect"): each image's
    # float32 copy stays in cache, and no padded stack is built
    out = np.empty_like(batch)
    for i in range(len(batch)):
        out[i] = _filter_one(batch[i], kernel, (-1, -1), cv2.BORDER_REFLECT_101).reshape(out.shape[1:])
    return out


def _glass_blur(batch, entry, level, rng, labels):
    sigma, step, jumps = entry
    n, h, w, _ = batch.shape
    pixels = _to_uint8(_gaussian_each(batch.astype(np.float32), sigma, sigma))
    for _ in range(jumps):
        dy, dx = rng.integers(-step, step, (2, n, h, w), dtype=np.int16)  # numpy's randint(-step, step): -step .. step - 1
        pixels = _glass_pass(pixels, dy, dx, step)
    return _to_uint8(_gaussian_each(pixels.astype(np.float32), sigma, sigma))


def _glass_pass(pixels: np.ndarray, dy: np.ndarray, dx: np.ndarray, step: int) -> np.ndarray:
    """One pass of ImageNet-C's glass-blur shuffle over NHWC `pixels`, as whole-array gathers.

    The scripts visit the pixels (step, h - step] x (step, w - step] in reverse raster order and
    run `x[y, x], x[y + dy, x + dx] = x[y + dy, x + dx], x[y, x]` on numpy views of the pixels'
    channels, which copies one way only: (y, x) takes the value then at (y + dy, x + dx). A pixel
    whose source was visited before it (later in raster order, inside the band) so reads what that
    source read, and so on along the chain; the chains are followed here, so the result is the
    scripts' for the same offsets (`dy`, `dx`: (N, H, W) per pixel, used inside the band only).
    """
    n, h, w, c = pixels.shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    band = np.tile(((rows > step) & (rows <= h - step) & (cols > step) & (cols <= w - step)).reshape(-1), n)
    here = np.arange(n * h * w, dtype=np.int64)  # flat index of every pixel of the batch
    target = np.where(band, here + dy.reshape(-1).astype(np.int64) * w + dx.reshape(-1), here)  # outside the band: itself
    source = target.copy()
    # readers whose source was visited before them (with offsets -1 and 0 only, none is)
    chained = np.flatnonzero(band[target] & (target > here))
    while chained.size:
        passed = source[chained]
        source[chained] = target[passed]
        chained = chained[band[target[passed]] & (target[passed] > passed)]
    return pixels.reshape(n * h * w, c)[source].reshape(n, h, w, c)


def _motion_blur(batch, entry, level, rng, labels):
    radius, sigma = entry
    angles = rng.uniform(-45, 45, len(batch))
    return _streak_each(batch, angles, radius, sigma, 1.0)  # uint8 in and out: rounded by OpenCV


def _zoom_blur(batch, entry, level, rng, labels):
    stop, step = entry
    zooms = np.arange(1, stop, step)  # the scripts' own zooms, float rounding included
    pixels = batch.astype(np.float32)
    return _to_uint8((pixels + _zoom_sum(pixels, zooms)) / (len(zooms) + 1))


# ---------------------------------------------------------------- ImageNet-C: weather


def _zoom_matrix(side: int, zoom: float) -> np.ndarray:
    """(side, crop) float32: ImageNet-C's clipped_zoom along one axis (`_clipped_zoom_grid`) as
    a matrix of linear-interpolation weights on the crop's samples."""
    crop, positions = _clipped_zoom_grid(side, zoom)
    low = np.minimum(np.floor(positions).astype(int), crop - 1)
    share = (positions - low).astype(np.float32)
    matrix = np.zeros((side, crop), np.float32)
    np.add.at(matrix, (np.arange(side), low), 1 - share)
    np.add.at(matrix, (np.arange(side), np.minimum(low + 1, crop - 1)), share)
    return matrix


def _snow(batch, entry, level, rng, labels):
    mean, std, zoom, threshold, streak_radius, streak_sigma, kept = entry
    n, h, w, c = batch.shape
    # as ImageNet-C: a normal field enlarged `zoom` times by linear interpolation, then
    # thresholded; interpolation lowers the field's spread between samples, which thins the flakes
    rows, cols = _zoom_matrix(h, zoom), _zoom_matrix(w, zoom)
    field = mean + std * _standard_normal(rng, (n, rows.shape[1], cols.shape[1]))
    field = rows @ field @ cols.T  # (n, h, w), all images in two matrix products
    field[field < threshold] = 0
    flakes = np.clip(field, 0, 1)[..., None]
    angles = rng.uniform(-135, -45, n)
    flakes = _streak_each(np.ascontiguousarray(flakes), angles, streak_radius, streak_sigma, 1.0)
    flakes = np.rint(flakes[..., 0] * 255)  # the reference rounds the flake layer to 8 bits
    # per image, in grey levels: whitened = max(pixel, 1.5 grey + 127.5), mixed with the pixel by
    # `kept`, plus the flakes and the flakes turned half round; OpenCV rounds and saturates
    out = np.empty_like(batch)
    for i in range(n):
        pixels = batch[i].astype(np.float32) if c == 3 else batch[i, ..., 0].astype(np.float32)
        grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if c == 3 else pixels
        layer = cv2.add(flakes[i], cv2.flip(flakes[i], -1))
        if c == 3:
            layer = cv2.cvtColor(layer, cv2.COLOR_GRAY2RGB)
            grey = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
        whitened = cv2.max(pixels, grey * np.float32(1.5) + np.float32(127.5))
        mixed = cv2.addWeighted(pixels, kept, whitened, 1 - kept, 0)
        out[i] = cv2.add(mixed, layer, dtype=cv2.CV_8U).reshape(out.shape[1:])
    return out


FROST_PICTURES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # the five the scripts draw from
_frost_cache: dict[tuple[str, float, int], np.ndarray] = {}


def _frost_picture(name: str, scale: float, channels: int) -> np.ndarray:
    """One of ImageNet-C's frost photographs (imaging/frost/, Apache-2.0, see its NOTICE), scaled as the table says."""
    key = (name, scale, channels)
    if key not in _frost_cache:
        from pathlib import Path

        from PIL import Image

        picture = Image.open(Path(__file__).with_name("frost") / name).convert("RGB" if channels == 3 else "L")
        array = np.asarray(picture, dtype=np.float32)
        if scale != 1:  # as the scripts shrink them: OpenCV's bilinear, which samples without averaging
            array = cv2.resize(array, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        _frost_cache[key] = array[..., None] if array.ndim == 2 else array
    return _frost_cache[key]


def _frost(batch, entry, level, rng, labels):
    kept, weight, scale = entry
    n, h, w, c = batch.shape
    out = np.empty(batch.shape, np.float32)
    for i in range(n):
        picture = _frost_picture(FROST_PICTURES[rng.integers(len(FROST_PICTURES))], scale, c)
        if picture.shape[0] < h or picture.shape[1] < w:  # images larger than the table's size: enlarge the frost to cover them
            grow = max(h / picture.shape[0], w / picture.shape[1])
            picture = cv2.resize(picture, (int(np.ceil(picture.shape[1] * grow)), int(np.ceil(picture.shape[0] * grow))), interpolation=cv2.INTER_LINEAR)
            picture = picture[..., None] if picture.ndim == 2 else picture
        top, left = rng.integers(0, picture.shape[0] - h + 1), rng.integers(0, picture.shape[1] - w + 1)
        out[i] = kept * batch[i] + weight * picture[top:top + h, left:left + w]
    return _to_uint8(np.clip(out, 0, 255))


def _plasma(rng: np.random.Generator, n: int, size: int, roughness: float) -> np.ndarray:
    """(n, size, size) float32, not yet normalised: diamond-square fractal on a torus, `size` a
    power of two. Each halving of the grid spacing adds uniform noise `roughness ** 2` times
    weaker. Each level is built whole from the coarser one (no strided passes over the grid)."""
    corners = np.zeros((n, 1, 1), np.float32)
    amplitude = 1.0
    while corners.shape[1] < size:
        k = corners.shape[1]
        # centres, then horizontal, then vertical edge midpoints (the draws of one call in that order)
        draws = rng.uniform(-1, 1, (3, n, k, k)).astype(np.float32)
        across = corners + np.roll(corners, -1, axis=2)  # each corner and the one to its right
        centres = (across + np.roll(across, -1, axis=1)) * np.float32(0.25) + np.float32(amplitude) * draws[0]
        grid = np.empty((n, 2 * k, 2 * k), np.float32)
        grid[:, ::2, ::2] = corners
        grid[:, 1::2, 1::2] = centres
        # midpoints of horizontal edges: corners left and right, centres below and above
        grid[:, ::2, 1::2] = (across + centres + np.roll(centres, 1, axis=1)) * np.float32(0.25) + np.float32(amplitude) * draws[1]
        # midpoints of vertical edges: corners above and below, centres right and left
        down = corners + np.roll(corners, -1, axis=1)
        grid[:, 1::2, ::2] = (down + centres + np.roll(centres, 1, axis=2)) * np.float32(0.25) + np.float32(amplitude) * draws[2]
        corners, amplitude = grid, amplitude / roughness**2
    return corners


def _fog(batch, entry, level, rng, labels):
    strength, roughness = entry
    n, h, w, c = batch.shape
    size = 1 << max(max(h, w) - 1, 1).bit_length()  # next power of two
    plasma = _plasma(rng, n, size, roughness)
    low, high = plasma.min(axis=(1, 2)).astype(np.float64), plasma.max(axis=(1, 2)).astype(np.float64)
    brightest = batch.reshape(n, -1).max(axis=1) / 255.0
    out = np.empty_like(batch)
    for i in range(n):
        # (pixel / 255 + strength * haze) * brightest / (brightest + strength), haze = the plasma
        # normalised to [0, 1] over its whole square, in grey levels; OpenCV rounds and saturates
        scale = brightest[i] / (brightest[i] + strength)
        weight = 255.0 * strength * scale / (high[i] - low[i] if high[i] > low[i] else 1.0)
        haze = np.ascontiguousarray(plasma[i, :h, :w])
        if c == 3:
            haze = cv2.cvtColor(haze, cv2.COLOR_GRAY2RGB)
        pixels = batch[i] if c == 3 else batch[i, ..., 0]
        out[i] = cv2.addWeighted(pixels, scale, haze, weight, -low[i] * weight, dtype=cv2.CV_8U).reshape(out.shape[1:])
    return out


def _brightness(batch, entry, level, rng, labels):
    pixels = batch.astype(np.float32) / 255
    if batch.shape[3] == 1:
        return _to_uint8(np.clip(pixels + level, 0, 1) * 255)
    # raising HSV value V to V' keeps hue and saturation: every channel scales by V' / V
    value = np.maximum(np.maximum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])[..., None]
    raised = np.clip(value + level, 0, 1)
    out = pixels * (raised / np.maximum(value, 1e-6))
    out += (value == 0) * raised  # black has no hue: it becomes grey V'
    return _to_uint8(np.clip(out, 0, 1) * 255)


# ---------------------------------------------------------------- ImageNet-C: digital


def _contrast(batch, entry, level, rng, labels):
    n, h, w, c = batch.shape
    pixels = batch.astype(np.float32)
    means = (np.full(h * w, 1.0 / (h * w), np.float32) @ pixels.reshape(n, h * w, c)).reshape(n, 1, 1, c)
    if level > 1:
        return _to_uint8(pixels * level + means * (1 - level))
    # a mix of a pixel and its channel mean stays in 0..255: +0.5 and truncation round it
    pixels *= level
    pixels += means * (1 - level) + 0.5
    return pixels.astype(np.uint8)


def _random_affine_each(pixels: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Each float32 NHWC image warped by the affine map that moves three points around its
    centre (a third of the side out) by uniform offsets of up to `jitter` px (ImageNet-C's)."""
    n, h, w, _ = pixels.shape
    centre, reach = np.float32([w // 2, h // 2]), min(h, w) // 3
    anchors = np.float32([centre + reach, [centre[0] + reach, centre[1] - reach], centre - reach])
    moved = anchors + rng.uniform(-jitter, jitter, (n, 3, 2)).astype(np.float32)
    if reach == 0:  # under 3 px the three points coincide: nothing to warp by
        return pixels
    out = np.empty_like(pixels)
    for i in range(n):
        matrix = cv2.getAffineTransform(anchors, moved[i])
        out[i] = cv2.warpAffine(pixels[i], matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).reshape(out.shape[1:])
    return out


def _elastic_transform(batch, entry, level, rng, labels):
    alpha, sigma, jitter = entry
    n, h, w, _ = batch.shape
    pixels = batch.astype(np.float32)
    if jitter > 0:
        pixels = _random_affine_each(pixels, jitter, rng)
    # uniform noise in [-1, 1] smoothed by a Gaussian of `sigma` px, times `alpha` px
    field = _gaussian_each(rng.random((n, h, w, 2), dtype=np.float32) * 2 - 1, sigma, sigma) * np.float32(alpha)
    map_x = np.arange(w, dtype=np.float32) + field[..., 0]
    map_y = np.arange(h, dtype=np.float32)[:, None] + field[..., 1]
    return _to_uint8(_remap_each(pixels, map_x, map_y, cv2.BORDER_REFLECT))


def _block_of(source: int, target: int) -> np.ndarray:
    """(source,) the block of each of `source` pixels when they are cut into `target` blocks:
    floor((x + 0.5) * target / source), the block that nearest-neighbour enlargement (PIL's
    NEAREST, OpenCV's INTER_NEAREST_EXACT) shows at x. Blocks are runs of whole pixels."""
    return ((np.arange(source) + 0.5) * target / source).astype(np.int64)


@functools.cache
def _nearest_exact_shows(source: int, target: int) -> bool:
    """Whether cv2.resize(INTER_NEAREST_EXACT) from `target` to `source` px shows `_block_of`'s blocks."""
    ramp = np.tile(np.arange(target, dtype=np.uint16), (2, 1))
    return bool(np.array_equal(cv2.resize(ramp, (source, 2), interpolation=cv2.INTER_NEAREST_EXACT)[0], _block_of(source, target)))


def _pixelate(batch, entry, level, rng, labels):
    n, h, w, c = batch.shape
    small_h, small_w = max(int(h * level), 1), max(int(w * level), 1)
    row_block, col_block = _block_of(h, small_h), _block_of(w, small_w)
    if h % small_h == 0 and w % small_w == 0:
        # blocks of one size: OpenCV's INTER_AREA gives the same means (rounded to nearest; a tie
        # goes up or to even depending on the factor) from its integer-factor code, several times faster
        small = cv2.resize(batch.reshape(n * h, w, c), (small_w, n * small_h), interpolation=cv2.INTER_AREA)
        return _pixelate_enlarge(small.reshape(n, small_h, small_w, c), row_block, col_block, w)
    row_edges = np.searchsorted(row_block, np.arange(small_h + 1))  # first pixel of each block, then h
    col_edges = np.searchsorted(col_block, np.arange(small_w + 1))
    shares = (1.0 / (np.diff(row_edges)[:, None, None] * np.diff(col_edges)[None, :, None])).astype(np.float32)
    small = np.empty((n, small_h, small_w, c), np.uint8)
    # block sums from one summed-area table of the stacked images (int32: chunks under 2**31 / 255)
    chunk = max(1, (2**31 - 1) // 255 // (h * w))
    for start in range(0, n, chunk):
        part = batch[start : start + chunk]
        table = cv2.integral(part.reshape(-1, w, c), sdepth=cv2.CV_32S).reshape(-1, w + 1, c)
        rows = (np.arange(len(part))[:, None] * h + row_edges).reshape(-1)
        corners = np.take(np.take(table, rows, axis=0), col_edges, axis=1).reshape(len(part), small_h + 1, small_w + 1, c)
        sums = corners[:, 1:, 1:] - corners[:, :-1, 1:]
        sums -= corners[:, 1:, :-1]
        sums += corners[:, :-1, :-1]
        # means lie in 0..255: rounded to nearest (ties to even) without clipping
        means = np.multiply(sums, shares, dtype=np.float32)
        small[start : start + chunk] = np.rint(means, out=means)
    return _pixelate_enlarge(small, row_block, col_block, w)


def _pixelate_enlarge(small: np.ndarray, row_block: np.ndarray, col_block: np.ndarray, w: int) -> np.ndarray:
    """Each block of `small` (NHWC) repeated over its pixels: columns by one nearest-neighbour
    resize of the stacked rows, then whole rows by one gather."""
    n, small_h, small_w, c = small.shape
    stack = small.reshape(n * small_h, small_w, c)
    if _nearest_exact_shows(w, small_w):
        wide = cv2.resize(stack, (w, n * small_h), interpolation=cv2.INTER_NEAREST_EXACT)
    else:  # not seen with OpenCV 5; kept so that a change there cannot move the blocks
        wide = np.take(stack, col_block, axis=1)
    return np.take(wide.reshape(n, small_h, w, c), row_block, axis=1)


def _jpeg_compression(batch, entry, level, rng, labels):
    quality = [cv2.IMWRITE_JPEG_QUALITY, int(round(level))]
    n, h, w, c = batch.shape
    if c == 1:
        return _jpeg_grey_mosaic(batch[..., 0], quality)[..., None]
    # OpenCV encodes BGR (JPEG's colour transform needs the channels in that order) and decodes
    # straight to RGB; one SIMD swap of the stack, not a strided copy per image
    source = cv2.cvtColor(batch.reshape(n * h, w, 3), cv2.COLOR_RGB2BGR).reshape(batch.shape)
    out = np.empty_like(batch)
    for i in range(n):
        out[i] = cv2.imdecode(cv2.imencode(".jpg", source[i], quality)[1], cv2.IMREAD_COLOR_RGB)
    return out


def _jpeg_grey_mosaic(batch: np.ndarray, quality: list[int]) -> np.ndarray:
    """JPEG round trip of (N, H, W) grey images, many per encode, bit-identical to one by one.

    Grey JPEG codes independent 8x8 blocks, so tiles padded to whole blocks the way
    libjpeg pads an image (repeating the last row and column) come back exactly as
    separate files would. (Colour images are not tiled: chroma upsampling on decode
    reads across block edges.)
    """
    n, h, w = batch.shape
    tile_h, tile_w = -(-h // 8) * 8, -(-w // 8) * 8
    tiles = np.pad(batch, ((0, 0), (0, tile_h - h), (0, tile_w - w)), mode="edge")
    limit = 65_000  # px: JPEG's largest side is 65,535
    cols = max(1, min(math.ceil(math.sqrt(n)), limit // tile_w))
    rows = max(1, min(math.ceil(n / cols), limit // tile_h))
    out = np.empty_like(batch)
    for start in range(0, n, rows * cols):
        chunk = tiles[start : start + rows * cols]
        filled = np.zeros((rows * cols, tile_h, tile_w), np.uint8)
        filled[: len(chunk)] = chunk
        mosaic = filled.reshape(rows, cols, tile_h, tile_w).transpose(0, 2, 1, 3).reshape(rows * tile_h, cols * tile_w)
        decoded = cv2.imdecode(cv2.imencode(".jpg", mosaic, quality)[1], cv2.IMREAD_GRAYSCALE)
        decoded = decoded.reshape(rows, tile_h, cols, tile_w).transpose(0, 2, 1, 3).reshape(rows * cols, tile_h, tile_w)
        out[start : start + len(chunk)] = decoded[: len(chunk), :h, :w]
    return out


# ---------------------------------------------------------------- on the tensor's device


def _corrupt_on_device(batch, kind: str, severity: int, *, seed: int, level: float | None, labels, table: str | None):
    """A DEVICE_KINDS family as torch ops on `batch`'s device (uint8 NCHW in and out)."""
    import torch

    _check_kind_severity(kind, severity)
    n, c, h, w = batch.shape
    if c not in (1, 3):
        raise InputError(f"images must have 1 or 3 channels; got a tensor of shape {tuple(batch.shape)}.")
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
    level, entry = _resolve_call(kind, severity, level, table, min(h, w), n, labels)
    if batch.numel() == 0:
        return batch.clone()
    generator = torch.Generator(device=batch.device)
    generator.manual_seed(int(seed) % 2**63)
    return _DEVICE_FAMILIES[kind](batch.detach(), entry, level, generator, labels)


def _round_to_uint8(values):
    """float tensor -> uint8, rounded to nearest (ties to even, as np.rint) and saturated."""
    import torch

    return values.round().clamp_(0, 255).to(torch.uint8)


def _salt_pepper_torch(batch, entry, level, generator, labels):
    import torch

    n, c, h, w = batch.shape
    count = int(math.floor(level * h * w + 0.5))
    if count == 0:
        return batch.clone()
    keys = torch.rand((n, h * w), generator=generator, device=batch.device)
    order = keys.argsort(dim=1)
    value = torch.full((n, h * w), -1, dtype=torch.int16, device=batch.device)  # -1: kept
    value.scatter_(1, order[:, :count], 255)
    if count >= 2:
        value.scatter_(1, order[:, : count // 2], 0)
    value = value.view(n, 1, h, w)
    return torch.where(value >= 0, value.to(torch.uint8), batch)


def _gaussian_noise_torch(batch, entry, level, generator, labels):
    import torch

    noise = torch.randn(batch.shape, generator=generator, device=batch.device) * (level * 255.0)
    return _round_to_uint8(batch.float() + noise)


def _shot_noise_torch(batch, entry, level, generator, labels):
    import torch

    photons = torch.poisson(batch.float() * (level / 255.0), generator=generator)
    return _round_to_uint8(photons * (255.0 / level))


def _impulse_noise_torch(batch, entry, level, generator, labels):
    import torch

    draws = torch.rand(batch.shape, generator=generator, device=batch.device)
    out = torch.where(draws < level / 2, torch.zeros_like(batch), batch)
    return torch.where((draws >= level / 2) & (draws < level), torch.full_like(batch, 255), out)


def _blend_torch(batch, entry, level, generator, labels):
    """As `_blend`, with the partners drawn by torch."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = batch.shape
    device = batch.device
    if n == 1:
        coarse = torch.randint(0, 256, (1, c, 4, 4), generator=generator, device=device).float()
        partner = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    else:
        draws = torch.rand(n, generator=generator, device=device)
        t = torch.clamp((draws * (n - 1)).long(), max=n - 2)
        partner_index = torch.where(t < torch.arange(n, device=device), t, t + 1)  # any other image
        if labels is not None:
            labels = labels.to(device)
            order = torch.argsort(labels, stable=True)
            sorted_labels = labels[order].contiguous()
            starts = torch.searchsorted(sorted_labels, labels, right=False)
            ends = torch.searchsorted(sorted_labels, labels, right=True)
            others = n - (ends - starts)
            # an image of another class where every image has one; chosen on the device rather than
            # by a host `if` (a GPU sync per batch). The clamps only keep the unused choice in range.
            t = torch.minimum((draws * others).long(), others - 1).clamp_(min=0)
            by_class = order[torch.where(t < starts, t, t + (ends - starts)).clamp_(max=n - 1)]
            partner_index = torch.where((others > 0).all(), by_class, partner_index)
        partner = batch[partner_index].float()
    return _round_to_uint8((1.0 - level) * batch.float() + level * partner)


def _brightness_torch(batch, entry, level, generator, labels):
    import torch

    pixels = batch.float() / 255
    if batch.shape[1] == 1:
        return _round_to_uint8(torch.clamp(pixels + level, 0, 1) * 255)
    value = pixels.amax(dim=1, keepdim=True)
    raised = torch.clamp(value + level, 0, 1)
    out = pixels * (raised / torch.clamp(value, min=1e-6))
    out += (value == 0) * raised
    return _round_to_uint8(torch.clamp(out, 0, 1) * 255)


def _contrast_torch(batch, entry, level, generator, labels):
    pixels = batch.float()
    means = pixels.mean(dim=(2, 3), keepdim=True)
    if level > 1:
        return _round_to_uint8(pixels * level + means * (1 - level))
    pixels *= level
    pixels += means * (1 - level) + 0.5
    return pixels.to(batch.dtype)  # in 0..255.5: truncation rounds, as the NumPy path


def _defocus_blur_torch(batch, entry, level, generator, labels):
    import torch
    import torch.nn.functional as F

    radius, alias_sigma = entry
    kernel = _disk_kernel(radius, alias_sigma)
    n, c, h, w = batch.shape
    pad_y, pad_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    if pad_y >= h or pad_x >= w:  # torch reflects once; images smaller than the kernel go through NumPy
        return _defocus_blur_host(batch, kernel)
    from imaging.batches import to_device

    # float64 on a GPU: cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default, which
    # would move about 1 value in 20 across a rounding boundary; the CPU stays float32 as before
    dtype = torch.float64 if batch.device.type == "cuda" else torch.float32
    weight = to_device(torch.from_numpy(kernel), batch.device).to(dtype)[None, None].expand(c, 1, *kernel.shape)
    padded = F.pad(batch.to(dtype), (pad_x, pad_x, pad_y, pad_y), mode="reflect")  # numpy "reflect" = OpenCV REFLECT_101
    return _round_to_uint8(F.conv2d(padded, weight, groups=c))


def _defocus_blur_host(batch, kernel):
    import torch

    images = batch.permute(0, 2, 3, 1).cpu().numpy()
    out = _filter_each(np.ascontiguousarray(images), kernel)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))).to(batch.device)


_DEVICE_FAMILIES = {
    "salt_pepper": _salt_pepper_torch,
    "blend": _blend_torch,
    "gaussian_noise": _gaussian_noise_torch,
    "shot_noise": _shot_noise_torch,
    "impulse_noise": _impulse_noise_torch,
    "defocus_blur": _defocus_blur_torch,
    "brightness": _brightness_torch,
    "contrast": _contrast_torch,
}
assert tuple(_DEVICE_FAMILIES) == DEVICE_KINDS


_FAMILIES = {
    "salt_pepper": _salt_pepper,
    "gradient_noise": _gradient_noise,
    "blend": _blend,
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
assert tuple(_FAMILIES) == KINDS
