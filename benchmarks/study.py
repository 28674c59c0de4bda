"""The default study, timed: wall time per step kind and the study's overhead.

    .venv/bin/python benchmarks/study.py                 # the default study on mnist5k, as `make demo` runs it
    .venv/bin/python benchmarks/study.py --epochs 1 --seeds 2 --ratios 0,0.5

Runs `pipelines.main.main` in-process on a fresh, temporary tracking store and
synthmix cache (so nothing is reused: mnist5k is written, scanned and decoded
from scratch, as on a fresh clone), with timers around the compute loops:

  training    models.training.train_one_epoch (every epoch of every train step)
  inference   models.training.predict outside training epochs (val passes,
              test passes, features for FID)
  corruption  imaging.corruptions.corrupt_torch (corrupting the test split)
  saliency    models.saliency.saliency_maps (Grad-CAM panels)
  generator   models.generators.train_generator (synthesis)

A timed call inside another (an epoch of a quality classifier inside a
generator's scoring) counts once, for the outer one. Overhead is the study's
wall time outside all of them: MLflow runs, params, metrics and artifacts,
dataset scans and manifests, figures, the report, model logging, imports.
Parts of it are timed the same way and listed under the overhead: dataset
loading (scans, logged manifests), decoding images into the tensor cache,
drawing and logging figures, logging the pyfunc model, writing synthetic
images. The per-stage seconds are what the study logs itself
(perf/seconds/<stage>).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")

SPENT: dict[str, float] = {}  # compute loops
PARTS: dict[str, float] = {}  # parts of the overhead
_depth = {"compute": 0, "parts": 0}


def timed(kind: str, function, totals: dict = SPENT, group: str = "compute"):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if _depth[group]:
            return function(*args, **kwargs)
        _depth[group] += 1
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[kind] = totals.get(kind, 0.0) + time.perf_counter() - started
            _depth[group] -= 1

    return wrapper


def instrument() -> None:
    """Wrap the compute loops before any stage imports them."""
    import imaging.corruptions
    import models.generators
    import models.saliency
    import models.training

    models.training.train_one_epoch = timed("training", models.training.train_one_epoch)
    models.training.predict = timed("inference", models.training.predict)
    imaging.corruptions.corrupt_torch = timed("corruption", imaging.corruptions.corrupt_torch)
    models.saliency.saliency_maps = timed("saliency", models.saliency.saliency_maps)
    models.generators.train_generator = timed("generator", models.generators.train_generator)

    import imaging.batches
    import models.serving
    import tracking.figures
    import tracking.lineage

    for module, name, kind in (
        (tracking.lineage, "load_manifest", "load datasets"), (tracking.lineage, "log_dataset", "log datasets"),
        (imaging.batches, "cached_tensors", "decode images"), (tracking.figures, "log_figure", "draw figures"),
        (models.serving, "log_classifier", "log models"), (models.serving, "load_classifier", "load models"),
    ):
        setattr(module, name, timed(kind, getattr(module, name), PARTS, "parts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: main's)")
    parser.add_argument("--seeds", default=None, help="seeds (default: main's)")
    parser.add_argument("--ratios", default=None, help="synthetic fractions (default: main's)")
    parser.add_argument("--model", default=None, help="classifier (default: main's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "SYNTHMIX_CACHE": f"{folder}/cache"})
        os.chdir(folder)
        instrument()
        import torch
        from mlflow.tracking import MlflowClient

        from pipelines.main import DEFAULTS, main as study

        params = {**DEFAULTS, **{k: v for k, v in vars(args).items() if v is not None}}
        started = time.perf_counter()
        facts = study(params)
        total = time.perf_counter() - started
        run = MlflowClient().get_run(facts["run_id"])
        artifacts = sum(p.stat().st_size for p in Path(folder, "mlruns").rglob("*") if p.is_file())

    print(f"\nstudy: {params['model']}, {params['epochs']} epoch(s), ratios {params['ratios']}, seeds {params['seeds']}, "
          f"augments {params['augments']}, corruptions {params['corruptions']}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    print(f"headline: {facts['headline']}\n")
    stages = {k.removeprefix("perf/seconds/"): v for k, v in run.data.metrics.items() if k.startswith("perf/seconds/")}
    print(f"{'step kind':<14}{'seconds':>10}{'share':>8}")
    for stage, seconds in sorted(stages.items(), key=lambda item: -item[1]):
        print(f"{stage:<14}{seconds:>10.1f}{seconds / total:>8.1%}")
    print(f"{'study (wall)':<14}{total:>10.1f}{1:>8.1%}")
    compute = sum(SPENT.values())
    print(f"\n{'compute loop':<14}{'seconds':>10}{'share':>8}")
    for kind, seconds in sorted(SPENT.items(), key=lambda item: -item[1]):
        print(f"{kind:<14}{seconds:>10.1f}{seconds / total:>8.1%}")
    print(f"{'overhead':<14}{total - compute:>10.1f}{(total - compute) / total:>8.1%}   (everything outside the loops above), of which:")
    for kind, seconds in sorted(PARTS.items(), key=lambda item: -item[1]):
        print(f"  {kind:<12}{seconds:>10.1f}{seconds / total:>8.1%}")
    print(f"\nartifacts written: {artifacts / 2**20:.0f} MiB under mlruns/")


if __name__ == "__main__":
    main()
