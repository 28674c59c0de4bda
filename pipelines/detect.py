"""detect: train a real-vs-synthetic image detector, score it on held-out images, and measure how it transfers across generators.

    python -m pipelines detect --data mnist5k --synthetic-runs <vae run>,<dcgan run>,<ddpm run>
    python -m pipelines detect --data ./fruits/real --synthetic-data ./fruits/ai --model resnet50 --pretrained true
    mlflow run . -e detect -P synthetic_data=./generated

The two classes are `real` (the real dataset's images: train split for
training, val and test held out) and `synthetic` (one or more synthesis runs,
or a folder of generated images, with or without class sub-folders). The
synthetic images get a seeded train/val/test split in the real splits'
proportions that never puts images sharing a source seed, a source image or
their bytes in two splits, and every split is balanced (per class when the
synthetic images carry the real classes). Both classes are decoded to the
same size and colour mode, so a score reflects the pixels, not the files; a
synthetic set of another size, mode or file format is refused unless
--convert true (the run then carries a note). The detector's dataset is this
run's `dataset/` artifact.

The detector is trained by the `train` stage as a nested run (any torchvision
model, resnet50 by default; --augment as in train: blur and JPEG at a
probability, e.g. defocus_blur:2:0.5,jpeg_compression:3:0.5, is the recipe of
Wang et al., CVPR 2020). Its model is the same pyfunc as a classifier's
(classes real and synthetic), so `mlflow models serve` takes it and
`register --parent-run <this run>` registers it (as <dataset>-detector).

On the held-out test images this run logs test/acc, test/auc and test/ap
(synthetic is the positive class), per generator test/auc/<generator>, the
confusion matrix, the classification report, the ROC curve and Grad-CAM
panels of correct and incorrect detections. With several --synthetic-runs
and --transfer true it also trains one detector per generator (nested detect
runs) and scores each on every generator's held-out images:
transfer/auc.csv and .png (rows: trained on, columns: tested on) and
detect/transfer_auc, the mean off-diagonal AUC. A detector is only
interesting if that number is high too.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from pipelines import mix as mix_stage
from pipelines import train as train_stage
from pipelines._cli import DEVICE, data_params, defaults, option, optional, passed_on, pick, stage_command

WANG_RECIPE = "defocus_blur:2:0.5,jpeg_compression:3:0.5"
PARAMS = [
    *data_params(help_suffix=" The real images: the detector trains on their train split and is scored on val and test."),
    option("synthetic_runs", "", "Synthesize run ids, comma-separated, one per generator (two or more also measure transfer). Give this or --synthetic-data."),
    option("synthetic_data", "", "Or a folder of generated images: class sub-folders, or the images directly. Give this or --synthetic-runs."),
    *pick(mix_stage.PARAMS, "convert"),
    *pick(train_stage.PARAMS, "model", model="resnet50"),
    *pick(train_stage.PARAMS, "pretrained", "weights", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "image_size"),
    option("augment", "", f"Corrupt training batches on the fly as in train, kind:severity:probability[,...]; {WANG_RECIPE} is the blur+JPEG recipe of Wang et al. 2020 that helps a detector transfer."),
    option("seed", 0, "Seed of the synthetic split, the balancing, initialisation and batch order.", int),
    option("transfer", True, "With several --synthetic-runs: also train one detector per generator and score it on every generator's held-out images (AUC matrix, detect/transfer_auc).", bool),
    option("saliency", 4, "Grad-CAM panels of N correct and N incorrect held-out detections; 0 skips.", click.IntRange(0)),
    *pick(train_stage.PARAMS, "table"),
    DEVICE,
    *pick(train_stage.PARAMS, "workers"),
]
DEFAULTS = defaults(PARAMS)
NOT_HASHED = ("device", "workers")
TAG_DETECTOR = "synthmix.detector_train_run"  # the train run that holds this detect run's model


def _run_ids(text: str) -> list[str]:
    return list(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))


def _same_data(a: str, b: str) -> bool:
    from pathlib import Path

    if a == b:
        return True
    if "mnist5k" in (a, b):
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _short(name: str) -> str:
    import re

    return re.sub(r"[^\w.\-]+", "_", name)


def load_generators(params: dict) -> tuple[dict, dict]:
    """({generator name: synthetic manifest}, {generator name: where it came from}); InputError names a bad source."""
    from pathlib import Path

    from imaging.errors import InputError
    from tracking.lineage import load_synthetic, synthetic_source
    from tracking.runs import run_params

    synthetic_source(params, "synthetic_runs")  # exactly one of them
    run_ids, folder = _run_ids(params["synthetic_runs"]), optional(params["synthetic_data"])
    generators, sources = {}, {}
    if folder:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise InputError(f"synthetic_data {root} is not a folder; pass a folder of generated images (class sub-folders or the images directly).")
        has_classes = any(p.is_dir() and not p.name.startswith((".", "_")) for p in root.iterdir())
        if has_classes:
            manifest, _, _ = load_synthetic({**params, "synthetic_run": "", "synthetic_data": folder})
        else:
            from imaging.datasets import scan_flat_folder
            from imaging.mixing import absolute_paths

            manifest, _ = scan_flat_folder(root, skip_bad_images=params["skip_bad_images"], max_pixels=params["max_pixels"], name=f"{root.name}-synthetic")
            manifest = absolute_paths(manifest)
            manifest.frame["source"] = "synthetic"
        name = _short(root.name)
        generators[name], sources[name] = manifest, str(root.resolve())
        return generators, sources
    for run_id in run_ids:
        manifest, _, run = load_synthetic({**params, "synthetic_run": run_id, "synthetic_data": ""})
        made_from = run_params(run).get("data", "")
        if made_from and not _same_data(made_from, params["data"]):
            raise InputError(f"synthetic run {run_id} was synthesized from {made_from}, not from --data {params['data']}; pass synthesis runs of {params['data']}, or --data {made_from}.")
        name = _short(run.data.tags.get("synthmix.generator", "") or "synthetic")
        if name in generators:
            name = f"{name}-{run.info.run_id[:8]}"
        generators[name], sources[name] = manifest, run.info.run_id
    return generators, sources


def _format_note(real, generators: dict, convert: bool) -> str | None:
    """None when every generator's images have the real size, colour mode and file format; else a note (convert) or an InputError."""
    import tempfile

    from imaging.errors import InputError
    from imaging.mixing import format_note
    from tracking.lineage import sample_paths

    notes = []
    with tempfile.TemporaryDirectory() as folder:
        real_paths = sample_paths(real.split("train"), folder)
        real_formats = _file_formats(real_paths)
        for name, manifest in generators.items():
            paths = sample_paths(manifest, folder)
            try:
                note = format_note(real_paths, paths, convert)
            except InputError as error:
                raise InputError(f"{name}: {error} A detector would learn the difference in format instead of the images.") from None
            formats = _file_formats(paths)
            if not formats <= real_formats:
                if not convert:
                    raise InputError(
                        f"{name}: the synthetic images are {'/'.join(sorted(formats))} files but the real ones are {'/'.join(sorted(real_formats))}; "
                        f"a detector would learn the compression instead of the images. Store both alike (e.g. synthesize into the real format), or pass --convert true to go on with a note."
                    )
                note = (note + "; " if note else "") + f"synthetic images are {'/'.join(sorted(formats))} files, the real ones {'/'.join(sorted(real_formats))}: scores may reflect compression"
            if note:
                notes.append(f"{name}: {note}")
    return "; ".join(notes) or None


