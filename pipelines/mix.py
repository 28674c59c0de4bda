"""mix: build a training manifest of real and synthetic images at a chosen synthetic fraction.

    python -m pipelines mix --data mnist5k --synthetic-run <synthesize run id> --ratio 0.6

mode=replace (default) keeps the training set at --total images (default: the
real train split's size) and replaces real images by synthetic ones, the same
fraction in every class; mode=add keeps every real image and adds
ratio / (1 - ratio) times as many synthetic ones. Val and test stay the real
ones, untouched. The mix is logged as the run's dataset inputs and as the
artifact `dataset/` (manifest.csv + manifest.json), which
`train --dataset-run <this run>` trains on; no image is copied. Metrics: the
achieved counts mix/synthetic/<class>, mix/real/<class>, mix/synthetic_total,
mix/real_total and mix/synthetic_fraction.

Everything is checked before the run starts: the ratio, the classes, enough
images of each class, and the synthetic images' size and channels against the
real ones (a mismatch is an error unless --convert true, which leaves the
conversion to decoding and notes it on the run as the tag synthmix.convert_note).
"""
from __future__ import annotations

import click

from pipelines._cli import data_params, defaults, option, stage_command

MODES = ("replace", "add")  # as imaging.mixing.MODES, repeated so --help needs no pandas
PARAMS = [
    *data_params(help_suffix=" These are the real images; their val and test splits pass through untouched."),
    option("synthetic_run", "", "Take the synthetic images from this synthesize run's dataset/ manifest. Give this or --synthetic-data."),
    option("synthetic_data", "", "Take the synthetic images from this folder of class sub-folders (no train/ val/ test/). Give this or --synthetic-run."),
    option("ratio", 0.5, "Synthetic fraction of the training split, from 0 (all real) to 1 (all synthetic); 0.6 means synthetic:real = 6:4.", float),
    option("total", 0, "Training-set size in images (mode=replace only); 0 = the real train split's size.", click.IntRange(0)),
    option("mode", "replace", "replace: fixed training-set size, synthetic images replace real ones; add: all real images plus ratio/(1-ratio) times as many synthetic ones.", click.Choice(MODES)),
    option("convert", False, "true: accept synthetic images of another size or colour mode (decoding converts them to the real format); false: stop with an error.", bool),
    option("seed", 0, "Seed of which real and synthetic images are picked per class.", click.IntRange(0)),
]
DEFAULTS = defaults(PARAMS)


def metric_key(name: str) -> str:
    import re

    return re.sub(r"[^\w.\- /]", "_", name)  # what MLflow accepts in a metric name


def mix(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Mix with `params` (DEFAULTS filled in); returns a StageResult with the achieved counts and the manifest."""
    from pathlib import Path

    from imaging.mixing import check_ratio
    from tracking.lineage import load_manifest, load_synthetic, synthetic_source
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    check_ratio(params["ratio"], params["mode"])
    synthetic_source(params)  # before the real dataset is scanned, which can take a while
    real, report = load_manifest({**params, "dataset_run": ""})
    synthetic, synthetic_skipped, synthetic_run = load_synthetic(params)
    if synthetic_run is not None:
        params["synthetic_run"] = synthetic_run.info.run_id  # the run that holds the images (a pointer followed) is what the key names
    key = cache_key("mix", params, real_digest=real.digest, synthetic_digest=synthetic.digest)
    all_tags = {"synthmix.ratio": str(params["ratio"]), "synthmix.mode": params["mode"]}
    if synthetic_run is not None:
        all_tags["synthmix.synthetic_run"] = synthetic_run.info.run_id
        if "synthmix.generator" in synthetic_run.data.tags:
            all_tags["synthmix.generator"] = synthetic_run.data.tags["synthmix.generator"]
    else:
        all_tags["synthmix.synthetic_data"] = str(Path(params["synthetic_data"]).expanduser().resolve())
    name = run_name or f"mix-{real.name}-r{params['ratio']:g}-{params['mode']}-s{params['seed']}"
    return get_or_run(
        "mix", key, load=lambda: _draw(params, real, report, synthetic, synthetic_skipped), work=lambda run, drawn: _log_mix(*drawn),
        run_name=name, params=params, tags={**all_tags, **(tags or {})}, nested=nested, reuse=reuse,
    )


def _draw(params: dict, real, report, synthetic, synthetic_skipped: int):
    """The mix, drawn and its formats checked before any run exists: (mixed manifest, synthetic candidates, metrics, format note)."""
    import tempfile

    from imaging.mixing import format_note, mix_manifests
    from tracking.lineage import sample_paths, skipped_files

    mixed = mix_manifests(real, synthetic, params["ratio"], params["total"] or None, params["mode"], params["seed"])
    train_rows = mixed.split("train")
    chosen_synthetic = train_rows.frame["source"] == "synthetic"
    note = None
    if chosen_synthetic.any():
        with tempfile.TemporaryDirectory() as folder:
            note = format_note(sample_paths(real.split("train"), folder), sample_paths(synthetic, folder), params["convert"])
    metrics: dict[str, float] = {}
    for label in mixed.classes:
        of_class = train_rows.frame["label"] == label
        metrics[f"mix/synthetic/{metric_key(label)}"] = int((of_class & chosen_synthetic).sum())
        metrics[f"mix/real/{metric_key(label)}"] = int((of_class & ~chosen_synthetic).sum())
    synthetic_total, train_total = int(chosen_synthetic.sum()), len(train_rows)
    skipped = skipped_files(report)
    skipped["data/skipped_images"] = skipped.get("data/skipped_images", 0) + synthetic_skipped
    metrics.update({"mix/synthetic_total": synthetic_total, "mix/real_total": train_total - synthetic_total,
                    "mix/synthetic_fraction": synthetic_total / train_total, **skipped})
    return mixed, synthetic, metrics, note


def _log_mix(mixed, synthetic, metrics: dict, note: str | None):
    """Inside the run: the mix as the run's dataset (with the synthetic set that fed it) and its counts."""
    import mlflow

    from tracking.lineage import log_dataset

    mlflow.set_tag("synthmix.dataset_digest", mixed.digest)
    if note:
        mlflow.set_tag("synthmix.convert_note", note)
        print(f"[synthmix] note: {note}", flush=True)
    log_dataset(mixed, {**{split: mixed.split(split) for split in ("train", "val", "test")}, "synthetic": synthetic})
    mlflow.log_metrics(metrics)
    return metrics, {"manifest": mixed}


def run_command(**params):
    result = mix(params, reuse=True)
    metrics = result.metrics
    click.echo(
        f"{metrics['mix/synthetic_total']} synthetic + {metrics['mix/real_total']} real training images "
        f"(synthetic fraction {metrics['mix/synthetic_fraction']:.3f})  run {result.run_id}"
    )


command = stage_command("mix", __doc__, PARAMS, run_command)
