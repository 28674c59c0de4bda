"""train: fit a torchvision classifier on a dataset and log it as an MLflow model.

    python -m pipelines train --data mnist5k --model resnet18 --epochs 3

Per epoch it logs train/loss, train/acc, val/loss, val/acc and perf/imgs_per_s
(step = epoch). At an epoch end at least --checkpoint-every seconds after the
last one it overwrites the resumable checkpoint `checkpoints/last.pt` (model,
optimiser, scheduler, epoch, RNG states, config). A killed run is continued
from that checkpoint by `--resume-run <id>`, or by simply rerunning the same
command. At the end: the validation confusion matrix (PNG + JSON) and the
model under `model/`, a pyfunc that predicts from encoded image bytes and whose
weights are the run's one checkpoint (checkpoints/ is dropped unless
--keep-checkpoint true).

The study and sweeps call `train(params, reuse=True, on_epoch=...)` in-process;
`on_epoch(epoch, metrics)` may raise optuna.TrialPruned to stop early: the run
then ends KILLED with the tag synthmix.pruned=true and is never resumed.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from pipelines._cli import DEVICE, TABLE, corruption_table, data_params, defaults, option, optional, stage_command

PARAMS = [
    *data_params(),
    option("dataset_run", "", "Train on the manifest logged by this run (a mix or corrupt run) instead of --data."),
    option("model", "resnet18", "Architecture: any torchvision classification model by name (resnet18, resnet50, efficientnet_b0, vit_b_16, ...; grey images are repeated to RGB and images too small for it are resized inside the network), or smallcnn, a ~100k-parameter CNN for images up to 64 px."),
    option("pretrained", False, "true: start from torchvision's ImageNet weights (from the torch cache; downloaded only when online).", bool),
    option("weights", "", "Start from this local state-dict file (.pt) instead; mismatched heads are re-initialised."),
    option("epochs", 3, "Passes over the training split.", click.IntRange(1)),
    option("batch_size", 128, "Images per optimiser step.", click.IntRange(1)),
    option("lr", 1e-3, "Peak learning rate; decays to 0 on a cosine schedule over the epochs.", click.FloatRange(0, min_open=True)),
    option("optimizer", "adam", "Optimiser (sgd uses Nesterov momentum 0.9).", click.Choice(["adam", "adamw", "sgd"])),
    option("weight_decay", 0.0, "L2 weight decay.", click.FloatRange(0)),
    option("image_size", 0, "Side in px the images are resized to; 0 keeps the dataset's own size.", click.IntRange(0)),
    option("channels", 0, "Input channels: 1 grey, 3 RGB, 0 as the images are.", click.IntRange(0, 3)),
    option("hflip", False, "true: flip half of each batch left-right (not for digits or text).", bool),
    option("augment", "", "Corrupt training batches on the fly: kind:severity:probability[,...], e.g. salt_pepper:3:0.5."),
    option("val_corruption", "", "Also score a corrupted copy of the val split every epoch as val_robust/acc: kind:severity, e.g. salt_pepper:3 (images up to 64 px)."),
    option("seed", 0, "Seed of initialisation, batch order and augmentation.", int),
    TABLE,
    DEVICE,
    option("workers", 2, "DataLoader decode workers for images over 64 px (smaller ones are decoded once and cached).", click.IntRange(0)),
    option("resume_run", "", "Continue this train run from its last checkpoint (a rerun of a killed run's command resumes it by itself)."),
    option("checkpoint_every", 60.0, "Seconds between resumable checkpoints (model, optimiser, RNG), written at epoch ends; 0 = after every epoch.", click.FloatRange(0)),
    option("keep_checkpoint", False, "true: keep checkpoints/last.pt (with the optimiser state) after the run finishes; false: the logged model's weights are the run's one checkpoint.", bool),
]
DEFAULTS = defaults(PARAMS)
# parameters that do not change what is computed: left out of the cache key
NOT_HASHED = ("device", "workers", "resume_run", "checkpoint_every", "keep_checkpoint")
CHECKPOINT = "checkpoints/last.pt"


def _resume_target(params: dict, experiment_id: str, key_hash: str):
    """The run to continue: --resume-run, else a killed run with the same key and a checkpoint."""
    from tracking.stage import unfinished

    if optional(params["resume_run"]):
        return _checked_resume_run(params["resume_run"])
    return unfinished(experiment_id, "train", key_hash, lambda run: has_checkpoint(run.info.run_id))


def has_checkpoint(run_id: str) -> bool:
    from tracking.runs import has_artifact

    return has_artifact(run_id, CHECKPOINT)


def _checked_resume_run(run_id: str):
    from imaging.errors import InputError
    from tracking.runs import TAG_STAGE, get_run

    run = get_run(run_id, "resume_run")
    if run.data.tags.get(TAG_STAGE) != "train":
        raise InputError(f"resume_run {run.info.run_id} is a {run.data.tags.get(TAG_STAGE, 'non-synthmix')} run, not a train run; pass the id of a train run.")
    if not has_checkpoint(run.info.run_id):
        raise InputError(f"resume_run {run.info.run_id} has no {CHECKPOINT} (it stopped before its first checkpoint, or it finished); start a new run instead.")
    return run


def _stored_params(params: dict) -> dict:
    """--resume-run: the checkpoint's own config wins, so a resumed run computes what it started to compute."""
    import mlflow
    import torch

    run = _checked_resume_run(params["resume_run"])
    checkpoint_file = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=CHECKPOINT)
    stored = torch.load(checkpoint_file, map_location="cpu", weights_only=False)["params"]
    return {**DEFAULTS, **stored, **{k: params[k] for k in NOT_HASHED}}


