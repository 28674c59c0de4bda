"""Real-vs-synthetic detection on mnist5k: each generator's own AUC and the transfer matrix,
with and without the blur+JPEG augmentation of Wang et al. (CVPR 2020).

    .venv/bin/python benchmarks/detect.py [--model resnet50] [--epochs 3] [--per-class 100]

What runs (unless --synthetic-runs names earlier synthesis runs): the synthesize stage trains each generator (vae, dcgan, ddpm) with
its defaults on mnist5k's 4,000 real train digits and writes --per-class
images per class (quality scores off). Then the detect stage, once without
augmentation and once with `pipelines.detect.WANG_RECIPE` (defocus blur and
JPEG, each on half the batches), trains the pooled detector and one detector
per generator (--model, --epochs) and scores every detector on every
generator's held-out images against the real test digits. Printed: per arm,
the AUC matrix (rows: trained on, columns: tested on; the diagonal is each
detector on its own generator), the mean off-diagonal AUC
(detect/transfer_auc) and the pooled detector's AUC per generator.

Everything is tracked in a temporary sqlite store (pass --tracking-uri to keep
the runs); nothing is added to ./mlflow.db.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", default="vae,dcgan,ddpm", help="comma-separated trained generators")
    parser.add_argument("--per-class", type=int, default=100, help="synthetic images per class and generator")
    parser.add_argument("--model", default="resnet50", help="detector architecture (any torchvision model or smallcnn)")
    parser.add_argument("--epochs", type=int, default=3, help="detector training epochs")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI to keep the runs in; default: a temporary sqlite store")
    parser.add_argument("--synthetic-runs", default="", help="comma-separated synthesize runs (in --tracking-uri) to use instead of synthesizing, in --generators order")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="synthmix-detect-bench-")
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri or f"sqlite:///{folder}/mlflow.db"
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "detect-benchmark")

    import mlflow
    import pandas as pd

    from pipelines.detect import WANG_RECIPE, detect
    from pipelines.synthesize import synthesize

    runs, synth_seconds = [run for run in args.synthetic_runs.split(",") if run], {}
    for generator in args.generators.split(",") if not runs else []:
        started = time.perf_counter()
        result = synthesize({"data": "mnist5k", "generator": generator, "per_class": args.per_class, "quality": False, "seed": 0}, reuse=True)
        synth_seconds[generator] = time.perf_counter() - started
        runs.append(result.run_id)
        print(f"synthesized {generator}: {args.per_class} per class in {synth_seconds[generator]:.0f} s (run {result.run_id})", flush=True)

    arms = {"none": "", "blur+JPEG": WANG_RECIPE}
    outputs = {}
    for arm, augment in arms.items():
        started = time.perf_counter()
        result = detect({"data": "mnist5k", "synthetic_runs": ",".join(runs), "model": args.model, "epochs": args.epochs, "augment": augment, "saliency": 0})
        seconds = time.perf_counter() - started
        matrix = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="transfer/auc.csv"), index_col=0)
        outputs[arm] = (matrix, result.metrics, seconds)

    metrics = next(iter(outputs.values()))[1]
    print()
    print(f"mnist5k, {args.per_class} synthetic images per class and generator (generators' default settings), "
          f"detector {args.model}, {args.epochs} epochs, seed 0; held-out test of the pooled detector: {metrics['data/test_real']:.0f} real "
          f"and {metrics['data/test_synthetic']:.0f} synthetic digits (balanced per class); a matrix cell: one generator's share of them against the real ones")
    print()
    for arm, (matrix, metrics, seconds) in outputs.items():
        print(f"augment {arm} ({arms[arm] or 'no augmentation'}); {seconds:.0f} s")
        print()
        print("| trained on \\ tested on | " + " | ".join(matrix.columns) + " |")
        print("|---|" + "---:|" * len(matrix.columns))
        for name, row in matrix.iterrows():
            print(f"| {name} | " + " | ".join(f"**{v:.3f}**" if column == name else f"{v:.3f}" for column, v in row.items()) + " |")
        pooled = ", ".join(f"{g} {metrics[f'test/auc/{g}']:.3f}" for g in matrix.columns)
        print()
        print(f"detect/transfer_auc (mean off-diagonal) {metrics['detect/transfer_auc']:.3f}; pooled detector: test/auc {metrics['test/auc']:.3f} "
              f"(per generator: {pooled}), test/acc {metrics['test/acc']:.3f}")
        print()
    print("| arm | own-generator AUC (mean of diagonal) | transfer AUC (mean off-diagonal) | pooled test/auc |")
    print("|---|---:|---:|---:|")
    for arm, (matrix, metrics, _) in outputs.items():
        diagonal = sum(matrix.iloc[i, i] for i in range(len(matrix))) / len(matrix)
        print(f"| {arm} | {diagonal:.3f} | {metrics['detect/transfer_auc']:.3f} | {metrics['test/auc']:.3f} |")


if __name__ == "__main__":
    main()
