"""Pruning: the same sweep with and without the median pruner.

    .venv/bin/python benchmarks/pruning.py [--trials 20] [--epochs 6] [--model smallcnn]

Both sweeps run on mnist5k with the default search space (synthetic ratio
0-0.9 drawn from one VAE synthesis both share, corruption kind, severity and
probability, lr log-uniform), the same sampler seed and the same training
preset (--model, --epochs, batch 128, CPU). Each has its own experiment and
Optuna study in a temporary store, so neither reuses the other's training.
Printed per sweep: finished trials (complete / pruned), epochs actually
trained (the epochs each trial reported before it ended), wall time of the
sweep (the shared synthesis excluded), and the best val/acc.
Goal: pruning trains >= 40% fewer epochs, with the best val/acc within 1 point.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per sweep (default 20)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial unless pruned (default 6)")
    parser.add_argument("--model", default="smallcnn", help="classifier (default smallcnn)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="synthmix-pruning-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)

    import mlflow
    import optuna

    from pipelines.synthesize import synthesize
    from pipelines.sweep import sweep

    mlflow.set_experiment("pruning-synthesis")
    made = synthesize({"data": "mnist5k", "generator": "vae", "seed": 0, "device": "cpu"})
    storage = f"sqlite:///{folder / 'optuna.db'}"
    rows = []
    for pruner in ("none", "median"):
        mlflow.set_experiment(f"pruning-{pruner}")
        started = time.perf_counter()
        sweep({"data": "mnist5k", "synthetic_run": made.run_id, "model": args.model, "epochs": args.epochs, "batch_size": 128, "device": "cpu",
               "n_trials": args.trials, "storage": storage, "study": f"pruning-{pruner}", "pruner": pruner, "seed": 0})
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name=f"pruning-{pruner}", storage=storage)
        trials = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        rows.append({
            "pruner": pruner, "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "epochs": sum(len(t.intermediate_values) for t in trials), "wall": wall, "best": study.best_value,
        })
    print(f"\n{args.trials}-trial sweep on mnist5k, {args.model}, up to {args.epochs} epochs per trial, default space, sampler seed 0, CPU ({os.cpu_count()} cores)\n")
    print("| pruner | trials complete / pruned | epochs trained | wall time (s) | best val/acc |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['pruner']} | {row['complete']} / {row['pruned']} | {row['epochs']} | {row['wall']:.0f} | {row['best']:.4f} |")
    none, median = rows
    saved = 1 - median["epochs"] / none["epochs"]
    gap = (none["best"] - median["best"]) * 100
    print(f"\nthe median pruner trains {saved:.0%} fewer epochs; its best val/acc is {gap:+.2f} points below (negative: above) the unpruned sweep's")
    print(f"goal (>= 40% fewer epochs, best within 1 point): {'met' if saved >= 0.4 and gap <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
