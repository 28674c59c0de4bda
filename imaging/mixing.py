"""Mixing real and synthetic images into one training manifest.

`ratio` is the synthetic fraction of the training split, 0..1.

mode=replace keeps the training set at `total` images (default: the real train
split's size) and replaces real images by synthetic ones. Class c keeps its
share of `total` (total_c, proportional to its real train count), then gets
synthetic_c = ratio * total_c and real_c = total_c - synthetic_c. Every rounding
is by largest remainder, so the counts sum exactly: 1,348 images at ratio 0.6
are 809 synthetic and 539 real, whatever the classes.

mode=add keeps every real image and adds ratio / (1 - ratio) times as many
synthetic ones, spread over the classes as the real ones are.

Sampling is seeded per (seed, class, source), and each class's images are taken
from the front of one fixed permutation, so with the same seed and total a
higher ratio keeps a subset of the real images and a superset of the synthetic
ones: two mixes differ only by the images replaced. Val and test are the real
manifest's, untouched.
"""
from __future__ import annotations

import math
import numbers
import zlib
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from imaging.errors import InputError
from imaging.images import open_image, to_array
from imaging.manifest import Manifest

MODES = ("replace", "add")
FORMAT_SAMPLE = 16  # images of each side whose size and channels are compared


def largest_remainder(weights, total: int) -> list[int]:
    """Non-negative integers proportional to `weights` that sum exactly to `total`.

    Each count is its exact quota rounded down or up; the leftover units go to the
    largest fractional parts (ties: the larger weight, then the earlier one).
    """
    weights = [Fraction(w) for w in weights]
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError(f"largest_remainder needs a total >= 0 and weights >= 0, got {total} and {weights}")
    if total == 0:
        return [0] * len(weights)
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError(f"cannot share {total} among weights that are all zero")
    quotas = [total * w / weight_sum for w in weights]
    counts = [math.floor(q) for q in quotas]
    leftover = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), -weights[i], i))
    for i in order[:leftover]:
        counts[i] += 1
    return counts


def _exact(ratio: float) -> Fraction:
    # 0.3 means 3/10, not the binary float nearest to it, so 0.3 * 5 rounds to 2 as a reader expects
    return Fraction(repr(float(ratio)))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def check_ratio(ratio: float, mode: str = "replace") -> None:
    if not (isinstance(ratio, numbers.Real) and 0 <= ratio <= 1):
        raise InputError(f"ratio {ratio} is outside [0, 1]; pass the synthetic fraction of the training set, e.g. 0.6 for synthetic:real = 6:4.")
    if mode not in MODES:
        raise InputError(f"mode {mode!r} is not one of {', '.join(MODES)}; use replace (fixed training-set size) or add (all real images plus synthetic ones).")
    if mode == "add" and ratio == 1:
        raise InputError("ratio 1 with mode=add asks for infinitely many synthetic images; use mode=replace for an all-synthetic training set, or a ratio below 1.")


def allocate(real_counts: dict[str, int], ratio: float, total: int | None = None, mode: str = "replace") -> dict[str, tuple[int, int]]:
    """(synthetic, real) training images per class; `total` None or 0 means the real train size (replace only)."""
    check_ratio(ratio, mode)
    classes = list(real_counts)
    available = [int(real_counts[c]) for c in classes]
    real_size = sum(available)
    if real_size == 0:
        raise InputError("the real train split is empty; give the real dataset training images.")
    exact_ratio = _exact(ratio)
    if mode == "add":
        if total:
            raise InputError(f"total {total} applies only to mode=replace (mode=add keeps all {real_size} real images); leave total at 0 or use mode=replace.")
        synthetic_total = _round_half_up(exact_ratio / (1 - exact_ratio) * real_size)
        synthetic = largest_remainder(available, synthetic_total)
        return {c: (s, n) for c, s, n in zip(classes, synthetic, available)}

    total = real_size if not total else int(total)
    if total < 0:
        raise InputError(f"total {total} is negative; pass the training-set size in images, or 0 for the real train split's size ({real_size}).")
    class_totals = largest_remainder(available, total)
    synthetic = largest_remainder(class_totals, _round_half_up(exact_ratio * total))
    real = [t - s for t, s in zip(class_totals, synthetic)]
    short = [(c, r, n) for c, r, n in zip(classes, real, available) if r > n]
    if short:
        detail = "; ".join(f"class {c!r} needs {r} real images but has {n}" for c, r, n in short)
        raise InputError(
            f"total {total} at ratio {ratio} needs more real training images than there are ({detail}); "
            f"lower total (the real train split has {real_size}) or raise ratio."
        )
    return {c: (s, r) for c, s, r in zip(classes, synthetic, real)}


def check_classes(real_classes: list[str], synthetic_classes) -> None:
    real_set, synthetic_set = set(real_classes), set(synthetic_classes)
    if real_set != synthetic_set:
        missing, extra = sorted(real_set - synthetic_set), sorted(synthetic_set - real_set)
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part)
        raise InputError(f"the synthetic images' classes do not match the real ones ({detail}); give the synthetic set exactly the real classes {sorted(real_set)}.")


