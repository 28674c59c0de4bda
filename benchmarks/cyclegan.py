"""CycleGAN domain shift on colour photos: train time, how "target" the translations look,
and whether they keep their class.

    python benchmarks/cyclegan.py --threads 1 --size 64 --grids docs

Source: 3 classes x `--per-class` colour photo patches (imaging.photos), 80% to train the
translator and the classifiers, 20% held out. Target: `--target-count` other patches of
the same photos (other crops, never a source image), shifted to the target domain:
- snow: our ImageNet-C `snow` corruption at `--snow-severity`;
- winter: a colour shift defined here (`winter`): cooler, a little desaturated, brighter.
The small preset (models/generators/cyclegan.py PRESETS) is trained once per target.

Per target:
- train s: seconds to train the translator (goal <= 600 on 2 CPU cores);
- target share: the share of the translated held-out images that a source-vs-target
  classifier (smallcnn, trained on the real source train images vs the real target
  images) calls "target" (goal >= 0.80);
- label survival: accuracy of a class classifier trained on the source train images, on
  the translated held-out images (true label: their source's), over its accuracy on the
  held-out source images themselves (goal >= 0.90);
- real shifted (context): that ratio on the held-out images shifted directly (the snow
  corruption or the winter shift applied to them): if the real target-domain images lose
  the class, a translation cannot be expected to keep it.
- with `--second-judge resnet18`: label survival judged by a second class classifier of another
  architecture too (from scratch, same images and epochs); a check for translators trained with
  `--option semantic_weight=W`, whose loss comes from a smallcnn of their own (another seed).
  Read its real-shifted column first: a ResNet18 from scratch kept only 0.39 of its accuracy on
  real snowy images, and a judge that loses the class to the real target domain judges nothing.

Runs are repeatable on one machine (the same seed and threads gave the same weights in two
processes), but the same seed gave other numbers on another machine (README.md, CycleGAN): likely
float rounding that differs between CPUs, which GAN training amplifies. Compare settings over seeds.

The snow severity: 1, because the real snowy images must keep their class for the label
survival goal to be reachable: at 64 px (the Tiny-ImageNet-C table) the class classifier
keeps 0.97 of its held-out accuracy on snow at severity 1, 0.92 at 2 and 0.39 at 3 (measured
with this script's data and classifier); severity 1 leaves a margin above 0.9, and
`--snow-severity` changes it. The winter shift is mild for the same reason (see `winter`). Measured numbers are in README.md's CycleGAN section, with the command.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._options import add_option_argument, parse_options  # noqa: E402
from models.generators import cyclegan  # noqa: E402

CLASSES = ("cat", "coffee", "flower")
GOALS = {"train_s": 600.0, "target_share": 0.80, "label_survival": 0.90}


def winter(images: np.ndarray) -> np.ndarray:
    """A winter look on uint8 NHWC RGB: 20% of the way to grey, cooler (red x0.9, blue x1.05 + 8) and brighter (+15).
    Mild on purpose: the class classifier keeps 0.93 of its accuracy on these (`real shifted`); at 45% grey,
    red x0.85 and +30 it kept 0.63, and no translation can keep a class that the target domain itself loses."""
    pixels = images.astype(np.float32)
    grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    pixels = 0.8 * pixels + 0.2 * grey[..., None]
    pixels = pixels * np.array([0.9, 1.0, 1.05], np.float32) + np.array([0.0, 0.0, 8.0], np.float32) + 15.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def shifted(kind: str, images: np.ndarray, severity: int, seed: int) -> np.ndarray:
    from imaging.corruptions import corrupt

    return corrupt(images, "snow", severity, seed=seed) if kind == "snow" else winter(images)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def source_domain(per_class: int, size: int):
    """(train images, train labels, held-out images, held-out labels): uint8 NHWC, 80/20 per class."""
    from imaging.photos import patches

    parts = [[], [], [], []]
    for label, name in enumerate(CLASSES):
        images = patches(name, per_class, size, seed=label)  # as write_photo_folder(seed=0)
        cut = int(round(per_class * 0.8))
        parts[0].append(images[:cut]), parts[1].append(np.full(cut, label)), parts[2].append(images[cut:]), parts[3].append(np.full(per_class - cut, label))
    return [np.concatenate(part) for part in parts]


def target_photos(count: int, size: int) -> np.ndarray:
    """`count` other crops of the same photos (another seed), unlabelled: the target images before the shift."""
    from imaging.photos import patches

    share = -(-count // len(CLASSES))
    return np.concatenate([patches(name, share, size, seed=1000 + label) for label, name in enumerate(CLASSES)])[:count]


def called_target(domain, images: torch.Tensor, device) -> float:
    """The share of `images` the source (0) vs target (1) classifier calls target: its accuracy against all-1 labels."""
    from models.quality import accuracy

    return accuracy(domain, images, torch.ones(len(images), dtype=torch.long), device)


def per_class_accuracy(network, images: torch.Tensor, labels: torch.Tensor, device) -> list[float]:
    """The class classifier's accuracy on each class's images: where a translation loses the class."""
    from models.quality import accuracy

    return [accuracy(network, images[labels == label], labels[labels == label], device) for label in range(len(CLASSES))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    parser.add_argument("--per-class", type=int, default=200, help="source photos per class (default 200: 160 train, 40 held out)")
    parser.add_argument("--target-count", type=int, default=200, help="target-domain photos (default 200)")
    parser.add_argument("--targets", default="snow,winter", help="comma-separated: snow, winter")
    parser.add_argument("--snow-severity", type=int, default=1, help="severity of the snow corruption, 1-5 (default 1; see the docstring)")
    parser.add_argument("--epochs", type=int, default=0, help="translator epochs; 0 = the preset for the size")
    parser.add_argument("--batch-size", type=int, default=0, help="translator batch size; 0 = the preset for the size")
    parser.add_argument("--identity-weight", type=float, default=-1, help="identity loss weight; -1 = the preset's 3 (the paper's: 5)")
    parser.add_argument("--classifier-epochs", type=int, default=8, help="epochs of the smallcnn domain and class classifiers")
    parser.add_argument("--second-judge", default="", help="a second class classifier of another architecture, from scratch (e.g. resnet18), whose label survival is printed too: "
                        "a check that a translator trained with --option semantic_weight=... (a smallcnn's loss) keeps the class for a network it was not trained against "
                        "(useful only where that judge keeps the class on the real shifted images, its last column); empty = none")
    parser.add_argument("--upsample", choices=["", "transposed", "resize"], default="", help="translator up-sampling: transposed or resize; empty = the preset's")
    parser.add_argument("--residual", choices=["", *cyclegan.RESIDUAL_CHOICES], default="", help="translator generators output a change to their input (on: clipped input + change; tanh: tanh(atanh(input) + change)) or the paper's plain image (off); empty = the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grids", default="", help="folder to write cyclegan_<target>.png (held-out source, translation, real shifted) into")
    add_option_argument(parser)
    args = parser.parse_args(argv)
    options = parse_options(parser, args.option)
    torch.set_num_threads(args.threads)

    from models.quality import accuracy, fit_classifier

    device = torch.device(args.device)
    train_x, train_y, held_x, held_y = source_domain(args.per_class, args.size)
    source_train, source_labels, held, held_labels = to_tensor(train_x), torch.as_tensor(train_y), to_tensor(held_x), torch.as_tensor(held_y)
    classes = fit_classifier(source_train, source_labels, len(CLASSES), epochs=args.classifier_epochs, seed=args.seed, device=device, desc="class classifier")
    clean = accuracy(classes, held, held_labels, device)
    judge = fit_classifier(source_train, source_labels, len(CLASSES), epochs=args.classifier_epochs, seed=args.seed, device=device, desc=f"{args.second_judge} classifier", arch=args.second_judge) if args.second_judge else None
    judge_clean = accuracy(judge, held, held_labels, device) if judge else 0.0
    hyper = cyclegan.defaults_for(args.size, args.size) | ({"epochs": args.epochs} if args.epochs else {}) | ({"batch_size": args.batch_size} if args.batch_size else {}) | ({"identity_weight": args.identity_weight} if args.identity_weight >= 0 else {}) | ({"upsample": args.upsample} if args.upsample else {}) | (cyclegan.residual_hyper(args.residual) if args.residual else {}) | options
    print(f"source: {len(source_train)} train + {len(held)} held-out photos of {', '.join(CLASSES)} at {args.size} px; {args.target_count} target photos; "
          f"{args.threads} thread(s), {device}; translator {hyper}; class classifier accuracy on held-out source {clean:.3f}" + (f", {args.second_judge}'s {judge_clean:.3f}" if judge else ""), flush=True)

    rows = []
    for kind in [k.strip() for k in args.targets.split(",") if k.strip()]:
        target = to_tensor(shifted(kind, target_photos(args.target_count, args.size), args.snow_severity, args.seed + 1))
        started = time.perf_counter()
        translator = cyclegan.train(source_train, target, hyper=hyper, seed=args.seed, device=device, progress=True, labels=source_labels)
        train_s = time.perf_counter() - started
        translated = translator.translate(held)
        real_shift = to_tensor(shifted(kind, held_x, args.snow_severity, args.seed + 2))
        domain_images = torch.cat([source_train, target])
        domain_labels = torch.cat([torch.zeros(len(source_train), dtype=torch.long), torch.ones(len(target), dtype=torch.long)])
        domain = fit_classifier(domain_images, domain_labels, 2, epochs=args.classifier_epochs, seed=args.seed, device=device, desc="domain classifier")
        share = called_target(domain, translated, device)
        rows.append({
            "target": kind + (f" (severity {args.snow_severity})" if kind == "snow" else "") + (f", identity {hyper['identity_weight']:g}" if args.identity_weight >= 0 else "") + (f", residual {args.residual}" if args.residual else "") + "".join(f", {name} {value}" for name, value in options.items()), "train_s": train_s, "target_share": share,
            "source_called_target": called_target(domain, held, device),
            "real_shift_called_target": called_target(domain, real_shift, device),
            "label_survival": accuracy(classes, translated, held_labels, device) / clean,
            "real_shift_survival": accuracy(classes, real_shift, held_labels, device) / clean,
            **({"judge_survival": accuracy(judge, translated, held_labels, device) / judge_clean, "judge_real_shift": accuracy(judge, real_shift, held_labels, device) / judge_clean} if judge else {}),
        })
        print(f"[{kind}] trained in {train_s:.0f} s; class classifier accuracy per class ({', '.join(CLASSES)}): "
              + "; ".join(f"{name} {' / '.join(f'{a:.3f}' for a in per_class_accuracy(classes, images, held_labels, device))}"
                          for name, images in (("held-out source", held), ("translated", translated), ("real shifted", real_shift))), flush=True)
        if args.grids:
            write_grid(Path(args.grids) / f"cyclegan_{kind}.png", kind, held_x, held_y, translated, real_shift)

    print(f"\n| target | train s (goal <= {GOALS['train_s']:.0f}) | target share (goal >= {GOALS['target_share']}) | label survival (goal >= {GOALS['label_survival']}) "
          "| real shifted: label survival | held-out source called target | real shifted called target |"
          + (f" {args.second_judge}: label survival | {args.second_judge}: real shifted |" if judge else ""))
    print("|---|--:|--:|--:|--:|--:|--:|" + ("--:|--:|" if judge else ""))
    for row in rows:
        print(f"| {row['target']} | {row['train_s']:.0f} | {row['target_share']:.3f} | {row['label_survival']:.3f} | {row['real_shift_survival']:.3f} "
              f"| {row['source_called_target']:.3f} | {row['real_shift_called_target']:.3f} |" + (f" {row['judge_survival']:.3f} | {row['judge_real_shift']:.3f} |" if judge else ""))
    print()
    for row in rows:
        verdicts = [f"{name} {'goal met' if (row[name] <= goal if name == 'train_s' else row[name] >= goal) else 'NOT met'}" for name, goal in GOALS.items()]
        print(f"{row['target']}: " + "; ".join(verdicts))


def write_grid(path: Path, kind: str, held: np.ndarray, labels: np.ndarray, translated: torch.Tensor, real_shift: torch.Tensor, per_row: int = 6) -> None:
    """Per class: held-out source photos, their translations, and the same photos shifted directly."""
    import matplotlib

    matplotlib.use("Agg")
    from tracking.figures import class_rows_figure

    translated_x, real_x = translated.permute(0, 2, 3, 1).numpy(), real_shift.permute(0, 2, 3, 1).numpy()
    rows, names = [], []
    for label, name in enumerate(CLASSES):
        picked = np.flatnonzero(labels == label)[:per_row]
        rows += [held[picked], translated_x[picked], real_x[picked]]
        names += [f"{name} (real)", f"{name} (cyclegan)", f"{name} ({kind} applied)"]
    figure = class_rows_figure(rows, names, f"cyclegan to {kind}: held-out photos, their translations, and {kind} applied to them")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    small_png(path)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def small_png(path: Path) -> None:
    """The PNG rewritten with a 256-colour palette (a third of the size, for the README)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


if __name__ == "__main__":
    main()
