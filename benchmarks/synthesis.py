"""Trained generators: training time, sampling speed, quality and artefacts, on any data and size.

    .venv/bin/python benchmarks/synthesis.py                        # mnist5k, 28 px grey
    .venv/bin/python -m imaging.photos /tmp/photos64 --size 64      # 3 classes x 200 colour photo patches
    .venv/bin/python benchmarks/synthesis.py --data /tmp/photos64 --size 64 [--kinds dcgan]

Each generator trains with its defaults for the image size (the presets in
models/generators/<kind>.py; `--epochs` overrides) on the real *train* split,
then samples as many images per class as the largest real train class
(--per-class). Quality uses the stage's own scores (models/quality.py): CAS
(a smallcnn trained on the synthetic images only, accuracy on the real test
split) and CAS relative to the `real` row's (the same classifier trained on
the real train split: the ceiling); feature FID and IS in the penultimate
layer / softmax of a smallcnn trained on the real train split (not
Inception: IS ranges from 1 to the class count); detectability (held-out
accuracy of a real-vs-synthetic smallcnn; 0.5 = indistinguishable). The
artefact ratios (imaging/artefacts.py) are synthetic / real: `HF` the share of
spectral energy above 0.75 Nyquist, min..max over channels (within 0.5..2 =
no checkerboard), `div` the within-class pixel diversity (>= 0.6 = no mode
collapse).

For ddpm on mnist5k it also compares the 1000-step ancestral sampler with the
default few-step one (--full-per-class).

Timings are wall-clock in one process with torch's default threads (2 on the
reference machine: 2 cores, no GPU), or `--threads`; --device cuda for a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmarks._options import add_option_argument, parse_options  # noqa: E402

GOALS_64 = "dcgan at 64 px colour: CAS >= 0.8 x real, train <= 300 s (3 x 200 images, 2 CPU cores), HF within 0.5..2, div >= 0.6"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist5k", help="mnist5k or a folder of class sub-folders (python -m imaging.photos makes a colour one)")
    parser.add_argument("--size", type=int, default=0, help="image side in px the generators work at; 0 = the data's own")
    parser.add_argument("--kinds", default="dcgan,vae,ddpm", help="comma-separated trained generators")
    parser.add_argument("--epochs", type=int, default=0, help="generator epochs; 0 = each generator's preset for the size")
    parser.add_argument("--per-class", type=int, default=0, help="synthetic images per class for the scores; 0 = as many as the largest real train class")
    parser.add_argument("--quality-epochs", type=int, default=5, help="epochs of the scoring classifiers (the stage's default)")
    parser.add_argument("--full-per-class", type=int, default=50, help="ddpm: images per class for the 1000-step sampler comparison; 0 skips it")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (one per core). 1 gives times that hold a fortiori on 2 cores while something else runs")
    parser.add_argument("--grids", default="", help="folder to save each generator's sample grid in (<kind>_<size>px.png, the first 8 of each class; real_<size>px.png too)")
    add_option_argument(parser)
    args = parser.parse_args()
    options = parse_options(parser, args.option)

    import torch

    from imaging.artefacts import artefact_ratios
    from imaging.batches import cached_tensors
    from imaging.datasets import load_dataset
    from imaging.manifest import native_format
    from models.generators import default_hyperparameters, train_generator
    from models.quality import classification_accuracy_score, detectability, embed, classifier_backbone, fit_classifier, frechet_distance, inception_score

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    manifest, _ = load_dataset(args.data)
    channels, native = native_format(manifest)
    size = args.size or native
    train_x, train_y = cached_tensors(manifest.split("train"), channels, size)
    test_x, test_y = cached_tensors(manifest.split("test"), channels, size)
    classes = len(manifest.classes)
    epochs = args.quality_epochs
    reference = classifier_backbone(fit_classifier(train_x, train_y, classes, epochs=epochs, seed=args.seed, device=device, desc="reference"), channels)
    test_features = embed(reference, test_x, device)[0]

    def scores(images, labels, epochs=epochs):
        features, probabilities = embed(reference, images, device)
        return (classification_accuracy_score(images, labels, test_x, test_y, classes, epochs=epochs, seed=args.seed, device=device),
                frechet_distance(test_features, features), inception_score(probabilities)[0])

    real_cas, real_fid, real_is = scores(train_x, train_y)
    if args.grids:
        _save_grid(Path(args.grids) / f"real_{size}px.png", "real", train_x, train_y, manifest.classes)
    rows = [("real (ceiling)", "-", "-", "-", f"{real_cas:.3f}", "1.00", f"{real_fid:.2f}", f"{real_is:.2f}", "-", "1.00", "1.00")]
    per_class = args.per_class or int(torch.bincount(train_y).max())
    labels = torch.arange(classes).repeat_interleave(per_class)
    extra, goals = [], []
    for kind in args.kinds.split(","):
        preset = default_hyperparameters(kind, size, size)
        own = {name: value for name, value in options.items() if name in preset}
        started = time.perf_counter()
        generator = train_generator(kind, train_x, train_y, classes, epochs=args.epochs or None, seed=args.seed, device=device, progress=False, **own)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        synthetic = generator.sample(labels, args.seed)
        rate = len(labels) / (time.perf_counter() - started)
        cas, fid, score = scores(synthetic, labels)
        detect = detectability(train_x, synthetic, epochs=max(1, epochs // 2), seed=args.seed, device=device)
        ratios = artefact_ratios(train_x, train_y, synthetic, labels)
        if args.grids:
            _save_grid(Path(args.grids) / f"{kind}_{size}px.png", kind, synthetic, labels, manifest.classes)
        rows.append((kind + "".join(f" {name}={value}" for name, value in own.items()), str(args.epochs or preset["epochs"]), f"{train_seconds:.0f}", f"{rate:.0f}", f"{cas:.3f}", f"{cas / real_cas:.2f}", f"{fid:.2f}", f"{score:.2f}", f"{detect:.3f}",
                     f"{ratios['hf_ratio_min']:.2f}..{ratios['hf_ratio_max']:.2f}", f"{ratios['diversity_ratio']:.2f}"))
        if kind == "dcgan" and size == 64 and channels == 3:
            met = cas >= 0.8 * real_cas and train_seconds <= 300 and 0.5 <= ratios["hf_ratio_min"] and ratios["hf_ratio_max"] <= 2 and ratios["diversity_ratio"] >= 0.6
            goals.append(f"{GOALS_64}: {'met' if met else 'NOT met'}")
        if kind == "ddpm" and args.full_per_class and args.data == "mnist5k":
            extra = _sampler_comparison(generator, classes, args, scores, epochs, per_class)

    header = ("generator", "epochs", "train s", "imgs/s", "CAS", "CAS/real", "feat-FID", "IS", "detect", "HF ratio", "div")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    print(f"\n{manifest.name}: {len(train_x)} train / {len(test_x)} test images, {size} px, {channels} channel(s), {classes} classes, "
          f"{per_class} synthetic per class, {torch.get_num_threads()} threads, {device}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    for line in goals:
        print(line)
    if extra:
        (few_name, few_speed, few_cas), (full_name, full_speed, full_cas) = extra
        print(f"\nddpm sampling on {args.full_per_class} images per class")
        print(f"{'sampler':<14}{'imgs/s':>10}{'CAS':>8}")
        print(f"{few_name:<14}{few_speed:>10.1f}{few_cas:>8.3f}")
        print(f"{full_name:<14}{full_speed:>10.2f}{full_cas:>8.3f}")
        print(f"few-step is {few_speed / full_speed:.0f}x faster; CAS difference {100 * (few_cas - full_cas):+.1f} points")


def _save_grid(path: Path, name: str, images, labels, classes: list[str], columns: int = 8) -> None:
    """The first `columns` images of each class, a row per class, as the synthesize stage draws them."""
    import numpy as np

    from tracking.figures import class_rows_figure, plt

    arrays = images.permute(0, 2, 3, 1).numpy()
    rows = [arrays[(labels == index).numpy()][:columns] for index in range(len(classes))]
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = class_rows_figure([np.ascontiguousarray(row) for row in rows], list(classes), f"{name}: the first {columns} images of each class")
    figure.savefig(path)
    plt.close(figure)


def _sampler_comparison(generator, classes: int, args, scores, epochs: int, per_class: int) -> list:
    """(name, imgs/s, CAS) for the default few-step sampler and 1000-step ancestral DDPM on equal-sized sets."""
    import torch

    few_labels = torch.arange(classes).repeat_interleave(args.full_per_class)
    out = []
    for name, steps, options in ((f"{generator.sampler_name} {generator.default_steps}", None, {}), ("ddpm 1000", 1000, {"scheduler": "ddpm"})):
        started = time.perf_counter()
        images = generator.sample(few_labels, args.seed, steps=steps, **options)
        speed = len(few_labels) / (time.perf_counter() - started)
        # the same number of classifier updates as on the full sets, so CAS is not starved by the smaller set
        cas = scores(images, few_labels, epochs=epochs * max(1, per_class // args.full_per_class))[0]
        out.append((name, speed, cas))
    return out


if __name__ == "__main__":
    main()
