"""main: the study on one dataset, as one parent run with a nested run per step.

    python -m pipelines main --data mnist5k --model resnet18 --epochs 3

For now: train a classifier, then evaluate it on the real test split (clean,
and corrupted where --corruptions is given). A finished step with the same
parameters, inputs and code is reused rather than run again, so rerunning the
study after a crash only does what is missing.
"""
from __future__ import annotations

import click

from pipelines._cli import add_options, data_options, device_option, handle_errors


def main(params: dict) -> dict:
    import mlflow

    from pipelines.evaluate import evaluate
    from pipelines.train import train
    from tracking.runs import quiet_mlflow, stage_run

    quiet_mlflow()
    name = f"study-{params['model']}-{params['data'].rstrip('/').split('/')[-1]}-s{params['seed']}"
    with stage_run("main", name, params) as parent:
        train_params = {key: params[key] for key in ("data", "model", "pretrained", "epochs", "batch_size", "lr", "seed", "device", "val_fraction", "test_fraction", "split_seed", "skip_bad_images", "max_pixels")}
        trained = train(train_params, nested=True, reuse_finished=True)
        evaluated = evaluate(
            {"train_run": trained["run_id"], "device": params["device"], "corruptions": params["corruptions"], "severities": params["severities"], "saliency": params["saliency"], "seed": params["seed"]},
            nested=True,
            reuse_finished=True,
        )
        summary = {f"best/{k}": v for k, v in evaluated["metrics"].items() if k.startswith(("test/", "robust/mce"))}
        mlflow.log_metrics(summary)
        mlflow.set_tags({"synthmix.train_run": trained["run_id"], "synthmix.evaluate_run": evaluated["run_id"]})
        click.echo(f"study done: test/acc {evaluated['metrics']['test/acc']:.4f} (train run {trained['run_id']}, evaluate run {evaluated['run_id']}, parent {parent.info.run_id})")
        return {"run_id": parent.info.run_id, "train": trained, "evaluate": evaluated}


@click.command("main", help=__doc__.split("\n\n")[0])
@add_options(data_options())
@click.option("--model", type=click.Choice(["resnet18", "resnet50", "smallcnn"]), default="resnet18", show_default=True, help="Classifier architecture.")
@click.option("--pretrained", type=bool, default=False, show_default=True, help="true: start from ImageNet weights (must be in the torch cache when offline).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Images per optimiser step.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="Peak learning rate (cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of training and corruption.")
@device_option
@click.option("--corruptions", default="", help="Corruption kinds to evaluate on (comma-separated) or 'all'; empty: clean test set only.")
@click.option("--severities", default="1,2,3,4,5", show_default=True, help="Severities (1-5) of each corruption.")
@click.option("--saliency", type=click.IntRange(0), default=8, show_default=True, help="Grad-CAM panels of N correct and N incorrect test predictions; 0 skips.")
@handle_errors
def command(**params):
    main(params)