def train(params: dict, *, on_epoch=None, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Train with `params` (DEFAULTS filled in); returns a StageResult (metrics of the last epoch, `extra["spec"]`).

    `reuse`: return a finished run with the same parameters, data and code instead of training again.
    """
    from imaging.corruptions import parse_augment, parse_val_corruption
    from imaging.errors import InputError
    from imaging.manifest import native_format
    from models.classifiers import check_model_name
    from tracking.lineage import load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    if optional(params["resume_run"]):
        params, reuse = _stored_params(params), False
    if params["epochs"] < 1 or params["batch_size"] < 1 or params["lr"] <= 0:
        raise InputError(f"epochs ({params['epochs']}) and batch_size ({params['batch_size']}) must be at least 1 and lr ({params['lr']}) above 0.")
    check_model_name(params["model"])
    if params["augment"]:
        parse_augment(params["augment"])  # a bad spec is refused before any work
    if params["val_corruption"]:
        parse_val_corruption(params["val_corruption"])
    manifest, report = load_manifest(params)
    channels, size = native_format(manifest)
    params["channels"] = params["channels"] or channels
    params["image_size"] = params["image_size"] or size
    if params["channels"] not in (1, 3):
        raise InputError(f"--channels {params['channels']} is not supported; use 1 (grey), 3 (RGB) or 0 (as the images are).")
    if len(manifest.split("val")) == 0:
        raise InputError(f"dataset {manifest.name} has no val split; give the folder a val/ or a val_fraction above 0.")
    # the digest names the data; which run logged that manifest does not change what is trained
    key = cache_key("train", params, (*NOT_HASHED, "dataset_run"), dataset_digest=manifest.digest)
    name = run_name or f"train-{params['model']}-{manifest.name}-s{params['seed']}"
    return get_or_run(
        "train", key, load=lambda: _prepare(params, manifest), work=lambda run, fit: _fit(run, fit, params, manifest, report, name, on_epoch),
        run_name=name, params={k: v for k, v in params.items() if k != "resume_run"},
        tags={"synthmix.model": params["model"], "synthmix.dataset_digest": manifest.digest, **(tags or {})},
        nested=nested, reuse=reuse, resume=lambda experiment_id, key_hash: _resume_target(params, experiment_id, key_hash),
    )


@dataclass
class Fit:
    """What training needs, built before any run exists (bad weights or data fail here)."""

    network: object
    optimizer: object
    scheduler: object
    spec: object
    train_batches: object
    val_batches: object
    robust_batches: object  # the corrupted val split of --val-corruption, or None
    augment: object  # on-the-fly corruption of training batches, or None
    val: tuple | None = None  # (logits, labels) of the last val pass


def _prepare(params: dict, manifest) -> Fit:
    import torch

    from imaging.batches import make_batches
    from models.classifiers import build_classifier, normalisation
    from models.serving import ClassifierSpec
    from models.training import make_optimizer
    from pipelines._cli import resolve_device

    device = resolve_device(params["device"])
    mean, std = normalisation(params["channels"])
    spec = ClassifierSpec(params["model"], list(manifest.classes), params["channels"], params["image_size"], mean, std)
    torch.manual_seed(params["seed"])
    network = build_classifier(params["model"], len(spec.classes), spec.in_channels, params["pretrained"], optional(params["weights"]), image_size=spec.image_size).to(device)
    optimizer = make_optimizer(params["optimizer"], network.parameters(), params["lr"], params["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params["epochs"])
    train_batches = make_batches(manifest.split("train"), spec.in_channels, spec.image_size, params["batch_size"], device, params["workers"])
    val_batches = make_batches(manifest.split("val"), spec.in_channels, spec.image_size, 512, device, params["workers"])
    table = corruption_table(params["table"], params["image_size"])
    return Fit(network, optimizer, scheduler, spec, train_batches, val_batches, _robust_batches(params, val_batches, table, device), _augmenter(params["augment"], table))


def _augmenter(text: str, table: str):
    """Training batches corrupted on the fly by --augment, seeded from the batch generator; None without it."""
    if not text:
        return None
    import torch

    from imaging.corruptions import apply_augment, parse_augment

    specs = parse_augment(text)

    def augment(images, labels, generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return apply_augment(images, specs, generator_seed=seed, labels=labels, table=table)

    return augment


def _robust_batches(params: dict, val_batches, table: str, device):
    """The val split corrupted by --val-corruption (scored as val_robust/acc each epoch); None without it."""
    if not params["val_corruption"]:
        return None
    from imaging.batches import TensorBatches
    from imaging.corruptions import corrupt_torch, parse_val_corruption
    from imaging.errors import InputError

    if not isinstance(val_batches, TensorBatches):
        raise InputError(f"--val-corruption works on images up to 64 px (these are {params['image_size']} px); score robustness with evaluate instead.")
    kind, severity = parse_val_corruption(params["val_corruption"])
    corrupted = corrupt_torch(val_batches.images, kind, severity, seed=params["split_seed"], labels=val_batches.labels, table=table)
    return TensorBatches(corrupted, val_batches.labels, 512, device)


def _fit(run, fit: Fit, params: dict, manifest, report, name: str, on_epoch):
    """Inside the run: from scratch or from its checkpoint, every epoch logged; then the confusion matrix and the model."""
    import time

    import mlflow
    from tqdm.auto import tqdm

    start_epoch = _restore(run.info.run_id, fit, params)
    if start_epoch == 0:
        _log_inputs(params, manifest, report)
    metrics: dict[str, float] = {}
    last_checkpoint = time.monotonic()
    epochs = tqdm(range(start_epoch, params["epochs"]), desc=name, unit="epoch", initial=start_epoch, total=params["epochs"])
    for epoch in epochs:
        metrics = _epoch(fit, params, epoch)
        mlflow.log_metrics(metrics, step=epoch)
        # a resumable checkpoint holds the optimiser too (3x the model for Adam): written by time, not every epoch,
        # and never after the last epoch, whose weights the logged model keeps
        saved = ""
        if epoch + 1 < params["epochs"] and time.monotonic() - last_checkpoint >= params["checkpoint_every"]:
            _log_checkpoint(fit, params, epoch)
            last_checkpoint, saved = time.monotonic(), "; checkpoint saved"
        epochs.set_postfix(loss=f"{metrics['train/loss']:.3f}", val_acc=f"{metrics['val/acc']:.3f}")
        print(f"[synthmix] epoch {epoch + 1}/{params['epochs']}: train/loss {metrics['train/loss']:.4f} val/acc {metrics['val/acc']:.4f}{saved}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    _log_results(run.info.run_id, fit, params, manifest, name)
    return metrics, {"spec": fit.spec}


def _epoch(fit: Fit, params: dict, epoch: int):
    """One pass over the training batches, then the val scores (kept as fit.val); the epoch's metrics."""
    import torch

    from imaging.batches import epoch_generator
    from models.training import predict, train_one_epoch

    mean, std = fit.spec.mean, fit.spec.std
    torch.manual_seed(params["seed"] * 1_000_003 + epoch)  # stochastic layers replay on resume
    result = train_one_epoch(fit.network, fit.train_batches, fit.optimizer, mean, std, generator=epoch_generator(params["seed"], epoch),
                             hflip=params["hflip"], augment=fit.augment, desc=f"epoch {epoch + 1}")
    fit.scheduler.step()
    logits, labels = predict(fit.network, fit.val_batches, mean, std, desc="val")
    metrics = {"train/loss": result["loss"], "train/acc": result["acc"], "val/loss": float(torch.nn.functional.cross_entropy(logits, labels)),
               "val/acc": float((logits.argmax(1) == labels).float().mean()), "perf/imgs_per_s": result["imgs_per_s"]}
    if fit.robust_batches is not None:
        robust_logits, robust_labels = predict(fit.network, fit.robust_batches, mean, std, desc="val corrupted")
        metrics["val_robust/acc"] = float((robust_logits.argmax(1) == robust_labels).float().mean())
    fit.val = (logits, labels)
    return metrics


def _log_inputs(params: dict, manifest, report) -> None:
    import mlflow

    from tracking.lineage import log_dataset, skipped_files

    train_rows, val_rows = manifest.split("train"), manifest.split("val")
    log_dataset(manifest, {"train": train_rows, "val": val_rows})
    if params["augment"] or params["val_corruption"]:
        mlflow.set_tag("synthmix.corruption_table", corruption_table(params["table"], params["image_size"]))
    mlflow.log_metrics({"data/train_images": len(train_rows), "data/val_images": len(val_rows), **skipped_files(report)})


def _restore(run_id: str, fit: Fit, params: dict) -> int:
    """The epoch to start from: after the run's checkpoint (model, optimiser, scheduler, RNG), or 0 without one."""
    import random

    import mlflow
    import numpy as np
    import torch

    if not has_checkpoint(run_id):
        return 0
    state = torch.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT), map_location="cpu", weights_only=False)
    fit.network.load_state_dict(state["model"])
    fit.optimizer.load_state_dict(state["optimizer"])
    fit.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    print(f"[synthmix] continuing from the checkpoint of epoch {state['epoch'] + 1}/{params['epochs']}", flush=True)
    return state["epoch"] + 1


