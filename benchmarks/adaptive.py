"""--seeds auto against a fixed number of seeds: train steps run, wall time, and whether the headlines agree.

    .venv/bin/python benchmarks/adaptive.py     # main's defaults on mnist5k (ResNet18, 3 epochs, vae): hours on 2 CPU cores
    .venv/bin/python benchmarks/adaptive.py --model smallcnn --batch-size 32 --lr 0.003 --ratios 0,0.5,0.8 \
        --corruptions salt_pepper --severities 3                                 # about 8 minutes on 2 CPU cores

Runs `pipelines.main.main` in-process on a fresh, temporary tracking store and
synthmix cache: first the synthesis, once (both studies mix the same synthetic
images, so its time counts for neither; without its quality scores, which no
study reads), a one-cell warm-up study (imports, decoding mnist5k into the
tensor cache: costs the first study would otherwise carry alone), then the
fixed study (--seeds 10) and
the sequential one (--seeds auto --max-seeds 10), each in an MLflow experiment of
its own, so that neither reuses a mix, train or evaluate step of the other.
Prints, per study, the train steps it ran, its wall time, the seeds per cell,
its headline, and whether the two answers agree: on the largest fraction shown
safe, and on the verdict (why, when none is).
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

SMALL = {"epochs": 1, "model": "smallcnn"}  # what a 2-core machine can do in minutes


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: main's, 3)")
    parser.add_argument("--model", default=None, help="classifier (default: main's, resnet18)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: main's, 128)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: main's, 0.001)")
    parser.add_argument("--ratios", default=None, help="synthetic fractions (default: main's, 0,0.5,0.6,0.7,0.8)")
    parser.add_argument("--corruptions", default=None, help="corruptions of the test split (default: main's)")
    parser.add_argument("--severities", default=None, help="their severities (default: main's, 1,2,3,4,5)")
    parser.add_argument("--augments", default=None, help="training arms (default: main's, none)")
    parser.add_argument("--tolerance", type=float, default=None, help="accuracy drop that counts as none (default: main's, 0.01)")
    parser.add_argument("--fixed-seeds", type=int, default=10, help="seeds per cell of the fixed study (default: 10)")
    parser.add_argument("--max-seeds", type=int, default=10, help="--max-seeds of the sequential study (default: 10)")
    return parser.parse_args()


def experiment(name: str) -> str:
    """A fresh experiment that the next study logs to (main reads MLFLOW_EXPERIMENT_ID)."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient().create_experiment(name)
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    return experiment_id


def timed_study(name: str, params: dict) -> dict:
    from mlflow.tracking import MlflowClient

    from pipelines.main import main as study

    experiment_id = experiment(name)
    started = time.perf_counter()
    facts = study(params)
    seconds = time.perf_counter() - started
    runs = MlflowClient().search_runs([experiment_id], "tags.`synthmix.stage` = 'train'", max_results=5000)
    parent = MlflowClient().get_run(facts["run_id"])
    seeds = {key.removeprefix("study/seeds/"): int(value) for key, value in sorted(parent.data.metrics.items()) if key.startswith("study/seeds/")}
    return {"name": name, "seconds": seconds, "trains": len(runs), "facts": facts, "seeds": seeds}


def synthesize_once(params: dict) -> tuple[str, float]:
    from pipelines import main as main_stage
    from pipelines import synthesize
    from pipelines._cli import passed_on

    experiment("synthesis")
    started = time.perf_counter()
    result = synthesize.synthesize(passed_on(main_stage.PARAMS, params, synthesize.PARAMS, seed=0, quality=False))
    seconds = time.perf_counter() - started
    experiment("warm-up")
    main_stage.main({**params, "synthetic_run": result.run_id, "ratios": "0", "seeds": "1", "augments": "none"})
    return result.run_id, seconds


def agreement(first: dict, second: dict) -> list[str]:
    """Whether the two answers name the same largest safe fraction, and give the same verdict (why, when none is safe)."""
    one, two = first["facts"].get("answer", {}), second["facts"].get("answer", {})
    lines = []
    for key, what in (("max_ratio", "on the largest fraction shown safe"), ("verdict", "on the verdict")):
        same = one.get(key) == two.get(key)
        lines.append(f"the two headlines agree {what}: {'yes' if same else 'no'} ({one.get(key)} / {two.get(key)})")
    return lines


def report(params: dict, defaults: dict, synthesis_seconds: float, studies: list[dict]) -> None:
    import torch

    shown = ("model", "epochs", "batch_size", "lr", "ratios", "corruptions", "severities", "augments", "tolerance")
    changed = {key: value for key, value in params.items() if key in shown and value != defaults[key]}
    print(f"\nmnist5k: {params['model']}, {params['epochs']} epoch(s), batch {params['batch_size']}, lr {params['lr']}, ratios {params['ratios']}, arms {params['augments']}, corruptions "
          f"{params['corruptions'] or 'none'} at severities {params['severities']}, tolerance {params['tolerance']}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    if changed:
        print(f"NOT main's defaults: {', '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in changed.items())} "
              f"(main's defaults: {defaults['model']}, {defaults['epochs']} epochs, ratios {defaults['ratios']}), to fit a 2-core machine.")
    print(f"synthesis ({params['generator']}, once, shared by both, no quality scores): {synthesis_seconds:.0f} s; then a one-cell warm-up study\n")
    print(f"{'study':<44}{'train steps':>12}{'wall (s)':>10}{'s / step':>10}   seeds per cell")
    for study in studies:
        cells = ", ".join(f"{cell} {count}" for cell, count in study["seeds"].items())
        print(f"{study['name']:<44}{study['trains']:>12}{study['seconds']:>10.0f}{study['seconds'] / max(study['trains'], 1):>10.1f}   {cells}")
    fixed, auto = studies
    print(f"\n--seeds auto ran {auto['trains']} of the fixed design's {fixed['trains']} train steps ({auto['trains'] / fixed['trains']:.0%}) "
          f"in {auto['seconds'] / fixed['seconds']:.0%} of its wall time.")
    for study in studies:
        print(f"\n{study['name']}: {study['facts']['headline']}")
    print("\n" + "\n".join(agreement(fixed, auto)))


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory() as folder:
        os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "SYNTHMIX_CACHE": f"{folder}/cache"})
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
        os.chdir(folder)
        from pipelines.main import DEFAULTS

        chosen = {k: v for k, v in vars(args).items() if v is not None and k not in ("fixed_seeds", "max_seeds")}  # argparse names are main's
        params = {**DEFAULTS, **chosen, "saliency": 0, "registered_model": "none"}
        synthetic_run, synthesis_seconds = synthesize_once(params)
        params["synthetic_run"] = synthetic_run
        studies = [
            timed_study(f"fixed: --seeds {args.fixed_seeds}", {**params, "seeds": str(args.fixed_seeds)}),
            timed_study(f"sequential: --seeds auto --max-seeds {args.max_seeds}", {**params, "seeds": "auto", "max_seeds": args.max_seeds}),
        ]
        report(params, DEFAULTS, synthesis_seconds, studies)


if __name__ == "__main__":
    main()
