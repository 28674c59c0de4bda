"""Does training with salt-and-pepper noise make a classifier robust to it?

    .venv/bin/python benchmarks/augment_robustness.py [--model resnet18] [--seeds 0,1,2] [--augment salt_pepper:3:0.5]

For each seed, the train stage fits the model on mnist5k twice, clean and
with `--augment` (each training image corrupted on the fly with the given
probability), and the evaluate stage scores both on the real test split,
clean and with salt_pepper at severities 1-5. The table gives mean ± sample
standard deviation over the seeds. Runs go to a temporary tracking store.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--augment", default="salt_pepper:3:0.5")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.chdir(folder)
        import mlflow

        from pipelines.evaluate import evaluate
        from pipelines.train import train

        mlflow.set_experiment("benchmark-augment-robustness")
        results: dict[str, list[dict]] = {"clean": [], "augmented": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, augment in (("clean", ""), ("augmented", args.augment)):
                trained = train({"data": "mnist5k", "model": args.model, "epochs": args.epochs, "seed": seed, "augment": augment})
                results[name].append(evaluate({"train_run": trained.run_id, "corruptions": "salt_pepper", "severities": "1,2,3,4,5", "seed": seed, "misclassified": 0}).metrics)

    columns = ["test/acc", *[f"robust/acc/salt_pepper/{s}" for s in range(1, 6)], "robust/ce/salt_pepper"]
    print(f"\n{args.model}, {args.epochs} epochs on mnist5k, seeds {args.seeds}; mean ± std over seeds")
    print(f"{'training':<34}" + "".join(f"{c.replace('robust/acc/salt_pepper/', 'sp sev ').replace('robust/ce/salt_pepper', 'sp error'):>16}" for c in columns))
    for name, label in (("clean", "clean"), ("augmented", f"augment={args.augment}")):
        cells = []
        for column in columns:
            values = [r[column] for r in results[name]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f}±{spread:.3f}")
        print(f"{label:<34}" + "".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