def _file_formats(paths) -> set[str]:
    from PIL import Image

    formats = set()
    for path in paths:
        with Image.open(path) as image:
            formats.add(str(image.format))
    return formats


def detect(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Detect with `params` (DEFAULTS filled in); returns a StageResult with the held-out metrics."""
    from imaging.corruptions import parse_augment
    from imaging.detection import detector_manifest
    from models.classifiers import check_model_name
    from tracking.lineage import load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    check_model_name(params["model"])
    if params["augment"]:
        parse_augment(params["augment"])
    generators, sources = load_generators(params)
    real, report = load_manifest({**params, "dataset_run": ""})
    note = _format_note(real, generators, params["convert"])
    manifest = detector_manifest(real, generators, params["seed"])
    key = cache_key("detect", params, NOT_HASHED, dataset_digest=manifest.digest)
    name = run_name or f"detect-{params['model']}-{real.name}-{'+'.join(generators)}"
    all_tags = {"synthmix.model": params["model"], "synthmix.generators": ",".join(generators), "synthmix.dataset_digest": manifest.digest, **(tags or {})}
    return get_or_run(
        "detect", key, load=lambda: None, work=lambda run, _: _work(run, params, manifest, generators, sources, note, name),
        run_name=name, params=params, tags=all_tags, nested=nested, reuse=reuse,
    )


def _scores(model_uri: str, rows, device):
    """(P(synthetic) [N], labels [N]) of the detector at `model_uri` on manifest `rows`."""
    import torch

    from imaging.batches import TensorBatches, cached_tensors
    from models.serving import load_classifier
    from models.training import predict

    classifier = load_classifier(model_uri)
    network, spec = classifier.network.to(device).eval(), classifier.spec
    images, labels = cached_tensors(rows, spec.in_channels, spec.image_size)
    logits, _ = predict(network, TensorBatches(images, labels, 256, device), spec.mean, spec.std)
    return torch.softmax(logits, dim=1)[:, spec.classes.index("synthetic")], labels, images, network, spec


@dataclass
class HeldOut:
    """The detector's scores on the held-out test images."""

    rows: object  # manifest rows
    truth: object  # 0 real, 1 synthetic
    score: object  # P(synthetic)
    predictions: object
    images: object
    labels: object
    generator_of: object  # generator name per row ("" for real)


def _work(run, params: dict, manifest, generators: dict, sources: dict, note: str | None, name: str):
    """Inside the detect run: log the dataset, train the detector (nested), score it, and measure transfer."""
    import mlflow

    from pipelines._cli import resolve_device
    from tracking.lineage import log_dataset

    device = resolve_device(params["device"])
    if note:
        mlflow.set_tag("synthmix.convert_note", note)
        print(f"[synthmix] note: {note}", flush=True)
    mlflow.set_tag("synthmix.synthetic_sources", ",".join(f"{g}={s}" for g, s in sources.items()))
    log_dataset(manifest)
    counts = manifest.frame.groupby(["split", "label"]).size()
    mlflow.log_metrics({f"data/{split}_{label}": int(n) for (split, label), n in counts.items()})
    trained = train_stage.train(
        passed_on(PARAMS, params, train_stage.PARAMS, dataset_run=run.info.run_id, augment=params["augment"], seed=params["seed"]),
        nested=True, reuse=True, run_name=f"detector-{params['model']}-{'+'.join(generators)}", tags={"synthmix.task": "detector"},
    )
    mlflow.set_tag(TAG_DETECTOR, trained.run_id)
    model_uri = f"runs:/{trained.run_id}/model"
    held_out, network, spec = _held_out(model_uri, manifest.split("test"), device)
    metrics = {**_scores_and_reports(held_out, generators, name), **{k: v for k, v in trained.metrics.items() if k.startswith("val/")}}
    if params["saliency"]:
        _saliency(held_out, network, spec, params, metrics["test/acc"], device)
    if len(generators) > 1 and params["transfer"]:
        metrics.update(_transfer(run.info.run_id, params, held_out, generators, sources, name, device))
    mlflow.log_metrics(metrics)
    summary = f"test/auc {metrics['test/auc']:.4f}  test/acc {metrics['test/acc']:.4f}  test/ap {metrics['test/ap']:.4f}"
    if "detect/transfer_auc" in metrics:
        summary += f"  detect/transfer_auc {metrics['detect/transfer_auc']:.4f}"
    mlflow.set_tag("mlflow.note.content", f"Real-vs-synthetic detector ({params['model']}) on {', '.join(generators)}: held-out {summary}. "
                                          f"Model: {model_uri}; register it with `python -m pipelines register --parent-run {run.info.run_id}`.")
    print(f"[synthmix] detector {summary}; model {model_uri}", flush=True)
    return metrics, {"train_run": trained.run_id}


def _held_out(model_uri: str, test_rows, device):
    scores, labels, images, network, spec = _scores(model_uri, test_rows, device)
    held_out = HeldOut(test_rows, labels.numpy(), scores.numpy(), (scores >= 0.5).long(), images, labels, test_rows.frame["generator"].to_numpy())
    return held_out, network, spec


def _scores_and_reports(held_out: HeldOut, generators: dict, name: str) -> dict:
    """test/acc, test/auc, test/ap (and test/auc/<generator>); the confusion matrix, reports, ROC curves and per-image scores."""
    import mlflow
    import pandas as pd
    from sklearn.metrics import average_precision_score, classification_report, confusion_matrix, roc_auc_score, roc_curve

    from imaging.detection import CLASSES
    from tracking.figures import confusion_matrix_figure, confusion_matrix_json, log_figure, roc_figure

    truth, score, predictions = held_out.truth, held_out.score, held_out.predictions.numpy()
    metrics = {"test/acc": float((predictions == truth).mean()), "test/auc": float(roc_auc_score(truth, score)),
               "test/ap": float(average_precision_score(truth, score)), "test/images": len(truth)}
    curves = {"all generators" if len(generators) > 1 else next(iter(generators)): (*roc_curve(truth, score)[:2], metrics["test/auc"])}
    for generator in generators if len(generators) > 1 else ():
        mask = (truth == 0) | (held_out.generator_of == generator)
        metrics[f"test/auc/{generator}"] = float(roc_auc_score(truth[mask], score[mask]))
        curves[generator] = (*roc_curve(truth[mask], score[mask])[:2], metrics[f"test/auc/{generator}"])
    matrix = confusion_matrix(truth, predictions, labels=[0, 1])
    log_figure(confusion_matrix_figure(matrix, CLASSES, f"{name}: held-out test"), "confusion_matrix/test.png")
    mlflow.log_text(confusion_matrix_json(matrix, CLASSES), "confusion_matrix/test.json")
    report = classification_report(truth, predictions, labels=[0, 1], target_names=CLASSES, output_dict=True, zero_division=0)
    mlflow.log_dict(report, "reports/test_classification_report.json")
    mlflow.log_text(classification_report(truth, predictions, labels=[0, 1], target_names=CLASSES, digits=4, zero_division=0), "reports/test_classification_report.txt")
    log_figure(roc_figure(curves, f"{name}\nROC on {len(truth)} held-out images (synthetic = positive)"), "roc/test.png")
    table = pd.DataFrame({"path": held_out.rows.frame["path"], "generator": held_out.generator_of, "label": [CLASSES[i] for i in truth], "p_synthetic": score})
    mlflow.log_text(table.to_csv(index=False, float_format="%.6f"), "predictions/test.csv")
    return metrics


def _saliency(held_out: HeldOut, network, spec, params: dict, accuracy: float, device) -> None:
    from imaging.detection import CLASSES
    from models.saliency import correct_and_incorrect
    from tracking.figures import log_figure
    from tracking.overlays import correct_incorrect_panel

    images, labels, predictions, count = held_out.images, held_out.labels, held_out.predictions, params["saliency"]
    chosen, maps = correct_and_incorrect(network, images, labels, predictions, count, seed=params["seed"], mean=spec.mean, std=spec.std, image_size=spec.image_size, device=device)
    figure = correct_incorrect_panel(
        images[chosen].permute(0, 2, 3, 1).numpy(), maps.cpu().numpy(), labels[chosen].numpy(), predictions[chosen].numpy(), CLASSES, count,
        suptitle=f"Grad-CAM of the predicted class · held-out detections · accuracy {accuracy:.3f}",
    )
    log_figure(figure, "saliency/gradcam_test.png")


def _transfer(run_id: str, params: dict, held_out: HeldOut, generators: dict, sources: dict, name: str, device) -> dict:
    """One detector per generator (nested detect runs), each scored on every generator's held-out images: the AUC matrix."""
    import mlflow
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from imaging.detection import transfer_auc
    from tracking.figures import heatmap_figure, log_figure

    metrics = {}
    table = pd.DataFrame(index=list(generators), columns=list(generators), dtype=float)
    for trained_on, source in sources.items():
        single = detect({**params, "synthetic_runs": source, "synthetic_data": "", "transfer": False, "saliency": 0}, nested=True, reuse=True,
                        run_name=f"detect-{params['model']}-{trained_on}", tags={"synthmix.transfer_of": run_id})
        detector_run = mlflow.get_run(single.run_id).data.tags[TAG_DETECTOR]
        single_scores = _scores(f"runs:/{detector_run}/model", held_out.rows, device)[0].numpy()
        for tested_on in generators:
            mask = (held_out.truth == 0) | (held_out.generator_of == tested_on)
            table.loc[trained_on, tested_on] = metrics[f"transfer/auc/{trained_on}/{tested_on}"] = float(roc_auc_score(held_out.truth[mask], single_scores[mask]))
    metrics["detect/transfer_auc"] = transfer_auc(table)
    table.index.name = "trained_on"
    mlflow.log_text(table.to_csv(float_format="%.4f"), "transfer/auc.csv")
    figure = heatmap_figure(table, f"{name}\nheld-out ROC AUC; off-diagonal mean {metrics['detect/transfer_auc']:.3f}",
                            xlabel="tested on (generator's held-out images vs real test images)", ylabel="trained on",
                            colour_label="ROC AUC (0.5 chance; below: ranks them backwards)")
    log_figure(figure, "transfer/auc.png")
    return metrics


def run_command(**params):
    result = detect(params, reuse=True)
    metrics = result.metrics
    line = f"test/auc {metrics.get('test/auc', float('nan')):.4f}  test/acc {metrics.get('test/acc', float('nan')):.4f}"
    if "detect/transfer_auc" in metrics:
        line += f"  detect/transfer_auc {metrics['detect/transfer_auc']:.4f}"
    click.echo(f"{line}  run {result.run_id}\nregister it: python -m pipelines register --parent-run {result.run_id}")


command = stage_command("detect", __doc__, PARAMS, run_command)
