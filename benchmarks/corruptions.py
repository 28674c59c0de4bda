"""Throughput of imaging.corruptions next to the `imagecorruptions` package.

    .venv/bin/python benchmarks/corruptions.py                  # severity 3, 1 thread
    .venv/bin/python benchmarks/corruptions.py --severity 5 --kinds snow fog

What is measured: images per second, wall clock, one process, OpenCV and
BLAS held to `--threads` threads (default 1). Ours: `corrupt()` on one batch
of 256 RGB 32x32 images and one of 16 RGB 224x224 images (smooth random
colour fields with anti-aliased discs, a stand-in for photographs), best of
repeated calls within `--seconds` per cell. imagecorruptions (Michaelis et
al. 2019, the packaged ImageNet-C code): its per-image
`corrupt(image, corruption_name=..., severity=...)` (HWC uint8 RGB) over the
same images, best chunk of 16 (or fewer for slow families) within the same
time. Both sides use ImageNet-C's parameters at both sizes by default
(`--table imagenet`), the only ones imagecorruptions has, so that each cell
compares the same operation; `--table size` times ours with the table a
user gets by default (CIFAR-10-C's at 32 px), which does different work
(for example JPEG quality 58 in place of 15, pixelate to 27 px in place of
12 px). Each cell is measured `--rounds` times (default 3), ours and theirs
alternating, so that a slow spell of the machine lands on both; the columns
are the medians over rounds, and the speed-up column is the median of the
rounds' ours / theirs. Families that imagecorruptions
lacks (salt_pepper, gradient_noise, blend) show "-". Our glass_blur does
their per-pixel pass as whole-array gathers (see imaging/corruptions.py), the
same operation on a different draw of offsets.

imagecorruptions is not a dependency: install it only to compare,
    .venv/bin/pip install --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile
It was written against older numpy/scipy/scikit-image; this script shims
`np.float_`, `pkg_resources`, `scipy.ndimage.interpolation` and skimage's
`gaussian(multichannel=)` in memory (nothing in site-packages is patched).
Without it, the script says so and prints our numbers only.

Numbers depend on the machine; the table printed here is the measurement.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def photo_like(count: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, size, size, 3): bicubic-smoothed colour noise with three anti-aliased discs."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = cv2.resize(rng.uniform(30, 220, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            centre = tuple(int(v) for v in rng.uniform(0.15, 0.85, 2) * size * 16)  # 4 fractional bits
            radius = int(rng.uniform(0.08, 0.25) * size * 16)
            cv2.circle(image, centre, radius, tuple(float(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA, 4)
        images.append(image)
    return np.clip(np.array(images), 0, 255).astype(np.uint8)


def load_imagecorruptions():
    """(the package's per-image `corrupt`, None), shimmed for APIs removed since it was written; (None, why) if absent."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # its plasma_fractal (fog) allocates with np.float_
    try:
        import pkg_resources  # noqa: F401  (setuptools dropped it; only frost's file paths need it)
    except ModuleNotFoundError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: os.path.join(os.path.dirname(sys.modules[package].__file__), path)
        sys.modules["pkg_resources"] = shim
    import scipy.ndimage

    try:
        import scipy.ndimage.interpolation  # noqa: F401
    except ModuleNotFoundError:  # scipy 1.14 removed the alias module
        sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    try:
        import imagecorruptions
        import imagecorruptions.corruptions as theirs
    except ModuleNotFoundError as error:
        return None, f"{error.name} is not installed"
    gaussian = theirs.gaussian

    def gaussian_with_multichannel(image, sigma=1, multichannel=None, **options):
        if multichannel:  # scikit-image 0.19 renamed it channel_axis
            options["channel_axis"] = -1
        return gaussian(image, sigma=sigma, **options)

    theirs.gaussian = gaussian_with_multichannel
    return imagecorruptions.corrupt, None


def images_per_second(run, images_per_call: int, seconds: float, min_calls: int = 1) -> float:
    """images_per_call / the fastest of repeated `run()` calls, repeating while under `seconds`."""
    best = float("inf")
    start = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - tick)
        calls += 1
    return images_per_call / best