def _class_rng(seed: int, label: str, source: str) -> np.random.Generator:
    # keyed on the class name, not its position, so adding a class does not reshuffle the others
    return np.random.default_rng([seed, zlib.crc32(label.encode()), 0 if source == "real" else 1])


def _take(frame: pd.DataFrame, label: str, count: int, seed: int, source: str) -> pd.DataFrame:
    members = frame[frame["label"] == label]
    order = _class_rng(seed, label, source).permutation(len(members))
    return members.iloc[np.sort(order[:count])]


def mix_manifests(real: Manifest, synthetic: Manifest, ratio: float, total: int | None = None, mode: str = "replace", seed: int = 0) -> Manifest:
    """Real train rows replaced or extended by synthetic ones; val and test copied from `real`.

    `synthetic` rows are all used as training candidates; rows without a run must carry
    absolute paths (see `absolute_paths`), because the mix keeps the real manifest's root.
    """
    check_ratio(ratio, mode)
    if seed < 0:
        raise InputError(f"seed {seed} is negative; pass a seed of 0 or more.")
    real_train = real.frame[real.frame["split"] == "train"]
    synthetic_frame = synthetic.frame.assign(split="train", source="synthetic")
    check_classes(real.classes, synthetic_frame["label"].astype(str).unique())
    real_counts = {c: int((real_train["label"] == c).sum()) for c in real.classes}
    allocation = allocate(real_counts, ratio, total, mode)

    have = Counter(synthetic_frame["label"].astype(str))
    short = [(c, s, have[c]) for c, (s, _) in allocation.items() if s > have[c]]
    if short:
        detail = "; ".join(f"class {c!r} needs {s}, has {n}" for c, s, n in short)
        most = max(s for _, s, _ in short)
        raise InputError(
            f"not enough synthetic images for ratio {ratio} ({detail}); "
            f"synthesize at least {most} per class, or lower ratio or total."
        )

    real_parts = [_take(real_train, c, r, seed, "real") for c, (_, r) in allocation.items()]
    synthetic_parts = [_take(synthetic_frame, c, s, seed, "synthetic") for c, (s, _) in allocation.items()]
    held_out = real.frame[real.frame["split"] != "train"]
    # real training rows first: whoever samples "the first images" of the mix sees the real format
    frame = pd.concat([*real_parts, *synthetic_parts, held_out], ignore_index=True)
    frame = frame.fillna("")  # extra columns (a synthetic image's seed, prompt) are blank on real rows
    name = f"{real.name}-mix{ratio:g}" + ("-add" if mode == "add" else "")
    return Manifest(frame, real.root, name, list(real.classes))


def absolute_paths(manifest: Manifest) -> Manifest:
    """Rows without a run resolved against the manifest's root, so they stay findable under another root."""
    frame = manifest.frame.copy()
    local = frame["run_id"] == ""
    frame.loc[local, "path"] = [str((Path(manifest.root) / p).resolve()) for p in frame.loc[local, "path"]]
    return Manifest(frame, manifest.root, manifest.name, list(manifest.classes))


def sample_rows(manifest: Manifest, count: int = FORMAT_SAMPLE) -> Manifest:
    """`count` rows spread evenly over the manifest (so over its classes), in a fixed order."""
    if len(manifest) <= count:
        return manifest
    picks = np.unique(np.linspace(0, len(manifest) - 1, count).round().astype(int))
    return Manifest(manifest.frame.iloc[picks].copy(), manifest.root, manifest.name, list(manifest.classes))


def image_formats(paths: list[Path]) -> Counter:
    """How many of the files decode to each (height, width, channels)."""
    return Counter(to_array(open_image(Path(p).read_bytes())).shape for p in paths)


def describe(shape: tuple[int, int, int]) -> str:
    height, width, channels = shape
    return f"{width}x{height}x{channels}"


def format_note(real_paths: list[Path], synthetic_paths: list[Path], convert: bool) -> str | None:
    """None when the synthetic sample has the real images' size and channels; else a note (convert) or an InputError."""
    real_formats, synthetic_formats = image_formats(real_paths), image_formats(synthetic_paths)
    if not real_formats or not synthetic_formats or set(synthetic_formats) <= set(real_formats):
        return None
    real_shape = describe(real_formats.most_common(1)[0][0])
    synthetic_shape = describe(next(s for s, _ in synthetic_formats.most_common() if s not in real_formats))
    if not convert:
        raise InputError(
            f"synthetic images are {synthetic_shape} (width x height x channels) but the real ones are {real_shape}; "
            f"synthesize them at the real images' size and colour mode, or pass --convert true to convert them when decoded."
        )
    return f"synthetic images are {synthetic_shape}; they will be converted to the real images' {real_shape} when decoded"
