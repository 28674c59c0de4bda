"""How good are synthetic images? Four scores, all on uint8 [N, C, H, W] tensors.

- CAS, Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier
  trained on synthetic images only, tested on the real test split. Close to
  the real-data accuracy means the synthetic images carry the class.
- FID: the Fréchet distance between real-test and synthetic feature
  statistics. 0 = same statistics.
- IS, Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))),
  computed on 10 splits and reported as their mean and standard deviation.
  1 = every image looks alike to the classifier (or it is unsure of each);
  the number of classes = each image is confidently one class and the
  classes are balanced.
- Detectability: held-out accuracy of a small real-vs-synthetic classifier;
  0.5 means it cannot tell them apart.

FID and IS are read from a *backbone*. By default it is the classifier trained
on the real train split (a smallcnn): FID in its penultimate layer, IS from
its softmax over the dataset's own classes, so IS runs from 1 to the class
count. A digit classifier's features suit digits better than ImageNet's, and
it needs no download. The other backbone is torchvision's Inception-v3 with
its ImageNet weights (read from the torch hub cache only, never downloaded):
FID in its 2048-d pool features, IS over its 1000 ImageNet classes. Neither
is the published metric: the classifier backbone is not Inception at all, and
the torchvision Inception-v3 weights and resizing differ from the TF-Inception
graph of the papers, so never compare these numbers with published
Inception-v3 FID or IS; compare them only with each other, on one backbone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from imaging.batches import TensorBatches, epoch_generator
from imaging.errors import InputError
from models.classifiers import build_classifier, normalisation
from models.training import make_optimizer, predict, train_one_epoch

INCEPTION_SIZE = 299  # px: the side Inception-v3 takes


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int, seed: int, device: torch.device, batch_size: int = 128, lr: float = 3e-3, desc: str = "fit",
                   arch: str = "smallcnn") -> nn.Module:
    """A classifier (`arch`, from scratch; by default a smallcnn) trained on uint8 images (cosine-decayed Adam), in eval mode."""
    torch.manual_seed(seed)
    network = build_classifier(arch, num_classes, images.shape[1], image_size=images.shape[-1]).to(device)
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


@dataclass
class Backbone:
    """The network FID's features and IS's class probabilities are read from."""

    network: nn.Module
    pooled: nn.Module  # the layer whose flattened output is the feature vector
    mean: tuple[float, ...]  # normalisation of [0, 1] pixels, per channel
    std: tuple[float, ...]
    size: int | None = None  # images are made RGB and resized to this side (px) first; None keeps them as they are
    batch_size: int = 512


def classifier_backbone(network: nn.Module, channels: int) -> Backbone:
    """A smallcnn (e.g. fit_classifier's) as a backbone: its pooled map and its softmax over the dataset's classes."""
    mean, std = normalisation(channels)
    return Backbone(network.eval(), network.pool, mean, std)


def inception_weights_path() -> Path:
    """Where torch keeps torchvision's Inception-v3 ImageNet weights: $TORCH_HOME/hub/checkpoints/<file of the url>."""
    from torchvision.models import Inception_V3_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(Inception_V3_Weights.IMAGENET1K_V1.url)


def check_inception_weights() -> Path:
    """The weights file, or an InputError that says where to put it: they are never downloaded here."""
    from torchvision.models import Inception_V3_Weights

    path = inception_weights_path()
    if not path.is_file():
        raise InputError(
            f"--quality-backbone inception needs torchvision's Inception-v3 ImageNet weights {path.name} in {path.parent}, and it is not there; "
            f"on a machine with internet download {Inception_V3_Weights.IMAGENET1K_V1.url} and copy it into that folder "
            f"(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it), or use --quality-backbone classifier."
        )
    return path


def inception_backbone(device: torch.device) -> Backbone:
    """torchvision's Inception-v3 with its ImageNet weights from the torch cache: 2048-d pool features, 1000-class softmax."""
    import pickle

    from torchvision.models import Inception_V3_Weights, inception_v3

    weights = Inception_V3_Weights.IMAGENET1K_V1
    path = check_inception_weights()
    # built as torchvision builds it for these weights: transform_input turns ImageNet-normalised
    # pixels into the [-1, 1] scaling the ported Google weights expect
    network = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"{path} is not torchvision's Inception-v3 state dict ({str(error).splitlines()[0][:120]}); replace it with {weights.url}.") from error
    network.aux_logits, network.AuxLogits = False, None  # the auxiliary head only helps training
    transform = weights.transforms()
    return Backbone(network.to(device).eval(), network.avgpool, tuple(transform.mean), tuple(transform.std), size=INCEPTION_SIZE, batch_size=32)


