"""evaluate: score a trained classifier on the real test split, clean and corrupted.

    python -m pipelines evaluate --train-run <id> [--corruptions all --severities 1,2,3,4,5 --saliency 8]

Logs test/acc, test/macro_f1 and test/loss, a per-class report (JSON), the
test confusion matrix (PNG + JSON) and a grid of misclassified images. With
--corruptions it scores every kind x severity (robust/acc/<kind>/<severity>),
logs the table (CSV) and heatmap (PNG), the corruption error per kind and the
mean (robust/ce/<kind>, robust/mce, robust/relative_mce: Hendrycks &
Dietterich 2019, normalised by --baseline-run's errors, or unnormalised mean
errors without one). With --saliency N it logs Grad-CAM panels of N correct and
N incorrect predictions, for the clean test set and for each corruption.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from pipelines._cli import DEVICE, TABLE, data_params, defaults, option, optional, stage_command

PARAMS = [
    option("train_run", "", "Id of the train run whose model to score."),
    option("model_uri", "", "Or any MLflow model URI of a synthmix classifier (runs:/<id>/model, models:/<name>@<alias>)."),
    *data_params("", " Default: the train run's dataset."),
    option("batch_size", 256, "Images per forward pass.", click.IntRange(1)),
    DEVICE,
    option("misclassified", 32, "Misclassified test images shown in misclassified/test.png.", click.IntRange(0)),
    option("corruptions", "", "Corruption kinds to score (comma-separated) or 'all'; empty scores the clean test set only."),
    option("severities", "1,2,3,4,5", "Severities (1-5) to score each corruption at."),
    option("baseline_run", "", "An evaluate run of a baseline model with the same corruptions: CE and mCE are normalised by its errors."),
    option("saliency", 0, "Show N correct and N incorrect test images with saliency maps (clean and per corruption); 0 skips.", click.IntRange(0)),
    option("saliency_method", "gradcam", "Saliency method of the panels.", click.Choice(["gradcam", "integrated_gradients"])),
    option("seed", 0, "Seed of the random corruptions.", int),
    TABLE,
]
DEFAULTS = defaults(PARAMS)
NOT_HASHED = ("device", "batch_size")


def _baseline_errors(run_id: str, kinds: list[str], severities: list[int]) -> dict:
    from imaging.errors import InputError
    from tracking.runs import get_run

    metrics = get_run(run_id, "baseline_run").data.metrics
    missing = [f"{k}/{s}" for k in kinds for s in severities if f"robust/acc/{k}/{s}" not in metrics]
    if "test/acc" not in metrics or missing:
        raise InputError(f"baseline_run {run_id} lacks robust/acc for {missing[:5]}{'...' if len(missing) > 5 else ''}; evaluate the baseline model with the same --corruptions and --severities first and pass that evaluate run.")
    return {
        "clean_error": 1 - metrics["test/acc"],
        "errors": {k: {s: 1 - metrics[f"robust/acc/{k}/{s}"] for s in severities} for k in kinds},
    }


def _model_key(model_uri: str) -> str:
    """A model URI that names one fixed model: an alias is resolved to its version now."""
    if model_uri.startswith("models:/") and "@" in model_uri:
        from mlflow.tracking import MlflowClient

        name, alias = model_uri.removeprefix("models:/").split("@", 1)
        try:
            return f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
        except Exception:
            return model_uri  # loading it below gives the user the error
    return model_uri


def _model_and_data(params: dict):
    """(model URI, the train run's id or "", its params or {}, the data options to score on): --train-run (a pointer is followed) or --model-uri."""
    from imaging.errors import InputError
    from tracking.runs import get_run, run_params

    train_params, train_run_id = {}, ""
    if optional(params["train_run"]):
        train_run = get_run(params["train_run"], "train_run")
        train_params, train_run_id = run_params(train_run), train_run.info.run_id
        model_uri = _follow_model_uri(optional(params["model_uri"]) or f"runs:/{train_run_id}/model")
    elif optional(params["model_uri"]):
        model_uri = _follow_model_uri(params["model_uri"])
    else:
        raise InputError("evaluate needs --train-run (a train run id) or --model-uri (e.g. models:/name@champion).")
    if optional(params["data"]):
        return model_uri, train_run_id, train_params, {**params}
    if not train_params:
        raise InputError("with --model-uri, also pass --data: the dataset whose test split to score.")
    source = {**params, "data": train_params.get("data") or "mnist5k", "dataset_run": train_params.get("dataset_run", "")}
    for key in ("val_fraction", "test_fraction", "split_seed"):
        if train_params.get(key):
            source[key] = type(DEFAULTS[key])(float(train_params[key]))
    return model_uri, train_run_id, train_params, source


def _follow_model_uri(model_uri: str) -> str:
    """runs:/<id>/<path> with a pointer run's id names the run that holds the model."""
    if not model_uri.startswith("runs:/"):
        return model_uri
    from tracking.runs import get_run

    run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
    return f"runs:/{get_run(run_id, 'the run of --model-uri').info.run_id}/{path}"


def evaluate(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Evaluate with `params` (DEFAULTS filled in); returns a StageResult with the test and robust metrics."""
    from imaging.corruptions import parse_kinds, parse_severities
    from imaging.errors import InputError
    from imaging.manifest import real_only
    from tracking.lineage import load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    kinds, severities = parse_kinds(params["corruptions"]), parse_severities(params["severities"])
    model_uri, train_run, train_params, source = _model_and_data(params)
    params["train_run"] = train_run  # the run that holds the model (a pointer followed) is what the key names
    manifest, _ = load_manifest(source)
    test_rows = real_only(manifest.split("test"))
    if len(test_rows) == 0:
        raise InputError(f"dataset {manifest.name} has no real test images; give it a test/ folder or a test_fraction above 0.")
    logged = {**params, "model_uri": model_uri}
    key = cache_key("evaluate", logged, NOT_HASHED, model_key=_model_key(model_uri), test_digest=test_rows.digest)
    model_name = train_params.get("model", "model")
    name = run_name or f"evaluate-{model_name}-{test_rows.name}"
    all_tags = {"synthmix.train_run": train_run, "synthmix.model": model_name, **(tags or {})}
    return get_or_run(
        "evaluate", key, load=lambda: _prepare(params, model_uri, test_rows),
        work=lambda run, scoring: _score(scoring, params, kinds, severities, name),
        run_name=name, params=logged, tags=all_tags, nested=nested, reuse=reuse,
    )


@dataclass
class Scoring:
    """The model and the test images, loaded and checked before any run exists."""

    network: object
    spec: object
    test_rows: object
    images: object  # uint8 [N, C, H, W]
    labels: object
    device: object
    table: str  # the published severity table of the ImageNet-C families

    def predict(self, images, batch_size: int):
        from imaging.batches import TensorBatches
        from models.training import predict

        logits, _ = predict(self.network, TensorBatches(images, self.labels, batch_size, self.device), self.spec.mean, self.spec.std)
        return logits


def _prepare(params: dict, model_uri: str, test_rows) -> Scoring:
    from imaging.batches import cached_tensors
    from imaging.errors import InputError
    from imaging.manifest import Manifest
    from models.serving import load_classifier
    from pipelines._cli import corruption_table, resolve_device

    device = resolve_device(params["device"])
    try:
        classifier = load_classifier(model_uri)
    except Exception as error:
        raise InputError(f"no synthmix classifier could be loaded from {model_uri} ({error.__class__.__name__}: {str(error)[:200]}); pass a train run id or a model URI logged by train.") from error
    spec = classifier.spec
    unknown = sorted(set(test_rows.frame["label"]) - set(spec.classes))
    if unknown:
        raise InputError(f"the test split has classes the model was not trained on: {unknown}; evaluate on data with the model's classes {spec.classes}.")
    # score in the model's class order, whatever order the dataset lists its classes in
    test_rows = Manifest(test_rows.frame, test_rows.root, test_rows.name, list(spec.classes))
    images, labels = cached_tensors(test_rows, spec.in_channels, spec.image_size)
    return Scoring(classifier.network.to(device).eval(), spec, test_rows, images, labels, device, corruption_table(params["table"], spec.image_size))


def _score(scoring: Scoring, params: dict, kinds: list[str], severities: list[int], name: str) -> dict:
    """Inside the run: the clean test scores, the robustness table and the saliency panels."""
    import mlflow

    from tracking.lineage import log_dataset

    mlflow.set_tag("synthmix.model", scoring.spec.model)
    if kinds:  # the ImageNet-C families' parameters: --table, or the published table nearest the image size
        mlflow.set_tag("synthmix.corruption_table", scoring.table)
    log_dataset(scoring.test_rows, {"test": scoring.test_rows}, artifact=False)
    logits = scoring.predict(scoring.images, params["batch_size"])
    predictions = logits.argmax(1)
    metrics = _clean_scores(scoring, params, logits, name)
    panels = [("clean", scoring.images, predictions)] if params["saliency"] else []
    if kinds:
        robust, corrupted_panels = _robustness(scoring, params, kinds, severities, metrics["test/acc"], name)
        metrics.update(robust)
        panels += corrupted_panels if params["saliency"] else []
    for panel in panels:
        _saliency_panel(scoring, params, *panel)
    mlflow.log_metrics(metrics)
    print(f"[synthmix] test/acc {metrics['test/acc']:.4f}  test/macro_f1 {metrics['test/macro_f1']:.4f}" + (f"  robust/mce {metrics['robust/mce']:.4f}" if kinds else ""), flush=True)
    return metrics


def _clean_scores(scoring: Scoring, params: dict, logits, name: str) -> dict:
    """test/acc, test/macro_f1 and test/loss; the per-class report, the confusion matrix and the misclassified images."""
    import mlflow
    import torch
    from sklearn.metrics import classification_report, confusion_matrix, f1_score

    from tracking.figures import confusion_matrix_figure, confusion_matrix_json, image_grid, log_figure

    labels, classes, predictions = scoring.labels, scoring.spec.classes, logits.argmax(1)
    present = sorted(set(labels.tolist()))
    metrics = {
        "test/acc": float((predictions == labels).float().mean()),
        "test/macro_f1": float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        "test/loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "test/images": len(labels),
    }
    report = classification_report(labels, predictions, labels=present, target_names=[classes[i] for i in present], output_dict=True, zero_division=0)
    mlflow.log_dict(report, "reports/test_classification_report.json")
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    log_figure(confusion_matrix_figure(matrix, classes, f"{name}: test"), "confusion_matrix/test.png")
    mlflow.log_text(confusion_matrix_json(matrix, classes), "confusion_matrix/test.json")
    if params["misclassified"]:
        wrong = torch.nonzero(predictions != labels).flatten()[: params["misclassified"]]
        titles = [f"true {classes[labels[i]]} / pred {classes[predictions[i]]}" for i in wrong.tolist()]
        log_figure(image_grid(scoring.images[wrong].permute(0, 2, 3, 1).numpy(), titles, f"misclassified test images ({len(wrong)} of {int((predictions != labels).sum())})"), "misclassified/test.png")
    return metrics


def _robustness(scoring: Scoring, params: dict, kinds: list[str], severities: list[int], accuracy: float, name: str):
    """robust/acc per kind and severity, CE and mCE; the table (CSV) and its heatmap; the corrupted panels for saliency."""
    import mlflow
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from imaging.corruptions import corrupt_torch
    from tracking.figures import heatmap_figure, log_figure
    from tracking.statistics import corruption_errors

    images, labels = scoring.images, scoring.labels
    table = pd.DataFrame(index=kinds, columns=severities, dtype=float)
    panel_severity = 3 if 3 in severities else severities[-1]
    panels = []
    for kind in tqdm(kinds, desc="corruptions", unit="kind"):
        for severity in severities:
            corrupted = torch.cat([corrupt_torch(images[i:i + 512], kind, severity, seed=params["seed"] * 1009 + i, labels=labels[i:i + 512], table=scoring.table)
                                   for i in range(0, len(images), 512)])
            predictions = scoring.predict(corrupted, params["batch_size"]).argmax(1)
            table.loc[kind, severity] = float((predictions == labels).float().mean())
            if severity == panel_severity:
                panels.append((f"{kind}-{severity}", corrupted, predictions))
    metrics = {f"robust/acc/{kind}/{severity}": float(table.loc[kind, severity]) for kind in kinds for severity in severities}
    errors = {k: {s: 1 - float(table.loc[k, s]) for s in severities} for k in kinds}
    baseline = _baseline_errors(params["baseline_run"], kinds, severities) if optional(params["baseline_run"]) else None
    metrics.update(corruption_errors(errors, 1 - accuracy, baseline))
    table.insert(0, "clean", accuracy)
    table.index.name = "corruption"
    mlflow.log_text(table.to_csv(float_format="%.4f"), "robustness/accuracy.csv")
    figure = heatmap_figure(table, f"{name}\ntest accuracy per corruption and severity", xlabel="severity (clean = uncorrupted)", colour_label="accuracy")
    log_figure(figure, "robustness/accuracy.png")
    return metrics, panels


def _saliency_panel(scoring: Scoring, params: dict, panel_name: str, images, predictions) -> None:
    """N correct and N incorrect images of one panel with their saliency maps."""
    from models.saliency import correct_and_incorrect
    from tracking.figures import log_figure
    from tracking.overlays import correct_incorrect_panel

    count, spec, labels = params["saliency"], scoring.spec, scoring.labels
    chosen, maps = correct_and_incorrect(scoring.network, images, labels, predictions, count, seed=params["seed"], mean=spec.mean, std=spec.std,
                                         image_size=spec.image_size, method=params["saliency_method"], device=scoring.device)
    accuracy = float((predictions == labels).float().mean())
    figure = correct_incorrect_panel(
        images[chosen].permute(0, 2, 3, 1).numpy(), maps.cpu().numpy(), labels[chosen].numpy(), predictions[chosen].numpy(), spec.classes, count,
        suptitle=f"{params['saliency_method']} of the predicted class · {panel_name} test images · accuracy {accuracy:.3f}",
    )
    log_figure(figure, f"saliency/{params['saliency_method']}_{panel_name}.png")


command = stage_command("evaluate", __doc__, PARAMS, lambda **params: evaluate(params, reuse=True))
