"""Training throughput: the train stage against a bare PyTorch loop, and the
decoded-tensor cache against ImageFolder + DataLoader.

    .venv/bin/python benchmarks/train_throughput.py [--model resnet18] [--epochs 3] [--parts a,b,c]

(a) The same model (same initial weights), data (mnist5k's 4,000 train and 500
    val digits, 28 px grey), batch size and optimiser, trained for --epochs
    epochs, by `pipelines.train.train` (MLflow run, per-epoch metrics, val
    pass, time-based checkpoints, the logged model at the end) and by a bare
    loop over the same uint8 tensors (the same per-epoch val pass, nothing
    else), alternating --repeats times so that both see the same machine.
    Images/s is 4,000 over the median wall time of an epoch, end to end
    (epoch 1 of each run warms up and is left out); epoch ends are taken via
    the stage's on_epoch callback. On 2 shared cores single epochs vary by
    5-10%, which is why the median over repeats is the number to read.
(b) One epoch of batches ready for the model (normalised float [B, C, H, W])
    from the tensor cache (randperm slices of one uint8 tensor) against
    torchvision ImageFolder + DataLoader decoding the PNG files every epoch,
    at 28 px and resized to 32 px. Steady-state epochs (the cache is warm,
    DataLoader workers are started per epoch, as a plain DataLoader does).
(c) On-the-fly augmentation: the train stage as in (a) with
    `--augment salt_pepper:3:0.5,gaussian_noise:3:0.5` against the same stage
    without it (same model, initial weights, data, batch size and epochs),
    alternating --repeats times. Both families corrupt on the batch's own
    device (imaging.corruptions.DEVICE_KINDS); the ratio is augmented images/s
    over plain images/s (median epoch wall time, epoch 1 left out). Goal: >= 0.9.

The tracking store is a temporary sqlite file; nothing is added to ./mlflow.db.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")


AUGMENT = "salt_pepper:3:0.5,gaussian_noise:3:0.5"


def stage_throughput(model: str, epochs: int, batch_size: int, augment: str = "") -> tuple[list[float], float]:
    """(wall seconds of epochs 2..E, final val/acc) of the train stage, with `augment` if given."""
    from pipelines.train import train

    stamps = []
    params = {"data": "mnist5k", "model": model, "epochs": epochs, "batch_size": batch_size, "seed": 0, "device": "cpu"}
    if augment:
        params["augment"] = augment
    result = train(
        params,
        on_epoch=lambda epoch, metrics: stamps.append(time.perf_counter()),
        run_name=f"benchmark-{model}",
    )
    return [b - a for a, b in zip(stamps, stamps[1:])], result.metrics["val/acc"]


def bare_throughput(model: str, epochs: int, batch_size: int) -> tuple[list[float], float]:
    """The same training in a bare loop: wall seconds of epochs 2..E and final val accuracy."""
    import torch

    from imaging.batches import cached_tensors
    from imaging.datasets import load_dataset
    from models.classifiers import build_classifier, normalisation

    manifest, _ = load_dataset("mnist5k")
    train_x, train_y = cached_tensors(manifest.split("train"), 1, 28)
    val_x, val_y = cached_tensors(manifest.split("val"), 1, 28)
    mean, std = (torch.tensor(v)[None, :, None, None] for v in normalisation(1))
    torch.manual_seed(0)
    network = build_classifier(model, 10, 1)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    stamps = []
    for epoch in range(epochs):
        network.train()
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x = (train_x[index].float() / 255 - mean) / std
            loss = torch.nn.functional.cross_entropy(network(x), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        network.eval()
        with torch.no_grad():
            accuracy = float((network((val_x.float() / 255 - mean) / std).argmax(1) == val_y).float().mean())
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])], accuracy


def cache_epoch_seconds(size: int, repeats: int = 3) -> float:
    import torch

    from imaging.batches import TensorBatches, cached_tensors, epoch_generator, to_model_input
    from imaging.datasets import load_dataset
    from models.classifiers import normalisation

    manifest, _ = load_dataset("mnist5k")
    images, labels = cached_tensors(manifest.split("train"), 1, size)  # warm the cache
    mean, std = normalisation(1)
    times = []
    for epoch in range(repeats):
        started = time.perf_counter()
        images, labels = cached_tensors(manifest.split("train"), 1, size)  # read back from disk, as a new run does
        batches = TensorBatches(images, labels, 128, torch.device("cpu"))
        for x, _ in batches.iterate(epoch_generator(0, epoch)):
            to_model_input(x, mean, std)
        times.append(time.perf_counter() - started)
    return min(times)


def imagefolder_epoch_seconds(size: int, workers: int, repeats: int = 3) -> float:
    import torch
    from torchvision import datasets, transforms

    from imaging.datasets import materialise_mnist5k
    from models.classifiers import normalisation

    mean, std = normalisation(1)
    steps = [transforms.Grayscale(1)] + ([transforms.Resize(size)] if size != 28 else []) + [transforms.ToTensor(), transforms.Normalize(mean, std)]
    folder = datasets.ImageFolder(str(materialise_mnist5k() / "train"), transform=transforms.Compose(steps))
    times = []
    for epoch in range(repeats):
        loader = torch.utils.data.DataLoader(folder, batch_size=128, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(epoch))
        started = time.perf_counter()
        for x, _ in loader:
            pass
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="architecture for (a); default: the study's resnet18")
    parser.add_argument("--epochs", type=int, default=4, help="epochs for (a); epochs 2..E are timed")
    parser.add_argument("--repeats", type=int, default=2, help="bare and stage runs of (a), alternating")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (b)")
    parser.add_argument("--parts", default="a,b,c", help="which measurements to run, comma-separated (default a,b,c)")
    args = parser.parse_args()
    parts = {part.strip() for part in args.parts.split(",")}

    import torch

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.chdir(folder)
        import mlflow

        mlflow.set_experiment("benchmark-train-throughput")
        if "a" in parts:
            bare_walls, stage_walls = [], []
            for _ in range(args.repeats):
                walls, bare_acc = bare_throughput(args.model, args.epochs, args.batch_size)
                bare_walls += walls
                walls, stage_acc = stage_throughput(args.model, args.epochs, args.batch_size)
                stage_walls += walls
            bare, stage = 4000 / statistics.median(bare_walls), 4000 / statistics.median(stage_walls)
        if "c" in parts:
            plain_walls, augmented_walls = [], []
            for _ in range(args.repeats):
                walls, plain_acc = stage_throughput(args.model, args.epochs, args.batch_size)
                plain_walls += walls
                walls, augmented_acc = stage_throughput(args.model, args.epochs, args.batch_size, AUGMENT)
                augmented_walls += walls
            plain, augmented = 4000 / statistics.median(plain_walls), 4000 / statistics.median(augmented_walls)

    if "a" in parts:
        print(f"\n(a) {args.model} on mnist5k (4,000 train images, 28 px), batch {args.batch_size}, {args.epochs} epochs x {args.repeats} runs each, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
        print(f"{'loop':<44}{'images/s':>10}{'val/acc':>10}{'ratio':>8}")
        print(f"{'bare PyTorch loop (train + val pass)':<44}{bare:>10.1f}{bare_acc:>10.3f}{1:>8.3f}")
        print(f"{'train stage (MLflow, val, checkpoint by time)':<44}{stage:>10.1f}{stage_acc:>10.3f}{stage / bare:>8.3f}")

    if "b" in parts:
        print("\n(b) one epoch of normalised batches of mnist5k train (4,000 PNGs), batch 128")
        print(f"{'size':<8}{'tensor cache (s)':>18}{'ImageFolder+DataLoader (s)':>28}{'speed-up':>10}")
        for size in (28, 32):
            ours, theirs = cache_epoch_seconds(size), imagefolder_epoch_seconds(size, args.workers)
            print(f"{size:<8}{ours:>18.4f}{theirs:>28.3f}{theirs / ours:>9.1f}x")

    if "c" in parts:
        print(f"\n(c) train stage with and without --augment {AUGMENT}: {args.model} on mnist5k, batch {args.batch_size}, "
              f"{args.epochs} epochs x {args.repeats} runs each, cpu, {torch.get_num_threads()} torch threads")
        print(f"{'train stage':<44}{'images/s':>10}{'val/acc':>10}{'ratio':>8}")
        print(f"{'without --augment':<44}{plain:>10.1f}{plain_acc:>10.3f}{1:>8.3f}")
        print(f"{'with --augment (on the device path)':<44}{augmented:>10.1f}{augmented_acc:>10.3f}{augmented / plain:>8.3f}")


if __name__ == "__main__":
    main()