def _log_checkpoint(fit: Fit, params: dict, epoch: int) -> None:
    """checkpoints/last.pt: everything a rerun needs to continue after `epoch`."""
    import random
    import tempfile
    from pathlib import Path

    import mlflow
    import numpy as np
    import torch

    from models.serving import save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.pt"
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        save_checkpoint(path, fit.network, fit.spec, optimizer=fit.optimizer.state_dict(), scheduler=fit.scheduler.state_dict(), epoch=epoch, rng=rng, params=params)
        mlflow.log_artifact(str(path), "checkpoints")


def _log_results(run_id: str, fit: Fit, params: dict, manifest, name: str) -> None:
    """The validation confusion matrix and the model (whose weights are the run's one checkpoint unless --keep-checkpoint)."""
    import tempfile
    from pathlib import Path

    import mlflow
    from sklearn.metrics import confusion_matrix

    from models.serving import log_classifier, save_checkpoint
    from tracking.figures import confusion_matrix_figure, confusion_matrix_json, log_figure
    from tracking.runs import delete_artifacts

    classes = fit.spec.classes
    logits, labels = fit.val
    matrix = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), labels=list(range(len(classes))))
    log_figure(confusion_matrix_figure(matrix, classes, f"{name}: validation"), "confusion_matrix/val.png")
    mlflow.log_text(confusion_matrix_json(matrix, classes), "confusion_matrix/val.json")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, fit.network.cpu(), fit.spec)
        log_classifier(path, fit.spec, manifest.split("train").local_paths()[0].read_bytes())
    if params["keep_checkpoint"]:  # the finished state, optimiser included, for fine-tuning further
        _log_checkpoint(fit, params, params["epochs"] - 1)
    elif has_checkpoint(run_id):
        delete_artifacts(run_id, "checkpoints")  # the model/ artifact keeps the weights


def run_command(**params):
    result = train(params, reuse=True)
    click.echo(f"val/acc {result.metrics.get('val/acc', float('nan')):.4f}  run {result.run_id}")


command = stage_command("train", __doc__, PARAMS, run_command)
