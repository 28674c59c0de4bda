"""train: fit a torchvision classifier on a dataset and log it as an MLflow model.

    python -m pipelines train --data mnist5k --model resnet18 --epochs 3

Per epoch it logs train/loss, train/acc, val/loss, val/acc and perf/imgs_per_s
(step = epoch) and overwrites the checkpoint `checkpoints/last.pt` (model,
optimiser, scheduler, epoch, RNG states, config). A killed run is continued
from that checkpoint by `--resume-run <id>`, or by simply rerunning the same
command. At the end: the validation confusion matrix (PNG + JSON) and the
model under `model/`, a pyfunc that predicts from encoded image bytes.

Sweeps call `train(params, on_epoch=...)` in-process; `on_epoch(epoch, metrics)`
may raise (e.g. optuna.TrialPruned) to stop early.
"""
from __future__ import annotations

import click

from pipelines._cli import DATA_DEFAULTS, add_options, data_kwargs, data_options, device_option, handle_errors, optional

DEFAULTS = {
    "data": "mnist5k",
    "dataset_run": "",
    "model": "resnet18",
    "pretrained": False,
    "weights": "",
    "epochs": 3,
    "batch_size": 128,
    "lr": 1e-3,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "image_size": 0,
    "channels": 0,
    "hflip": False,
    "augment": "",
    "seed": 0,
    "device": "auto",
    "workers": 2,
    "resume_run": "",
    **DATA_DEFAULTS,
}
# parameters that do not change what is computed: left out of the config hash
NOT_HASHED = ("device", "workers", "resume_run")
CHECKPOINT = "checkpoints/last.pt"


def load_training_manifest(params: dict):
    """The manifest to train on: a dataset run's logged manifest, or `data` scanned afresh."""
    from imaging.datasets import load_dataset
    from imaging.errors import InputError
    from imaging.manifest import Manifest

    if optional(params.get("dataset_run")):
        import mlflow

        from tracking.runs import get_run

        run = get_run(params["dataset_run"], "dataset_run")
        try:
            folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="dataset")
        except Exception as error:
            raise InputError(f"dataset_run {run.info.run_id} has no dataset/ artifact; pass a mix or corrupt run, or use --data.") from error
        return Manifest.load(folder), 0
    manifest, report = load_dataset(params["data"], **data_kwargs(params))
    return manifest, report.skipped


def native_format(manifest, sample: int = 64) -> tuple[int, int]:
    """(channels, size) of the train images: colour if any sampled image is, the most common side."""
    from collections import Counter

    from imaging.images import open_image, to_array

    rows = manifest.split("train")
    real = rows.frame["source"] == "real"
    if real.any():  # a mix is shaped like its real images, whatever the synthetic ones are
        rows = type(rows)(rows.frame[real].head(sample).copy(), rows.root, rows.name, rows.classes)
    paths = rows.local_paths()[:sample]
    channels, sides = 1, Counter()
    for path in paths:
        array = to_array(open_image(path.read_bytes()))
        channels = max(channels, array.shape[2])
        sides[max(array.shape[:2])] += 1
    return channels, sides.most_common(1)[0][0]


def _resume_target(params: dict, hashed: dict):
    """The run to continue: --resume-run, else an unfinished run with the same config and a checkpoint."""
    from imaging.errors import InputError
    from tracking.runs import TAG_STAGE, find_runs, get_run, has_artifact

    if optional(params["resume_run"]):
        run = get_run(params["resume_run"], "resume_run")
        if run.data.tags.get(TAG_STAGE) != "train":
            raise InputError(f"resume_run {run.info.run_id} is a {run.data.tags.get(TAG_STAGE, 'non-synthmix')} run, not a train run; pass the id of a train run.")
        if not has_artifact(run.info.run_id, CHECKPOINT):
            raise InputError(f"resume_run {run.info.run_id} has no {CHECKPOINT} (it stopped before its first epoch ended); start a new run instead.")
        return run
    for run in find_runs("train", hashed, ("RUNNING", "FAILED", "KILLED")):
        if has_artifact(run.info.run_id, CHECKPOINT):
            return run
    return None


