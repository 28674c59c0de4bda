"""The training and inference loops every stage shares (train, evaluate, sweep, synthesis CAS).

On a GPU the loops keep everything on the device and never wait for it inside an epoch: the
forward pass runs under bf16 autocast (`models.device`), the loss and correct counts are summed
in device tensors and read once at the end (the per-epoch metrics), and `predict` gathers the
logits on the device and copies them to the host once. On the CPU they compute exactly what
they did before mixed precision existed.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from imaging.batches import to_model_input
from imaging.errors import InputError
from models.device import autocast, module_device, synchronize

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise InputError(f"--optimizer {name!r} is not known; choose one of {', '.join(OPTIMIZERS)}.")


def train_one_epoch(
    network: nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    generator: torch.Generator,
    hflip: bool = False,
    augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    desc: str = "train",
    mixed_precision: bool = True,
) -> dict[str, float]:
    """One pass over `batches` in the order `generator` draws; returns loss, accuracy and images/s.

    `mixed_precision`: bf16 autocast where `models.device.autocast_enabled` (CUDA, Ampere on).
    """
    network.train()
    device = module_device(network)
    loss_sum = correct = 0.0  # become device tensors: one sync per epoch, not per batch
    seen = 0
    started = time.perf_counter()
    bar = tqdm(batches.iterate(generator), total=len(batches), desc=desc, unit="batch", leave=False)
    for images, labels in bar:
        if augment is not None:
            images = augment(images, labels, generator)
        x = to_model_input(images, mean, std, hflip=hflip, generator=generator)
        with autocast(device, mixed_precision):
            logits = network(x)
            loss = nn.functional.cross_entropy(logits, labels)  # float32 under autocast too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach().double() * len(labels)
        correct = correct + (logits.argmax(1) == labels).sum()
        seen += len(labels)
    loss_mean, accuracy = float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1)  # the epoch's one host sync
    synchronize(device)  # the clock stops when the GPU is done, not when the last kernel is queued
    elapsed = time.perf_counter() - started
    return {"loss": loss_mean, "acc": accuracy, "imgs_per_s": seen / max(elapsed, 1e-9)}


@torch.no_grad()
def predict(
    network: nn.Module,
    batches,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    desc: str = "predict",
    mixed_precision: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits [N, K], labels [N]) on the CPU, in the batches' own order.

    The logits stay on the device until the end and come to the host in one copy.
    `mixed_precision`: as in `train_one_epoch` (float32 logits either way).
    """
    network.eval()
    device = module_device(network)
    all_logits, all_labels = [], []
    for images, labels in tqdm(batches.iterate(None), total=len(batches), desc=desc, unit="batch", leave=False):
        x = to_model_input(images, mean, std)
        with autocast(device, mixed_precision):
            logits = network(x)
        all_logits.append(logits.float())
        all_labels.append(labels)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels).cpu()
