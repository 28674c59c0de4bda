"""The training and inference loops every stage shares (train, evaluate, sweep, synthesis CAS)."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from imaging.batches import to_model_input
from imaging.errors import InputError

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
) -> dict[str, float]:
    """One pass over `batches` in the order `generator` draws; returns loss, accuracy and images/s."""
    network.train()
    loss_sum = correct = 0.0  # become device tensors: one sync per epoch, not per batch
    seen = 0
    started = time.perf_counter()
    bar = tqdm(batches.iterate(generator), total=len(batches), desc=desc, unit="batch", leave=False)
    for images, labels in bar:
        if augment is not None:
            images = augment(images, labels, generator)
        x = to_model_input(images, mean, std, hflip=hflip, generator=generator)
        logits = network(x)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach().double() * len(labels)
        correct = correct + (logits.argmax(1) == labels).sum()
        seen += len(labels)
    elapsed = time.perf_counter() - started
    return {"loss": float(loss_sum) / max(seen, 1), "acc": float(correct) / max(seen, 1), "imgs_per_s": seen / max(elapsed, 1e-9)}


@torch.no_grad()
def predict(network: nn.Module, batches, mean: tuple[float, ...], std: tuple[float, ...], desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K], labels [N]) on the CPU, in the batches' own order."""
    network.eval()
    all_logits, all_labels = [], []
    for images, labels in tqdm(batches.iterate(None), total=len(batches), desc=desc, unit="batch", leave=False):
        all_logits.append(network(to_model_input(images, mean, std)).float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)
