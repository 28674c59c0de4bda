"""Severity tables of the ImageNet-C families, one per published benchmark image size.

Numbers are those of Hendrycks & Dietterich's generating scripts (github.com/hendrycks/robustness,
ImageNet-C/create_c/): `make_cifar_c.py` (CIFAR-10-C, 32 px), `make_tinyimagenet_c.py`
(Tiny-ImageNet-C, 64 px) and `make_imagenet_c.py` (ImageNet-C, 224 px), each tuple in the
script's own units and order, severities 1..5. All three scripts define all 15 families used
here (speckle, spatter, saturate and Gaussian blur are left out), so `params` never has
to fall back to another table today; it would take the nearest size that has the family.

One entry of the 224 px table is deliberately not the script's (module docstring of
imaging.corruptions says why): elastic_transform follows `imagecorruptions` (noise +-0.5% of
the side, alpha 12.5..30, smoothing 1% of the side, no affine) written in the scripts'
(alpha, sigma, affine) form for uniform noise in [-1, 1] at 224 px:
alpha = 1.12 px x (12.5, 16.25, 21.25, 25, 30).
"""
from __future__ import annotations

import math

# published image side (px) of each table
TABLE_SIZES: dict[str, int] = {"cifar": 32, "tiny": 64, "imagenet": 224}

# per family, what one severity's entry means (units as in the scripts; px at the table's size):
#   gaussian_noise     noise std, fraction of 255
#   shot_noise         photons at full intensity
#   impulse_noise      fraction of values set to 0 or 255
#   defocus_blur       (disk radius px on the integer grid, Gaussian anti-alias sigma px)
#   glass_blur         (Gaussian sigma px, largest jump px, jumps)
#   motion_blur        (radius: 2 * radius + 1 taps one px apart, tap-weight sigma in taps)
#   zoom_blur          (stop, step): the zooms are numpy.arange(1, stop, step), as in the scripts
#   snow               (field mean, field std, field zoom, threshold, streak radius, streak sigma, kept share)
#   frost              (kept share of the image, weight of the frost picture, scale of the frost pictures)
#   fog                (strength, plasma roughness decay)
#   brightness         added HSV value, fraction of 255
#   contrast           kept fraction of contrast
#   elastic_transform  (alpha: displacement scale px, sigma: smoothing px, affine: corner jitter px)
#   pixelate           kept fraction of resolution
#   jpeg_compression   JPEG quality
TABLES: dict[str, dict[str, tuple]] = {
    "cifar": {  # make_cifar_c.py
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "frost": ((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": (
            (32 * 0, 32 * 0, 32 * 0.08),
            (32 * 0.05, 32 * 0.2, 32 * 0.07),
            (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05),
            (32 * 0.1, 32 * 0.03, 32 * 0.03),
        ),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
    "tiny": {  # make_tinyimagenet_c.py
        "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
        "shot_noise": (250, 100, 50, 30, 15),
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
        "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
        "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
        "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        "zoom_blur": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
        ),
        "frost": ((1, 0.3, 0.3), (0.9, 0.4, 0.3), (0.8, 0.45, 0.3), (0.75, 0.5, 0.3), (0.7, 0.55, 0.3)),
        "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": (
            (64 * 0, 64 * 0, 64 * 0.08),
            (64 * 0.05, 64 * 0.3, 64 * 0.06),
            (64 * 0.1, 64 * 0.08, 64 * 0.06),
            (64 * 0.1, 64 * 0.03, 64 * 0.03),
            (64 * 0.16, 64 * 0.03, 64 * 0.02),
        ),
        "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
        "jpeg_compression": (65, 58, 50, 40, 25),
    },
    "imagenet": {  # make_imagenet_c.py, less the elastic entry the module docstring names
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        "snow": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        "frost": ((1, 0.4, 1.0), (0.8, 0.6, 1.0), (0.7, 0.7, 1.0), (0.65, 0.7, 1.0), (0.6, 0.75, 1.0)),
        # the script's own: severities 3..5 distort within a few % of each other, in an order
        # that varies with the random fog (kept so that "severity 4" means ImageNet-C's)
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # imagecorruptions' elastic (see above); the script's 244 * (2, 0.7, 0.1) ... peak at severity 2
        "elastic_transform": tuple((1.12 * alpha, 2.24, 0) for alpha in (12.5, 16.25, 21.25, 25, 30)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
}


def table_for_size(size: int) -> str:
    """The table whose published side is nearest to `size` px on a log scale.

    Blur lengths act multiplicatively, so the cut between two tables is their geometric
    mean: sides up to 45 px get cifar (32), 46..119 px tiny (64), 120 px and up imagenet (224).
    """
    if size < 1:
        raise ValueError(f"image side {size} is not a positive number of pixels")
    return min(TABLE_SIZES, key=lambda name: abs(math.log(size / TABLE_SIZES[name])))


def params(kind: str, table: str) -> tuple:
    """The five per-severity entries of `kind` in `table`, or in the nearest table that has it."""
    if kind in TABLES[table]:
        return TABLES[table][kind]
    size = TABLE_SIZES[table]
    having = [name for name in TABLES if kind in TABLES[name]]
    return TABLES[min(having, key=lambda name: abs(math.log(size / TABLE_SIZES[name])))][kind]
