"""What every trained generator shares: the sampling contract, checkpoints, the
uint8 <-> [-1, 1] conversion and the randperm training loop.

Seeding: image `i` of `sample(labels, seed)` draws all its noise from its own
CPU `torch.Generator` seeded with `image_seed(seed, i)`, so it depends on
(seed, i, labels[i]) only, not on the batch it was sampled in or on the device
(up to float rounding between batch sizes and devices). A stage records
`image_seed(seed, i)` next to each image it writes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

EpochCallback = Callable[[int, dict[str, float]], None]

_MASK64 = (1 << 64) - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` in a run seeded `seed`: splitmix64 of the pair, 63 bits."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def image_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(image_seed(seed, i)) for i in range(start, stop)]


def per_image_noise(generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard-normal tensor of `shape` per generator, stacked: [len(generators), *shape]."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] on the CPU."""
    return images.detach().clamp(-1, 1).add(1).mul(127.5).round().to("cpu", torch.uint8)


def stage_layout(height: int, width: int) -> tuple[int, int, int]:
    """(stages, base_h, base_w): a conv net grown by one stride-2 stage per doubling of the
    longer side, from a base map of 4..7 px on that side (28 px: 2 stages from 7 x 7; 64 px:
    4 stages from 4 x 4). The image is padded to base x 2^stages and cropped back."""
    side = max(height, width)
    stages = max(1, int(math.floor(math.log2(max(side, 8) / 4))))
    return stages, math.ceil(height / 2**stages), math.ceil(width / 2**stages)


def preset_for(defaults: dict, presets: dict[int, dict], height: int, width: int) -> dict:
    """`defaults` updated by the preset of the smallest size key >= the image's longer side (else the largest)."""
    side = max(height, width)
    size = next((size for size in sorted(presets) if side <= size), max(presets))
    return {**defaults, **presets[size]}


def padded_size(size: int, multiple: int) -> int:
    return int(math.ceil(size / multiple) * multiple)


def pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad [N, C, h, w] evenly to [N, C, height, width]."""
    dh, dw = height - images.shape[-2], width - images.shape[-1]
    if dh == 0 and dw == 0:
        return images
    return F.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")


def crop_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop [N, C, h, w] to [N, C, height, width] (the inverse of `pad_to`)."""
    top = (images.shape[-2] - height) // 2
    left = (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def seeded_model(cls: type, images_uint8: torch.Tensor, num_classes: int, hyper: dict, *, seed: int, device, **overrides):
    """A `cls` for images shaped like `images_uint8`, its weights drawn from
    `seed` without touching the caller's global RNG state."""
    _, channels, height, width = images_uint8.shape
    config = dict(hyper, **overrides, num_classes=num_classes, image_channels=channels, image_height=height, image_width=width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).to(device)


def check_training_data(images_uint8: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if labels.ndim != 1 or len(labels) != len(images_uint8):
        raise ValueError(f"labels must be a 1-d tensor with one label per image, got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min().item()}..{labels.max().item()}")


def batches(num_images: int, batch_size: int, generator: torch.Generator, device="cpu") -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch, on `device`; the short remainder is dropped (reshuffled next epoch).
    The order is drawn on the CPU (the same on every device) and copied once per epoch."""
    order = torch.randperm(num_images, generator=generator).to(device)
    batch_size = min(batch_size, num_images)
    for start in range(0, num_images - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def train_loop(
    step: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device,
    on_epoch: EpochCallback | None,
    progress: bool,
    description: str,
) -> None:
    """Run `step(x, y)` over shuffled batches (x float [-1, 1] on `device`) and report per-epoch means.

    `step` returns its metrics as floats or (detached) tensors; tensors are summed on the device."""
    from tqdm.auto import tqdm

    images = images_uint8.to(device)
    labels = labels.to(device=device, dtype=torch.long)
    order_generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(images) // min(batch_size, len(images)))
    with tqdm(total=epochs * steps_per_epoch, desc=description, unit="step", disable=not progress, leave=False) as bar:
        for epoch in range(epochs):
            sums: dict = {}
            count = 0
            for index in batches(len(images), batch_size, order_generator, device):
                metrics = step(to_unit_range(images[index]), labels[index])
                for name, value in metrics.items():  # tensors stay on the device: one host sync per epoch
                    sums[name] = sums.get(name, 0.0) + (value.detach().float() if torch.is_tensor(value) else float(value))
                count += 1
                bar.update()
            means = {name: float(total) / count for name, total in sums.items()}
            bar.set_postfix({name.split("/")[-1]: f"{value:.3g}" for name, value in means.items()})
            if on_epoch is not None:
                on_epoch(epoch, means)


def ema_decay_at(decay: float, steps_done: int) -> float:
    """The decay of a weight average after `steps_done` steps, with a warm-up: early on the average follows the weights closely."""
    return min(decay, (1 + steps_done) / (10 + steps_done))


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """`model` (with `kind` and `config`) as one file in the generator checkpoint format `load_generator` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"format": "synthmix-generator/1", "kind": model.kind, "config": model.config, "state_dict": state}, path)
    return path


class TrainedGenerator(nn.Module):
    """A class-conditional generator that rebuilds itself from `config` (see `save`)."""

    kind = ""
    default_steps: int | None = None  # sampling steps when `steps` is None (diffusion only)

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.num_classes = int(config["num_classes"])
        self.channels = int(config["image_channels"])
        self.height = int(config["image_height"])
        self.width = int(config["image_width"])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_batch(self, labels: torch.Tensor, generators: list[torch.Generator], steps: int | None, **options) -> torch.Tensor:
        """Float images in [-1, 1], [len(labels), C, H, W], one per generator."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seed: int, steps: int | None = None, batch_size: int = 256, progress: bool = False, **options) -> torch.Tensor:
        """uint8 images [len(labels), C, H, W] on the CPU; image i is reproducible from (seed, i, labels[i])."""
        from tqdm.auto import tqdm

        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {labels.min().item()}..{labels.max().item()}")
        was_training = self.training
        self.eval()
        out = torch.empty((len(labels), self.channels, self.height, self.width), dtype=torch.uint8)
        try:
            for start in tqdm(range(0, len(labels), batch_size), desc=f"sample {self.kind}", unit="batch", disable=not progress, leave=False):
                stop = min(start + batch_size, len(labels))
                images = self.sample_batch(labels[start:stop].to(self.device), image_generators(seed, start, stop), steps, **options)
                out[start:stop] = to_uint8(images)
        finally:
            self.train(was_training)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """One file with everything `load_generator` needs: kind, config and weights."""
        return save_checkpoint(self, path)