def train(params: dict, *, on_epoch=None, nested: bool = False, run_name: str | None = None, reuse_finished: bool = False) -> dict:
    """Train with `params` (DEFAULTS filled in); returns the run id and final metrics.

    `reuse_finished`: return a finished run with the same config hash instead of training again.
    """
    import random
    import tempfile
    from pathlib import Path

    import mlflow
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from imaging.batches import epoch_generator, make_batches
    from imaging.errors import InputError
    from models.classifiers import build_classifier, normalisation
    from models.serving import ClassifierSpec, log_classifier, save_checkpoint
    from models.training import make_optimizer, predict, train_one_epoch
    from pipelines._cli import resolve_device
    from tracking.figures import confusion_matrix_figure, confusion_matrix_json, log_figure
    from tracking.runs import quiet_mlflow, stage_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    resume = None
    if optional(params["resume_run"]):
        # the checkpoint's own config wins: a resumed run computes what it started to compute
        resume = _resume_target(params, {})
        checkpoint_file = mlflow.artifacts.download_artifacts(run_id=resume.info.run_id, artifact_path=CHECKPOINT)
        stored = torch.load(checkpoint_file, map_location="cpu", weights_only=False)["params"]
        params = {**stored, "device": params["device"], "workers": params["workers"], "resume_run": params["resume_run"]}
    if params["epochs"] < 1 or params["batch_size"] < 1 or params["lr"] <= 0:
        raise InputError(f"epochs ({params['epochs']}) and batch_size ({params['batch_size']}) must be at least 1 and lr ({params['lr']}) above 0.")
    device = resolve_device(params["device"])
    augment = None
    if params["augment"]:
        from imaging.corruptions import apply_augment, parse_augment

        specs = parse_augment(params["augment"])

        def augment(images, labels, generator):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            return apply_augment(images, specs, generator_seed=seed, labels=labels)

    manifest, skipped = load_training_manifest(params)
    channels, size = native_format(manifest)
    params["channels"] = params["channels"] or channels
    params["image_size"] = params["image_size"] or size
    if params["channels"] not in (1, 3):
        raise InputError(f"--channels {params['channels']} is not supported; use 1 (grey), 3 (RGB) or 0 (as the images are).")
    hashed = {k: v for k, v in params.items() if k not in NOT_HASHED}
    hashed["dataset_digest"] = manifest.digest
    if reuse_finished:
        from tracking.runs import reuse

        done = reuse("train", hashed)
        if done is not None:
            return done
    if resume is None:
        resume = _resume_target(params, hashed)

    train_rows, val_rows = manifest.split("train"), manifest.split("val")
    if len(val_rows) == 0:
        raise InputError(f"dataset {manifest.name} has no val split; give the folder a val/ or a val_fraction above 0.")
    mean, std = normalisation(params["channels"])
    spec = ClassifierSpec(params["model"], list(manifest.classes), params["channels"], params["image_size"], mean, std)
    torch.manual_seed(params["seed"])
    network = build_classifier(params["model"], len(spec.classes), spec.in_channels, params["pretrained"], optional(params["weights"])).to(device)
    optimizer = make_optimizer(params["optimizer"], network.parameters(), params["lr"], params["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params["epochs"])
    train_batches = make_batches(train_rows, spec.in_channels, spec.image_size, params["batch_size"], device, params["workers"])
    val_batches = make_batches(val_rows, spec.in_channels, spec.image_size, 512, device, params["workers"])

    name = run_name or f"train-{params['model']}-{manifest.name}-s{params['seed']}"
    tags = {"synthmix.model": params["model"], "synthmix.dataset_digest": manifest.digest}
    logged = {k: v for k, v in params.items() if k != "resume_run"}
    with stage_run("train", name, logged, tags, run_id=resume.info.run_id if resume else None, nested=nested, hashed=hashed) as run:
        start_epoch = 0
        if resume is not None:
            checkpoint_file = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=CHECKPOINT)
            state = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
            network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            start_epoch = state["epoch"] + 1
            print(f"[synthmix] continuing from the checkpoint of epoch {state['epoch'] + 1}/{params['epochs']}", flush=True)
        else:
            mlflow.log_input(train_rows.mlflow_dataset(), context="train")
            mlflow.log_input(val_rows.mlflow_dataset(), context="val")
            with tempfile.TemporaryDirectory() as folder:
                manifest.save(Path(folder))
                mlflow.log_artifacts(folder, "dataset")
            mlflow.log_metrics({"data/train_images": len(train_rows), "data/val_images": len(val_rows), "data/skipped_images": skipped})

        metrics: dict[str, float] = {}
        val_logits = val_labels = None
        epochs = tqdm(range(start_epoch, params["epochs"]), desc=name, unit="epoch", initial=start_epoch, total=params["epochs"])
        for epoch in epochs:
            torch.manual_seed(params["seed"] * 1_000_003 + epoch)  # stochastic layers replay on resume
            fit = train_one_epoch(network, train_batches, optimizer, mean, std, generator=epoch_generator(params["seed"], epoch), hflip=params["hflip"], augment=augment, desc=f"epoch {epoch + 1}")
            scheduler.step()
            val_logits, val_labels = predict(network, val_batches, mean, std, desc="val")
            val_loss = float(torch.nn.functional.cross_entropy(val_logits, val_labels))
            val_acc = float((val_logits.argmax(1) == val_labels).float().mean())
            metrics = {"train/loss": fit["loss"], "train/acc": fit["acc"], "val/loss": val_loss, "val/acc": val_acc, "perf/imgs_per_s": fit["imgs_per_s"]}
            mlflow.log_metrics(metrics, step=epoch)
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "last.pt"
                rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
                save_checkpoint(path, network, spec, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch, rng=rng, params=params)
                mlflow.log_artifact(str(path), "checkpoints")
            epochs.set_postfix(loss=f"{fit['loss']:.3f}", val_acc=f"{val_acc:.3f}")
            print(f"[synthmix] epoch {epoch + 1}/{params['epochs']}: train/loss {fit['loss']:.4f} val/acc {val_acc:.4f}; checkpoint saved", flush=True)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        if val_logits is None:  # every epoch was already done before a resume
            val_logits, val_labels = predict(network, val_batches, mean, std, desc="val")
            metrics = {k: v[-1].value for k, v in _history(run.info.run_id).items()}
        from sklearn.metrics import confusion_matrix

        matrix = confusion_matrix(val_labels.numpy(), val_logits.argmax(1).numpy(), labels=list(range(len(spec.classes))))
        log_figure(confusion_matrix_figure(matrix, spec.classes, f"{name}: validation"), "confusion_matrix/val.png")
        mlflow.log_text(confusion_matrix_json(matrix, spec.classes), "confusion_matrix/val.json")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt"
            save_checkpoint(path, network.cpu(), spec)
            example = train_rows.local_paths()[0].read_bytes()
            log_classifier(path, spec, example)
        return {"run_id": run.info.run_id, "metrics": metrics, "spec": spec}


def _history(run_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    keys = ("train/loss", "train/acc", "val/loss", "val/acc", "perf/imgs_per_s")
    return {key: client.get_metric_history(run_id, key) for key in keys}


@click.command("train", help=__doc__.split("\n\n")[0])
@add_options(data_options())
@click.option("--dataset-run", default="", help="Train on the manifest logged by this run (a mix or corrupt run) instead of --data.")
@click.option("--model", type=click.Choice(["resnet18", "resnet50", "smallcnn"]), default="resnet18", show_default=True, help="Architecture: torchvision ResNet18/50, or a ~100k-parameter CNN for images up to 64 px.")
@click.option("--pretrained", type=bool, default=False, show_default=True, help="true: start from torchvision's ImageNet weights (from the torch cache; downloaded only when online).")
@click.option("--weights", default="", help="Start from this local state-dict file (.pt) instead; mismatched heads are re-initialised.")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Passes over the training split.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Images per optimiser step.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="Peak learning rate; decays to 0 on a cosine schedule over the epochs.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True, help="Optimiser (sgd uses Nesterov momentum 0.9).")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True, help="L2 weight decay.")
@click.option("--image-size", type=click.IntRange(0), default=0, show_default=True, help="Side in px the images are resized to; 0 keeps the dataset's own size.")
@click.option("--channels", type=click.IntRange(0, 3), default=0, show_default=True, help="Input channels: 1 grey, 3 RGB, 0 as the images are.")
@click.option("--hflip", type=bool, default=False, show_default=True, help="true: flip half of each batch left-right (not for digits or text).")
@click.option("--augment", default="", help="Corrupt training batches on the fly: kind:severity:probability[,...], e.g. salt_pepper:3:0.5.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batch order and augmentation.")
@device_option
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True, help="DataLoader decode workers for images over 64 px (smaller ones are decoded once and cached).")
@click.option("--resume-run", default="", help="Continue this train run from its last checkpoint (a rerun of a killed run's command resumes it by itself).")
@handle_errors
def command(**params):
    result = train(params)
    click.echo(f"val/acc {result['metrics'].get('val/acc', float('nan')):.4f}  run {result['run_id']}")
