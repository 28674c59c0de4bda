"""Trained generators on mnist5k: training time, sampling speed and quality.

    .venv/bin/python benchmarks/synthesis.py [--kinds dcgan,vae,ddpm] [--per-class 400]

Each generator is trained with its defaults on mnist5k's 4,000 real train
images (the synthesize stage's data: 28 px grey, 400 per class), then samples
--per-class images per class. Quality uses the stage's own scores
(models/quality.py): CAS (a smallcnn trained on the synthetic images only,
accuracy on the 500 real test images), feature FID (Fréchet distance in the
penultimate layer of a smallcnn trained on the real train split) and
detectability (held-out accuracy of a real-vs-synthetic smallcnn; 0.5 =
indistinguishable). The `real` row trains the CAS classifier on the real
train images: the ceiling.

For ddpm it also samples --full-per-class images per class with 1000-step
ancestral DDPM and the same count with the default few-step sampler, and
compares speed (images/s) and CAS on those equal-sized sets; their CAS
classifier trains for proportionally more epochs, so it gets as many updates
as on the --per-class sets.

Timings are wall-clock in one process with torch's default threads (2 on the
reference machine: 2 cores, no GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="dcgan,vae,ddpm", help="comma-separated trained generators")
    parser.add_argument("--per-class", type=int, default=400, help="synthetic images per class for the scores")
    parser.add_argument("--quality-epochs", type=int, default=5, help="epochs of the scoring classifiers (the stage's default)")
    parser.add_argument("--full-per-class", type=int, default=50, help="images per class for the 1000-step DDPM comparison; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from imaging.batches import cached_tensors
    from imaging.datasets import load_dataset
    from models.generators import default_hyperparameters, train_generator
    from models.quality import classification_accuracy_score, detectability, features, fit_classifier, frechet_distance

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    manifest, _ = load_dataset("mnist5k")
    train_x, train_y = cached_tensors(manifest.split("train"), 1, 28)
    test_x, test_y = cached_tensors(manifest.split("test"), 1, 28)
    epochs = args.quality_epochs
    reference = fit_classifier(train_x, train_y, 10, epochs=epochs, seed=args.seed, device=device, desc="reference")
    test_features = features(reference, test_x, device)

    def scores(images, labels, epochs=epochs):
        return (
            classification_accuracy_score(images, labels, test_x, test_y, 10, epochs=epochs, seed=args.seed, device=device),
            frechet_distance(test_features, features(reference, images, device)),
        )

    rows = [("real (ceiling)", "-", "-", "-", "-", *(f"{v:.3f}" for v in scores(train_x, train_y)), "-")]
    labels = torch.arange(10).repeat_interleave(args.per_class)
    extra = []
    for kind in args.kinds.split(","):
        started = time.perf_counter()
        generator = train_generator(kind, train_x, train_y, 10, seed=args.seed, device=device, progress=False)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        synthetic = generator.sample(labels, args.seed)
        rate = len(labels) / (time.perf_counter() - started)
        cas, fid = scores(synthetic, labels)
        detect = detectability(train_x, synthetic, epochs=max(1, epochs // 2), seed=args.seed, device=device)
        sampler = f"{generator.sampler_name} {generator.default_steps}" if kind == "ddpm" else "one pass"
        rows.append((kind, str(default_hyperparameters(kind)["epochs"]), f"{train_seconds:.0f}", sampler, f"{rate:.0f}", f"{cas:.3f}", f"{fid:.3f}", f"{detect:.3f}"))
        if kind == "ddpm" and args.full_per_class:
            few_labels = torch.arange(10).repeat_interleave(args.full_per_class)
            for name, steps, options in ((f"{generator.sampler_name} {generator.default_steps}", None, {}), ("ddpm 1000", 1000, {"scheduler": "ddpm"})):
                started = time.perf_counter()
                images = generator.sample(few_labels, args.seed, steps=steps, **options)
                speed = len(few_labels) / (time.perf_counter() - started)
                # the same number of classifier updates as on the --per-class sets, so CAS is not starved by the smaller set
                cas, fid = scores(images, few_labels, epochs=epochs * max(1, args.per_class // args.full_per_class))
                extra.append((name, speed, cas, fid))

    header = ("generator", "epochs", "train s", "sampler", "imgs/s", "CAS", "feat-FID", "detect")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    print(f"\nmnist5k: 4,000 train / 500 test images, {args.per_class} synthetic per class, {torch.get_num_threads()} threads, {device}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    if extra:
        (few_name, few_speed, few_cas, few_fid), (full_name, full_speed, full_cas, full_fid) = extra
        print(f"\nddpm sampling on {args.full_per_class} images per class")
        print(f"{'sampler':<14}{'imgs/s':>10}{'CAS':>8}{'feat-FID':>10}")
        print(f"{few_name:<14}{few_speed:>10.1f}{few_cas:>8.3f}{few_fid:>10.3f}")
        print(f"{full_name:<14}{full_speed:>10.2f}{full_cas:>8.3f}{full_fid:>10.3f}")
        print(f"few-step is {few_speed / full_speed:.0f}x faster; CAS difference {100 * (few_cas - full_cas):+.1f} points")


if __name__ == "__main__":
    main()
