"""The real-vs-synthetic detector's dataset: two classes, balanced, with nothing shared across splits.

Real images keep the real dataset's splits (train for training, val and test
held out). Each generator's images get a seeded split in the same proportions,
made over *groups*: images that share a source seed, a source image (img2img)
or identical bytes are one group, so no split holds a near-copy of another's
image. The seed of a generator's split depends only on `seed` and that
generator's key, so its held-out images are the same whether it is pooled
with other generators or trained on alone (the transfer matrix relies on it).

Then every split is balanced: as many real as synthetic images, per original
class when the synthetic images carry the real classes (so the detector cannot
lean on which digits or objects a generator favours), per split otherwise.
The larger side is subsampled, seeded.

Rows get label `real` or `synthetic`; the original class moves to `class` and
the generator's name to `generator` ('' for real rows).
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from imaging.errors import InputError
from imaging.manifest import SPLITS, Manifest

CLASSES = ["real", "synthetic"]  # label index 1 is the positive class of AUC and AP


def _group_ids(frame: pd.DataFrame) -> np.ndarray:
    """One id per row; rows sharing a source image, a source seed or their bytes share an id."""
    parent = list(range(len(frame)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("source_image", "seed", "sha256"):
        if column not in frame.columns:
            continue
        first: dict[str, int] = {}
        for row, value in enumerate(frame[column].astype(str)):
            if value in ("", "nan"):
                continue
            if value in first:
                parent[find(row)] = find(first[value])
            else:
                first[value] = row
    return np.array([find(i) for i in range(len(frame))])


def split_synthetic(frame: pd.DataFrame, shares: dict[str, float], seed: int, key: str) -> np.ndarray:
    """A split name per row of `frame`, in proportion to `shares` (train/val/test), by whole groups.

    Groups are taken in a seeded random order, each going to the split furthest below its target.
    """
    groups = _group_ids(frame)
    unique, sizes = np.unique(groups, return_counts=True)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    order = rng.permutation(len(unique))
    names = [s for s in SPLITS if shares.get(s, 0) > 0]
    total = sum(shares[s] for s in names)
    targets = {s: shares[s] / total * len(frame) for s in names}
    filled = {s: 0 for s in names}
    assigned: dict[int, str] = {}
    for index in order:
        # the split with the largest share still missing; ties to the earlier split name
        split = max(names, key=lambda s: ((targets[s] - filled[s]) / max(targets[s], 1e-9), -names.index(s)))
        assigned[int(unique[index])] = split
        filled[split] += int(sizes[index])
    return np.array([assigned[int(g)] for g in groups])


def _sample(frame: pd.DataFrame, count: int, seed: int, salt: str) -> pd.DataFrame:
    if len(frame) <= count:
        return frame
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    return frame.iloc[np.sort(rng.permutation(len(frame))[:count])]


def balance(real: pd.DataFrame, synthetic: pd.DataFrame, seed: int, split: str, by_class: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """As many real as synthetic rows: per class (column `class`) when `by_class`, else overall."""
    if not by_class:
        count = min(len(real), len(synthetic))
        return _sample(real, count, seed, f"real|{split}"), _sample(synthetic, count, seed, f"synthetic|{split}")
    real_parts, synthetic_parts = [], []
    for label in sorted(set(real["class"]) | set(synthetic["class"])):
        r, s = real[real["class"] == label], synthetic[synthetic["class"] == label]
        count = min(len(r), len(s))
        real_parts.append(_sample(r, count, seed, f"real|{split}|{label}"))
        synthetic_parts.append(_sample(s, count, seed, f"synthetic|{split}|{label}"))
    return pd.concat(real_parts), pd.concat(synthetic_parts)


def detector_manifest(real: Manifest, synthetic: dict[str, Manifest], seed: int = 0) -> Manifest:
    """Real vs synthetic rows, split and balanced (see the module's doc). `synthetic` maps a generator's
    name to its images (rows of any split; local ones with absolute paths). InputError names a split
    that would be empty."""
    real_frame = real.frame.assign(**{"class": real.frame["label"].astype(str), "label": "real", "source": "real", "generator": ""})
    counts = {s: int((real_frame["split"] == s).sum()) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise InputError(f"the real dataset {real.name} has no {', '.join(empty)} images; the detector trains on real train images and is checked on real val and test ones, so give it all three splits (a folder with val/ and test/, or val_fraction and test_fraction above 0).")
    parts = []
    for name, manifest in synthetic.items():
        if len(manifest) == 0:
            raise InputError(f"the synthetic images of {name} are empty; generate images first.")
        frame = manifest.frame.assign(**{"class": manifest.frame["label"].astype(str), "label": "synthetic", "source": "synthetic", "generator": name})
        frame["split"] = split_synthetic(frame, counts, seed, name)
        short = [s for s in SPLITS if not (frame["split"] == s).any()]
        if short:
            groups = len(np.unique(_group_ids(frame)))
            share = min(counts.values()) / sum(counts.values())
            raise InputError(
                f"too few synthetic images in {name}: {len(frame)} images in {groups} independent group(s) (by source seed, source image or bytes) "
                f"leave the {', '.join(short)} split empty; the splits follow the real ones ({counts['train']}/{counts['val']}/{counts['test']}), "
                f"so give it at least {int(np.ceil(1 / share))} independent images."
            )
        parts.append(frame)
    synthetic_frame = pd.concat(parts, ignore_index=True)
    by_class = set(synthetic_frame["class"]) <= set(real.classes) and "" not in set(synthetic_frame["class"])
    rows = []
    for split in SPLITS:
        r, s = balance(real_frame[real_frame["split"] == split], synthetic_frame[synthetic_frame["split"] == split], seed, split, by_class)
        if len(r) == 0:
            raise InputError(f"no {split} images are left after balancing real against synthetic by class; the synthetic images' classes {sorted(set(synthetic_frame['class']))} share none with the real {split} split's.")
        rows += [r, s]
    frame = pd.concat(rows, ignore_index=True).fillna("")
    return Manifest(frame, real.root, f"{real.name}-detector", list(CLASSES))


def transfer_auc(matrix: pd.DataFrame) -> float:
    """Mean off-diagonal AUC of a train-generator x test-generator matrix (NaN for one generator)."""
    values = matrix.to_numpy(dtype=float)
    off = ~np.eye(len(values), dtype=bool)
    return float(values[off].mean()) if off.any() else float("nan")
