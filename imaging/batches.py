"""Batches of uint8 images for training and evaluation.

Small images (<= FAST_PATH_MAX_SIZE px, e.g. 28-32 px digits) take the airbench
path: the whole dataset is decoded once into one uint8 tensor [N, C, H, W],
cached on disk under the manifest's digest, moved to the model's device, and
batches are `randperm` slices of it. Larger images are decoded by a DataLoader
with workers every epoch. Both yield uint8 [B, C, H, W] batches on the device;
normalisation and flips then happen on the whole batch (`to_model_input`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from imaging.datasets import cache_dir
from imaging.images import decode
from imaging.manifest import Manifest

FAST_PATH_MAX_SIZE = 64  # px; above this, decoded tensors get too big to keep whole


def decode_files(paths: list[Path], channels: int, size: int, desc: str = "decoding") -> torch.Tensor:
    """uint8 [N, C, size, size] from image files, decoded on a few threads."""
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)

    def load(index: int) -> None:
        array = decode(Path(paths[index]).read_bytes(), channels, size)
        out[index] = torch.from_numpy(array.transpose(2, 0, 1).copy())

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for _ in tqdm(pool.map(load, range(len(paths))), total=len(paths), desc=desc, unit="img", leave=False):
            pass
    return out


# decoded images of this process by (sha256, channels, size): a study's mixes draw on the same
# real and synthetic files, so each is decoded once; capped so large datasets do not pile up
_DECODED: dict[tuple[str, int, int], torch.Tensor] = {}
_DECODED_MAX_BYTES = 512 * 2**20
_decoded_bytes = [0]


def cached_tensors(manifest: Manifest, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, C, H, W], int64 labels [N]) for every row, decoded once per digest."""
    path = cache_dir() / "tensors" / f"{manifest.digest}-{channels}x{size}x{size}.pt"
    labels = torch.tensor(manifest.label_indices(), dtype=torch.int64)
    if path.exists():
        try:
            images = torch.load(path, weights_only=True)
            if images.shape == (len(manifest), channels, size, size):
                return images, labels
        except Exception:
            pass  # a damaged cache file is rebuilt below
    hashes = manifest.frame["sha256"].astype(str).tolist()
    known = [i for i, sha in enumerate(hashes) if sha and (sha, channels, size) in _DECODED]
    missing = sorted(set(range(len(hashes))) - set(known))
    images = torch.empty((len(hashes), channels, size, size), dtype=torch.uint8)
    for i in known:
        images[i] = _DECODED[(hashes[i], channels, size)]
    if missing:
        rows = Manifest(manifest.frame.iloc[missing], manifest.root, manifest.name, list(manifest.classes))
        images[missing] = decode_files(rows.local_paths(), channels, size, desc=f"decoding {manifest.name}")
        for i in missing:
            if hashes[i] and _decoded_bytes[0] < _DECODED_MAX_BYTES:
                _DECODED[(hashes[i], channels, size)] = images[i].clone()
                _decoded_bytes[0] += images[i].numel()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(images, temporary)
    os.replace(temporary, path)
    return images, labels


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`, without making the host wait for the GPU.

    A plain `.to("cuda")` of a host tensor synchronises the stream (it waits for every queued
    kernel); from pinned memory with non_blocking=True the copy is queued instead, ordered before
    the kernels that use it, and PyTorch keeps the pinned buffer until the copy is done. Used for
    the small per-batch host tensors (batch order, flip masks, chosen indices); on the CPU it is
    `tensor.to(device)`, the same tensor.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for one epoch's order and augmentation: resuming at epoch k replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorBatches:
    """Batches sliced from a uint8 tensor already on the device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def size(self) -> int:
        return len(self.labels)

    def iterate(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = len(self.labels)
        # drawn on the host by the epoch's CPU generator: the same order on every device
        order = to_device(torch.randperm(count, generator=generator), self.images.device) if generator is not None else None
        for start in range(0, count, self.batch_size):
            if order is None:
                yield self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            else:
                index = order[start:start + self.batch_size]
                yield self.images[index], self.labels[index]


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], labels: torch.Tensor, channels: int, size: int):
        self.paths, self.labels, self.channels, self.size = paths, labels, channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        array = decode(Path(self.paths[index]).read_bytes(), self.channels, self.size)
        return torch.from_numpy(array.transpose(2, 0, 1).copy()), self.labels[index]


class LoaderBatches:
    """Batches decoded from files by DataLoader workers every epoch (large images)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, channels: int, size: int, batch_size: int, device: torch.device, workers: int):
        self.dataset = _FileDataset(paths, labels, channels, size)
        self.batch_size, self.device, self.workers = batch_size, device, workers

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    @property
    def size(self) -> int:
        return len(self.dataset)

    def iterate(self, generator: torch.Generator | None = None):
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def make_batches(manifest: Manifest, channels: int, size: int, batch_size: int, device: torch.device, workers: int = 2):
    """The fast tensor path for small images, the DataLoader path otherwise."""
    if size <= FAST_PATH_MAX_SIZE:
        images, labels = cached_tensors(manifest, channels, size)
        return TensorBatches(images, labels, batch_size, device)
    labels = torch.tensor(manifest.label_indices(), dtype=torch.int64)
    return LoaderBatches(manifest.local_paths(), labels, channels, size, batch_size, device, workers)


def to_model_input(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    hflip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 [B, C, H, W] to normalised float on the same device; random horizontal flips if asked."""
    x = images.float().div_(255.0)
    if hflip:
        flip = to_device(torch.rand(len(x), generator=generator), x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # torch.tensor(..., device="cuda") would copy synchronously on every batch
    m = to_device(torch.tensor(mean, dtype=x.dtype), x.device)[None, :, None, None]
    s = to_device(torch.tensor(std, dtype=x.dtype), x.device)[None, :, None, None]
    return (x - m) / s