def _backbone_input(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    x = images.float().div_(255.0)
    if backbone.size is not None:
        if x.shape[1] == 1:  # grey: the same value in R, G and B
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(backbone.size, backbone.size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(backbone.mean, device=x.device)[None, :, None, None]
    std = torch.tensor(backbone.std, device=x.device)[None, :, None, None]
    return (x - mean) / std


@torch.no_grad()
def embed(backbone: Backbone, images: torch.Tensor, device: torch.device, desc: str = "embed") -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], class probabilities [N, K]), both float64, of uint8 images, from one pass through the backbone."""
    # on the device until the end: one copy to the host, not one per batch; float32 throughout,
    # as bf16 features would add noise to FID's covariances (models/device.py)
    captured, probabilities = [], []
    hook = backbone.pooled.register_forward_hook(lambda module, inputs, output: captured.append(torch.flatten(output, 1).double()))
    try:
        for start in tqdm(range(0, len(images), backbone.batch_size), desc=desc, unit="batch", leave=False):
            logits = backbone.network(_backbone_input(backbone, images[start:start + backbone.batch_size].to(device)))
            probabilities.append(torch.softmax(logits.double(), 1))
    finally:
        hook.remove()
    return torch.cat(captured).cpu().numpy(), torch.cat(probabilities).cpu().numpy()


def features(network: nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Penultimate-layer features (smallcnn's pooled map) as float64 [N, D]."""
    return embed(classifier_backbone(network, images.shape[1]), images, device, desc="features")[0]


def inception_score(scores, splits: int = 10) -> tuple[float, float]:
    """(mean, standard deviation) over `splits` of exp(E_x KL(p(y|x) || p(y))), p(y) the split's mean prediction.

    `scores` [N, K] are class probabilities (non-negative rows summing to 1) or logits (anything else, softmaxed).
    Split j holds rows j, j + splits, ...: class-sorted input (as synthesize writes it) still puts every class
    in every split, where consecutive chunks would each hold one class and score 1.
    """
    from scipy.special import softmax, xlogy

    probabilities = np.asarray(scores, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"inception_score takes [N, K] scores with N >= 1, not shape {probabilities.shape}")
    if not ((probabilities >= 0).all() and np.allclose(probabilities.sum(1), 1, atol=1e-6)):
        probabilities = softmax(probabilities, axis=1)
    splits = max(1, min(splits, len(probabilities)))
    per_split = []
    for first in range(splits):
        part = probabilities[first::splits]
        marginal = part.mean(0, keepdims=True)
        divergence = (xlogy(part, part) - xlogy(part, marginal)).sum(1)  # xlogy: 0 log 0 = 0
        per_split.append(np.exp(divergence.mean()))
    return float(np.mean(per_split)), float(np.std(per_split))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets [N, D].

    Tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of S_a S_b, which are those of
    S_a^1/2 S_b S_a^1/2 and, in sample space, the squared singular values of A B^T for the centred, scaled
    features A and B. Either way it is exact and real, and far faster than scipy's sqrtm of the product
    (over a minute at Inception's 2048 dimensions on a CPU).
    """
    centred_a = (a - a.mean(0)) / np.sqrt(max(len(a) - 1, 1))  # S_a = centred_a^T centred_a
    centred_b = (b - b.mean(0)) / np.sqrt(max(len(b) - 1, 1))
    if min(len(a), len(b)) <= a.shape[1]:  # fewer images than dimensions: the small matrix is images x images
        root_trace = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    else:
        values, vectors = np.linalg.eigh(centred_a.T @ centred_a)
        root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ (centred_b.T @ centred_b) @ root_a), 0, None)).sum()
    means = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(means + (centred_a ** 2).sum() + (centred_b ** 2).sum() - 2 * root_trace)


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
