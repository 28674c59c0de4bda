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


def parse_corruptions(text: str) -> list[str]:
    if not text:
        return []
    from imaging.corruptions import KINDS
    from imaging.errors import InputError

    if text.strip() == "all":
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InputError(f"--corruptions has unknown kinds {unknown}; choose from {', '.join(KINDS)} or 'all'.")
    return kinds


def parse_severities(text: str) -> list[int]:
    from imaging.errors import InputError

    try:
        severities = sorted({int(s) for s in str(text).split(",") if s.strip()})
    except ValueError as error:
        raise InputError(f"--severities {text!r} is not a comma-separated list of integers 1..5, e.g. 1,3,5.") from error
    if not severities or any(s < 1 or s > 5 for s in severities):
        raise InputError(f"--severities {text!r} must list integers from 1 to 5, e.g. 1,2,3,4,5.")
    return severities


def corruption_errors(errors: dict[str, dict[int, float]], clean_error: float, baseline: dict | None) -> dict[str, float]:
    """CE per kind, mCE and relative mCE (Hendrycks & Dietterich 2019).

    errors[kind][severity] is the top-1 error. With a baseline (same structure
    plus its clean error) each kind's summed error is divided by the
    baseline's; without one the unnormalised forms are the mean errors.
    """
    out: dict[str, float] = {}
    ce, relative = [], []
    for kind, by_severity in errors.items():
        severities = sorted(by_severity)
        total = sum(by_severity[s] for s in severities)
        excess = sum(by_severity[s] - clean_error for s in severities)
        if baseline is not None:
            base = baseline["errors"][kind]
            base_total = sum(base[s] for s in severities)
            base_excess = sum(base[s] - baseline["clean_error"] for s in severities)
            ce_kind = total / max(base_total, 1e-12)
            relative_kind = excess / base_excess if abs(base_excess) > 1e-12 else float("nan")
        else:
            ce_kind = total / len(severities)
            relative_kind = excess / len(severities)
        out[f"robust/ce/{kind}"] = ce_kind
        out[f"robust/relative_ce/{kind}"] = relative_kind
        ce.append(ce_kind)
        relative.append(relative_kind)
    if ce:
        out["robust/mce"] = sum(ce) / len(ce)
        finite = [r for r in relative if r == r]
        out["robust/relative_mce"] = sum(finite) / len(finite) if finite else float("nan")
    return out


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


