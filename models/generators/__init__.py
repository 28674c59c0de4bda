"""Class-conditional image generators.

Trained here, on the real train split (a uint8 tensor [N, C, H, W] and int64
labels [N] in 0..K-1): `dcgan`, `vae`, `ddpm`, one module each. All share
`TrainedGenerator.sample(labels, seed, steps=None, batch_size=256)` -> uint8
[N, C, H, W] on the CPU, image i reproducible from (seed, i) (see `base`), and
`save(path)` / `load_generator(path)`: one file that rebuilds the model.

`cyclegan` (one module) is a translator, not a class-conditional generator:
`train(source, target, ...)` and `translate(images_uint8, batch_size)`; it
saves in the same checkpoint format, so `load_generator` rebuilds it too.

Pretrained Stable Diffusion (text-to-image and image-to-image) lives in
`models.generators.diffusion`.

The default, and why, is measured by `benchmarks/synthesis.py`.
"""
from __future__ import annotations

import importlib
import os

import torch

from models.generators.base import EpochCallback, TrainedGenerator, check_training_data, image_seed

GENERATORS_TRAINED = ("dcgan", "vae", "ddpm")
TRANSLATORS = ("cyclegan",)  # trained here between two domains; models.generators.cyclegan
# Meets the mnist5k goal (train <= 3 min on 2 CPU cores, CAS >= 0.80) with the
# best CAS of the three; see benchmarks/synthesis.py for the numbers.
DEFAULT_GENERATOR = "vae"

__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATORS_TRAINED",
    "TRANSLATORS",
    "TrainedGenerator",
    "default_hyperparameters",
    "image_seed",
    "load_generator",
    "train_generator",
]


def _module(kind: str):
    if kind not in GENERATORS_TRAINED + TRANSLATORS:
        raise ValueError(f"unknown generator kind {kind!r}; choose one of {', '.join(GENERATORS_TRAINED + TRANSLATORS)}")
    return importlib.import_module(f"models.generators.{kind}")


def default_hyperparameters(kind: str, height: int | None = None, width: int | None = None) -> dict:
    """The kind's defaults: epochs, batch_size, lr and its architecture options;
    with an image size, the preset for that size (kinds that have presets)."""
    module = _module(kind)
    if height is not None and hasattr(module, "defaults_for"):
        return module.defaults_for(int(height), int(width if width is not None else height))
    return dict(module.DEFAULTS)


def train_generator(
    kind: str,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    **options,
) -> TrainedGenerator:
    """Train a `kind` generator; None means the kind's default (`default_hyperparameters`).

    `on_epoch(epoch, metrics)` gets the epoch's mean losses, named `gen/...`.
    `options` override architecture defaults (e.g. `width`, `latent_dim`).
    """
    if kind in TRANSLATORS:
        raise ValueError(f"{kind} translates between two image sets; train it with models.generators.{kind}.train")
    module = _module(kind)
    hyper = default_hyperparameters(kind, *images_uint8.shape[-2:])
    unknown = set(options) - set(hyper)
    if unknown:
        raise ValueError(f"{kind} has no option {', '.join(sorted(unknown))}; known: {', '.join(sorted(hyper))}")
    hyper.update(options)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            hyper[name] = value
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_training_data(images_uint8, labels, int(num_classes))
    return module.train(images_uint8, labels, int(num_classes), hyper=hyper, seed=seed, device=torch.device(device), on_epoch=on_epoch, progress=progress)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedGenerator:
    """Rebuild a generator saved with `TrainedGenerator.save`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "synthmix-generator/1":
        raise ValueError(f"{path} is not a synthmix generator checkpoint")
    model = _module(checkpoint["kind"]).build(checkpoint["config"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # an architecture this version no longer builds
        raise ValueError(f"{path} holds a {checkpoint['kind']} of an older layout that this synthmix cannot rebuild; train it again (synthesize without --generator-run)") from error
    return model.to(device).eval()
