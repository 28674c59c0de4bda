"""How good are synthetic images? Three scores, all on uint8 [N, C, H, W] tensors.

- CAS, Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier
  trained on synthetic images only, tested on the real test split. Close to
  the real-data accuracy means the synthetic images carry the class.
- Feature FID: the Fréchet distance between real-test and synthetic feature
  statistics, in the penultimate layer of a classifier trained on the real
  train split (not Inception: its weights are not at hand offline, and a
  digit classifier's features suit digits better). 0 = same statistics.
- Detectability: held-out accuracy of a small real-vs-synthetic classifier;
  0.5 means it cannot tell them apart.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imaging.batches import TensorBatches, epoch_generator
from models.classifiers import build_classifier, normalisation
from models.training import make_optimizer, predict, train_one_epoch


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int, seed: int, device: torch.device, batch_size: int = 128, lr: float = 3e-3, desc: str = "fit") -> nn.Module:
    """A smallcnn trained on uint8 images (cosine-decayed Adam), in eval mode."""
    torch.manual_seed(seed)
    network = build_classifier("smallcnn", num_classes, images.shape[1]).to(device)
    optimizer = make_optimizer("adam", network.parameters(), lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    batches = TensorBatches(images, labels, batch_size, device)
    mean, std = normalisation(images.shape[1])
    for epoch in range(epochs):
        train_one_epoch(network, batches, optimizer, mean, std, generator=epoch_generator(seed, epoch), desc=f"{desc} {epoch + 1}/{epochs}")
        scheduler.step()
    return network.eval()


def accuracy(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    mean, std = normalisation(images.shape[1])
    logits, truth = predict(network, TensorBatches(images, labels, 512, device), mean, std)
    return float((logits.argmax(1) == truth).float().mean())


def classification_accuracy_score(synthetic: torch.Tensor, synthetic_labels: torch.Tensor, real_test: torch.Tensor, real_test_labels: torch.Tensor, num_classes: int, *, epochs: int = 5, seed: int = 0, device=torch.device("cpu")) -> float:
    network = fit_classifier(synthetic, synthetic_labels, num_classes, epochs=epochs, seed=seed, device=device, desc="CAS")
    return accuracy(network, real_test, real_test_labels, device)


@torch.no_grad()
def features(network: nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Penultimate-layer features (smallcnn's pooled map) as float64 [N, D]."""
    mean, std = normalisation(images.shape[1])
    captured = []  # on the device until the end: one copy to the host, not one per batch
    hook = network.pool.register_forward_hook(lambda module, inputs, output: captured.append(torch.flatten(output, 1).double()))
    try:
        # float32 forward: bf16 features would add noise to the covariances (models/device.py)
        predict(network, TensorBatches(images, torch.zeros(len(images), dtype=torch.long), 512, device), mean, std, mixed_precision=False)
    finally:
        hook.remove()
    return torch.cat(captured).cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # near-singular product: nudge the diagonals, as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def detectability(real: torch.Tensor, synthetic: torch.Tensor, *, epochs: int = 3, seed: int = 0, device=torch.device("cpu"), held_out: float = 0.25) -> float:
    """Held-out accuracy of a real (0) vs synthetic (1) classifier on balanced data."""
    count = min(len(real), len(synthetic))
    rng = torch.Generator().manual_seed(seed)
    real = real[torch.randperm(len(real), generator=rng)[:count]]
    synthetic = synthetic[torch.randperm(len(synthetic), generator=rng)[:count]]
    images = torch.cat([real, synthetic])
    labels = torch.cat([torch.zeros(count, dtype=torch.long), torch.ones(count, dtype=torch.long)])
    order = torch.randperm(len(images), generator=rng)
    cut = int(len(order) * (1 - held_out))
    train_index, test_index = order[:cut], order[cut:]
    network = fit_classifier(images[train_index], labels[train_index], 2, epochs=epochs, seed=seed, device=device, desc="detector")
    return accuracy(network, images[test_index], labels[test_index], device)
