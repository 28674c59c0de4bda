"""Two artefacts of generated images, measured against the real ones.

- Checkerboard / colour dither: the share of each channel's spectral energy
  above 0.75 of the Nyquist frequency (the up-sampling artefact measure of
  Durall et al. 2020). Transposed convolutions leave a periodic pattern that
  puts far more energy there than photos have.
- Mode collapse: the mean pairwise pixel difference between images of one
  class. A generator that draws the same image for every seed scores 0.

Both take uint8 images [N, C, H, W] (torch or numpy) and are compared as a
ratio synthetic / real: 1 is "like the real images".
"""
from __future__ import annotations

import numpy as np

HIGH_FREQUENCY = 0.75  # of the Nyquist frequency: the band the up-sampling artefacts fill


def _array(images) -> np.ndarray:
    array = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {array.shape}")
    return array.astype(np.float64) / 255.0


def high_frequency_share(images, cutoff: float = HIGH_FREQUENCY) -> np.ndarray:
    """Per channel: the mean over images of the share of spectral energy (DC removed)
    at radial frequencies above `cutoff` x Nyquist. float64 [C]."""
    array = _array(images)
    array = array - array.mean(axis=(2, 3), keepdims=True)
    power = np.abs(np.fft.fft2(array)) ** 2
    fy = np.fft.fftfreq(array.shape[2])[:, None]
    fx = np.fft.fftfreq(array.shape[3])[None, :]
    radius = np.sqrt(fy**2 + fx**2) / 0.5  # 1 = Nyquist along an axis
    total = power.sum(axis=(2, 3))
    high = power[:, :, radius > cutoff].sum(axis=2)
    share = np.where(total > 0, high / np.maximum(total, 1e-30), 0.0)
    return share.mean(axis=0)


def within_class_diversity(images, labels, max_per_class: int = 200, seed: int = 0) -> float:
    """Mean absolute pixel difference (0..1) between pairs of images of the same class, averaged over classes."""
    array = _array(images)
    labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
    rng = np.random.default_rng(seed)
    per_class = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        members = rng.permutation(members)[:max_per_class]
        flat = array[members].reshape(len(members), -1)
        total, pairs = 0.0, 0
        for i in range(len(flat) - 1):  # row by row: memory stays at one row of pairs
            total += np.abs(flat[i + 1 :] - flat[i]).mean(axis=1).sum()
            pairs += len(flat) - i - 1
        per_class.append(total / pairs)
    if not per_class:
        raise ValueError("within_class_diversity needs a class with two or more images")
    return float(np.mean(per_class))


def artefact_ratios(real, real_labels, synthetic, synthetic_labels) -> dict[str, float]:
    """synthetic / real for both measures: `hf_ratio_max` / `hf_ratio_min` over channels
    (within [0.5, 2] = no checkerboard) and `diversity_ratio` (>= 0.6 = no mode collapse)."""
    hf = high_frequency_share(synthetic) / np.maximum(high_frequency_share(real), 1e-12)
    return {
        "hf_ratio_max": float(hf.max()),
        "hf_ratio_min": float(hf.min()),
        "diversity_ratio": within_class_diversity(synthetic, synthetic_labels) / within_class_diversity(real, real_labels),
    }