def evaluate(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Evaluate with `params` (DEFAULTS filled in); returns a StageResult with the test and robust metrics."""
    from imaging.errors import InputError
    from imaging.manifest import real_only
    from tracking.lineage import load_manifest
    from tracking.runs import get_or_run, get_run, quiet_mlflow, run_params

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    kinds = parse_corruptions(params["corruptions"])
    severities = parse_severities(params["severities"])
    if params["saliency"] < 0 or params["misclassified"] < 0:
        raise InputError("--saliency and --misclassified count images and must be 0 or more.")

    train_params: dict = {}
    if optional(params["train_run"]):
        train_run = get_run(params["train_run"], "train_run")
        train_params = run_params(train_run)
        model_uri = optional(params["model_uri"]) or f"runs:/{train_run.info.run_id}/model"
    elif optional(params["model_uri"]):
        model_uri = params["model_uri"]
    else:
        raise InputError("evaluate needs --train-run (a train run id) or --model-uri (e.g. models:/name@champion).")

    if optional(params["data"]):
        source = {**params}
    elif train_params:
        source = {**params, "data": train_params.get("data", "mnist5k"), "dataset_run": train_params.get("dataset_run", "")}
        for key in ("val_fraction", "test_fraction", "split_seed"):
            if key in train_params:
                source[key] = type(DEFAULTS[key])(train_params[key])
    else:
        raise InputError("with --model-uri, also pass --data: the dataset whose test split to score.")
    manifest, _ = load_manifest(source)
    test_rows = real_only(manifest.split("test"))
    if len(test_rows) == 0:
        raise InputError(f"dataset {manifest.name} has no real test images; give it a test/ folder or a test_fraction above 0.")

    logged = {**params, "model_uri": model_uri}
    key = {**{k: v for k, v in logged.items() if k not in NOT_HASHED}, "model_key": _model_key(model_uri), "test_digest": test_rows.digest}
    model_name = train_params.get("model", "model")
    name = run_name or f"evaluate-{model_name}-{test_rows.name}"
    all_tags = {"synthmix.train_run": params["train_run"] or "", "synthmix.model": model_name, **(tags or {})}
    return get_or_run(
        "evaluate", key, lambda: _prepare(params, model_uri, test_rows, kinds, severities, name),
        run_name=name, params=logged, tags=all_tags, nested=nested, reuse=reuse,
    )


def _prepare(params: dict, model_uri: str, test_rows, kinds: list[str], severities: list[int], name: str):
    """Load and check the model (before any run exists), and return the scoring that runs inside the run."""
    import mlflow
    import pandas as pd
    import torch
    from sklearn.metrics import classification_report, confusion_matrix, f1_score
    from tqdm.auto import tqdm

    from imaging.batches import TensorBatches, cached_tensors
    from imaging.errors import InputError
    from imaging.manifest import Manifest
    from models.serving import load_classifier
    from models.training import predict
    from pipelines._cli import resolve_device
    from tracking.figures import confusion_matrix_figure, confusion_matrix_json, heatmap_figure, image_grid, log_figure
    from tracking.lineage import log_dataset

    device = resolve_device(params["device"])
    try:
        classifier = load_classifier(model_uri)
    except Exception as error:
        raise InputError(f"no synthmix classifier could be loaded from {model_uri} ({error.__class__.__name__}: {str(error)[:200]}); pass a train run id or a model URI logged by train.") from error
    network, spec = classifier.network.to(device).eval(), classifier.spec
    unknown = sorted(set(test_rows.frame["label"]) - set(spec.classes))
    if unknown:
        raise InputError(f"the test split has classes the model was not trained on: {unknown}; evaluate on data with the model's classes {spec.classes}.")
    # score in the model's class order, whatever order the dataset lists its classes in
    test_rows = Manifest(test_rows.frame, test_rows.root, test_rows.name, list(spec.classes))
    images, labels = cached_tensors(test_rows, spec.in_channels, spec.image_size)
    present = sorted(set(labels.tolist()))

    def score(batch_images: torch.Tensor) -> torch.Tensor:
        batches = TensorBatches(batch_images, labels, params["batch_size"], device)
        logits, _ = predict(network, batches, spec.mean, spec.std)
        return logits

    from pipelines._cli import corruption_table as choose_table

    corruption_table = choose_table(params["table"], spec.image_size)

    def inside(run) -> dict:
        mlflow.set_tag("synthmix.model", spec.model)
        if kinds:  # the ImageNet-C families' parameters: --table, or the published table nearest the image size
            mlflow.set_tag("synthmix.corruption_table", corruption_table)
        log_dataset(test_rows, {"test": test_rows}, artifact=False)
        logits = score(images)
        predictions = logits.argmax(1)
        accuracy = float((predictions == labels).float().mean())
        metrics = {
            "test/acc": accuracy,
            "test/macro_f1": float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
            "test/loss": float(torch.nn.functional.cross_entropy(logits, labels)),
            "test/images": len(labels),
        }
        report = classification_report(labels, predictions, labels=present, target_names=[spec.classes[i] for i in present], output_dict=True, zero_division=0)
        mlflow.log_dict(report, "reports/test_classification_report.json")
        matrix = confusion_matrix(labels, predictions, labels=list(range(len(spec.classes))))
        log_figure(confusion_matrix_figure(matrix, spec.classes, f"{name}: test"), "confusion_matrix/test.png")
        mlflow.log_text(confusion_matrix_json(matrix, spec.classes), "confusion_matrix/test.json")
        wrong = torch.nonzero(predictions != labels).flatten()[: params["misclassified"]]
        if params["misclassified"]:
            grid = images[wrong].permute(0, 2, 3, 1).numpy()
            titles = [f"true {spec.classes[labels[i]]} / pred {spec.classes[predictions[i]]}" for i in wrong.tolist()]
            log_figure(image_grid(grid, titles, f"misclassified test images ({len(wrong)} of {int((predictions != labels).sum())})"), "misclassified/test.png")

        panels = []  # (name, uint8 images, predictions)
        if params["saliency"]:
            panels.append(("clean", images, predictions))

        if kinds:
            from imaging.corruptions import corrupt_torch

            table = pd.DataFrame(index=kinds, columns=severities, dtype=float)
            panel_severity = 3 if 3 in severities else severities[-1]
            for kind in tqdm(kinds, desc="corruptions", unit="kind"):
                for severity in severities:
                    corrupted = torch.cat([
                        corrupt_torch(images[i:i + 512], kind, severity, seed=params["seed"] * 1009 + i, labels=labels[i:i + 512], table=corruption_table)
                        for i in range(0, len(images), 512)
                    ])
                    corrupted_predictions = score(corrupted).argmax(1)
                    table.loc[kind, severity] = float((corrupted_predictions == labels).float().mean())
                    if params["saliency"] and severity == panel_severity:
                        panels.append((f"{kind}-{severity}", corrupted, corrupted_predictions))
            for kind in kinds:
                for severity in severities:
                    metrics[f"robust/acc/{kind}/{severity}"] = float(table.loc[kind, severity])
            errors = {k: {s: 1 - float(table.loc[k, s]) for s in severities} for k in kinds}
            baseline = _baseline_errors(params["baseline_run"], kinds, severities) if optional(params["baseline_run"]) else None
            metrics.update(corruption_errors(errors, 1 - accuracy, baseline))
            table.insert(0, "clean", accuracy)
            table.index.name = "corruption"
            mlflow.log_text(table.to_csv(float_format="%.4f"), "robustness/accuracy.csv")
            figure = heatmap_figure(table, f"{name}\ntest accuracy per corruption and severity", xlabel="severity (clean = uncorrupted)", colour_label="accuracy")
            log_figure(figure, "robustness/accuracy.png")

        if panels:
            from models.saliency import correct_and_incorrect
            from tracking.overlays import correct_incorrect_panel

            count = params["saliency"]
            for panel_name, panel_images, panel_predictions in panels:
                chosen, maps = correct_and_incorrect(
                    network, panel_images, labels, panel_predictions, count, seed=params["seed"], mean=spec.mean, std=spec.std,
                    image_size=spec.image_size, method=params["saliency_method"], device=device,
                )
                accuracy_here = float((panel_predictions == labels).float().mean())
                figure = correct_incorrect_panel(
                    panel_images[chosen].permute(0, 2, 3, 1).numpy(), maps.cpu().numpy(), labels[chosen].numpy(), panel_predictions[chosen].numpy(), spec.classes, count,
                    suptitle=f"{params['saliency_method']} of the predicted class · {panel_name} test images · accuracy {accuracy_here:.3f}",
                )
                log_figure(figure, f"saliency/{params['saliency_method']}_{panel_name}.png")

        mlflow.log_metrics(metrics)
        print(f"[synthmix] test/acc {accuracy:.4f}  test/macro_f1 {metrics['test/macro_f1']:.4f}" + (f"  robust/mce {metrics['robust/mce']:.4f}" if kinds else ""), flush=True)
        return metrics

    return inside


command = stage_command("evaluate", __doc__, PARAMS, lambda **params: evaluate(params))