def theirs_per_second(their_corrupt, images: np.ndarray, kind: str, severity: int, seconds: float) -> float:
    """Per-image loop: one call to warm up (lazy imports), one to size the chunk, then the best chunk of up to 16."""
    their_corrupt(images[0], corruption_name=kind, severity=severity)
    tick = time.perf_counter()
    their_corrupt(images[0], corruption_name=kind, severity=severity)
    one = time.perf_counter() - tick
    chunk = int(max(1, min(16, len(images), seconds / 3 / max(one, 1e-9))))
    if chunk == 1 and one > seconds / 3:
        return 1.0 / one
    subset = images[:chunk]
    return images_per_second(lambda: [their_corrupt(image, corruption_name=kind, severity=severity) for image in subset], chunk, seconds)


def main() -> None:
    from imaging.corruptions import IMAGENET_C_KINDS, KINDS, corrupt

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--severity", type=int, default=3, help="severity 1..5 for every family (default 3)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), help="families to time (default: all)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per cell, s (default 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV / BLAS / torch threads (default 1)")
    parser.add_argument("--table", default="imagenet", choices=("imagenet", "size"),
                        help="severity table of our families: imagenet (default; the parameters imagecorruptions uses at every size, "
                             "so both sides do the same work) or size (the table nearest each batch's size: cifar for 32 px)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of ours and theirs per cell; medians are printed (default 3)")
    args = parser.parse_args()

    import cv2
    import torch

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    warnings.filterwarnings("ignore")

    their_corrupt, missing = load_imagecorruptions()
    if their_corrupt is None:
        print(f"imagecorruptions not available ({missing}): printing our numbers only. "
              "Install it with: .venv/bin/pip install --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile")
    batches = {32: photo_like(256, 32), 224: photo_like(16, 224, seed=1)}
    table = None if args.table == "size" else args.table
    labels = {size: np.arange(len(batch)) % 10 for size, batch in batches.items()}
    for batch, label in zip(batches.values(), labels.values()):  # warm caches (tables, OpenCV kernels)
        for kind in args.kinds:
            corrupt(batch[:2], kind, args.severity, seed=0, labels=label[:2], table=table)

    print(f"images/s at severity {args.severity}, our table {args.table}, {args.threads} thread(s), median of {max(1, args.rounds)} alternating rounds; "
          f"batches: {len(batches[32])} x 32x32 RGB, {len(batches[224])} x 224x224 RGB")
    header = f"{'family':18s} | {'ours 32px':>10s} {'theirs':>8s} {'x':>6s} | {'ours 224px':>10s} {'theirs':>8s} {'x':>6s}"
    print(header)
    print("-" * len(header))
    for kind in args.kinds:
        cells = []
        for size, batch in batches.items():
            ours, theirs = [], []
            for _ in range(max(1, args.rounds)):
                ours.append(images_per_second(lambda: corrupt(batch, kind, args.severity, seed=1, labels=labels[size], table=table), len(batch), args.seconds, min_calls=3))
                if their_corrupt is not None and kind in IMAGENET_C_KINDS:
                    np.random.seed(0)
                    theirs.append(theirs_per_second(their_corrupt, batch, kind, args.severity, args.seconds))
            if theirs:
                ratio = float(np.median(np.array(ours) / np.array(theirs)))
                cells.append(f"{np.median(ours):10,.0f} {np.median(theirs):8,.0f} {ratio:5.1f}x")
            else:
                cells.append(f"{np.median(ours):10,.0f} {'-':>8s} {'-':>6s}")
        print(f"{kind:18s} | {cells[0]} | {cells[1]}", flush=True)


if __name__ == "__main__":
    main()
