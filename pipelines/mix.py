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

from pipelines._cli import DATA_DEFAULTS, add_options, data_kwargs, data_options, handle_errors, optional

DEFAULTS = {
    "data": "mnist5k",
    "synthetic_run": "",
    "synthetic_data": "",
    "ratio": 0.5,  # synthetic fraction of the training split
    "total": 0,  # training-set size in images for mode=replace; 0 = the real train split's size
    "mode": "replace",
    "convert": False,
    "seed": 0,
    **DATA_DEFAULTS,
}
MODES = ("replace", "add")  # as imaging.mixing.MODES, repeated so --help needs no pandas


def synthetic_source(params: dict) -> tuple[str | None, str | None]:
    """(synthetic_run, synthetic_data): exactly one of them is given."""
    from imaging.errors import InputError

    run_id, folder = optional(params["synthetic_run"]), optional(params["synthetic_data"])
    if bool(run_id) == bool(folder):
        given = "both" if run_id else "neither"
        raise InputError(f"{given} of synthetic_run and synthetic_data given; pass exactly one: a synthesize run's id (--synthetic-run) or a folder of class sub-folders (--synthetic-data).")
    return run_id, folder


def load_synthetic(params: dict):
    """The synthetic candidates (all as train rows, local ones with absolute paths), the skipped-file count and the run, if any."""
    from pathlib import Path

    from imaging.datasets import scan_folder
    from imaging.errors import InputError
    from imaging.manifest import SPLITS, Manifest
    from imaging.mixing import absolute_paths

    run_id, folder = synthetic_source(params)
    if run_id:
        import mlflow

        from tracking.runs import get_run

        run = get_run(run_id, "synthetic_run")
        try:
            downloaded = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="dataset")
        except Exception as error:
            raise InputError(f"synthetic_run {run.info.run_id} has no dataset/ artifact; pass the id of a synthesize run, or a folder with --synthetic-data.") from error
        manifest = Manifest.load(Path(downloaded))
        rows = manifest.frame[manifest.frame["source"] == "synthetic"]
        if rows.empty:
            raise InputError(f"synthetic_run {run.info.run_id}'s dataset/manifest.csv lists no rows with source 'synthetic'; pass the id of a synthesize run.")
        manifest = Manifest(rows.copy(), manifest.root, manifest.name, sorted(rows["label"].astype(str).unique()))
        return absolute_paths(manifest), 0, run

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"synthetic_data {root} is not a folder; pass a folder whose sub-folders are the classes, holding synthetic images.")
    split_folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SPLITS)
    if split_folders:
        raise InputError(f"synthetic_data {root} has split folders ({', '.join(split_folders)}); synthetic images are only trained on, so pass a folder of class sub-folders (e.g. {root / 'train'}).")
    manifest, report = scan_folder(root, val_fraction=0, test_fraction=0, skip_bad_images=params["skip_bad_images"], max_pixels=params["max_pixels"], name=f"{root.name}-synthetic")
    manifest.frame["source"] = "synthetic"
    manifest.frame["split"] = "train"
    return absolute_paths(manifest), report.skipped, None


def sample_paths(manifest, folder) -> list:
    """Local files of a few rows spread over `manifest`, downloading run artifacts one by one into `folder`."""
    from pathlib import Path

    import mlflow

    from imaging.errors import InputError
    from imaging.mixing import sample_rows

    rows = sample_rows(manifest)
    paths = []
    for path, run_id in zip(rows.frame["path"], rows.frame["run_id"]):
        if not run_id:
            paths.append(Path(rows.root) / path)
            continue
        try:
            paths.append(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(folder))))
        except Exception as error:
            raise InputError(f"the synthetic manifest lists {path} in run {run_id}, but that run has no such artifact; rerun the synthesize stage.") from error
    return paths


def metric_key(name: str) -> str:
    import re

    return re.sub(r"[^\w.\- /]", "_", name)  # what MLflow accepts in a metric name


def mix(params: dict, *, nested: bool = False, run_name: str | None = None, reuse_finished: bool = False) -> dict:
    """Mix with `params` (DEFAULTS filled in); returns the run id, the achieved counts as metrics, and the manifest."""
    import tempfile
    from pathlib import Path

    import mlflow

    from imaging.datasets import load_dataset
    from imaging.mixing import check_ratio, format_note, mix_manifests
    from tracking.runs import quiet_mlflow, stage_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    check_ratio(params["ratio"], params["mode"])
    synthetic_source(params)  # before the real dataset is scanned, which can take a while

    real, report = load_dataset(params["data"], **data_kwargs(params))
    synthetic, synthetic_skipped, synthetic_run = load_synthetic(params)
    mixed = mix_manifests(real, synthetic, params["ratio"], params["total"] or None, params["mode"], params["seed"])
    train_rows = mixed.split("train")
    chosen_synthetic = train_rows.frame["source"] == "synthetic"
    note = None
    if chosen_synthetic.any():
        with tempfile.TemporaryDirectory() as folder:
            note = format_note(sample_paths(real.split("train"), folder), sample_paths(synthetic, folder), params["convert"])

    hashed = {**params, "real_digest": real.digest, "synthetic_digest": synthetic.digest}
    if reuse_finished:
        from tracking.runs import reuse

        done = reuse("mix", hashed)
        if done is not None:
            return {**done, "manifest": mixed}

    metrics: dict[str, float] = {}
    for label in mixed.classes:
        of_class = train_rows.frame["label"] == label
        metrics[f"mix/synthetic/{metric_key(label)}"] = int((of_class & chosen_synthetic).sum())
        metrics[f"mix/real/{metric_key(label)}"] = int((of_class & ~chosen_synthetic).sum())
    synthetic_total, train_total = int(chosen_synthetic.sum()), len(train_rows)
    metrics.update({
        "mix/synthetic_total": synthetic_total,
        "mix/real_total": train_total - synthetic_total,
        "mix/synthetic_fraction": synthetic_total / train_total,
        "data/skipped_images": report.skipped + synthetic_skipped,
    })

    tags = {"synthmix.ratio": str(params["ratio"]), "synthmix.mode": params["mode"], "synthmix.dataset_digest": mixed.digest}
    if synthetic_run is not None:
        tags["synthmix.synthetic_run"] = synthetic_run.info.run_id
        if "synthmix.generator" in synthetic_run.data.tags:
            tags["synthmix.generator"] = synthetic_run.data.tags["synthmix.generator"]
    else:
        tags["synthmix.synthetic_data"] = str(Path(params["synthetic_data"]).expanduser().resolve())
    if note:
        tags["synthmix.convert_note"] = note
    name = run_name or f"mix-{real.name}-r{params['ratio']:g}-{params['mode']}-s{params['seed']}"
    with stage_run("mix", name, params, tags, nested=nested, hashed=hashed) as run:
        for split in ("train", "val", "test"):
            rows = mixed.split(split)
            if len(rows):
                mlflow.log_input(rows.mlflow_dataset(), context=split)
        mlflow.log_input(synthetic.mlflow_dataset(), context="synthetic")  # lineage: which synthetic set fed this mix
        with tempfile.TemporaryDirectory() as folder:
            mixed.save(Path(folder))
            mlflow.log_artifacts(folder, "dataset")
        mlflow.log_metrics(metrics)
        if note:
            print(f"[synthmix] note: {note}", flush=True)
        return {"run_id": run.info.run_id, "metrics": metrics, "manifest": mixed}


@click.command("mix", help=__doc__.split("\n\n")[0])
@add_options(data_options(help_suffix=" These are the real images; their val and test splits pass through untouched."))
@click.option("--synthetic-run", default="", help="Take the synthetic images from this synthesize run's dataset/ manifest. Give this or --synthetic-data.")
@click.option("--synthetic-data", default="", help="Take the synthetic images from this folder of class sub-folders (no train/ val/ test/). Give this or --synthetic-run.")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Synthetic fraction of the training split, from 0 (all real) to 1 (all synthetic); 0.6 means synthetic:real = 6:4.")
@click.option("--total", type=click.IntRange(0), default=0, show_default=True, help="Training-set size in images (mode=replace only); 0 = the real train split's size.")
@click.option("--mode", type=click.Choice(MODES), default="replace", show_default=True, help="replace: fixed training-set size, synthetic images replace real ones; add: all real images plus ratio/(1-ratio) times as many synthetic ones.")
@click.option("--convert", type=bool, default=False, show_default=True, help="true: accept synthetic images of another size or colour mode (decoding converts them to the real format); false: stop with an error.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of which real and synthetic images are picked per class.")
@handle_errors
def command(**params):
    result = mix(params)
    metrics = result["metrics"]
    click.echo(
        f"{metrics['mix/synthetic_total']} synthetic + {metrics['mix/real_total']} real training images "
        f"(synthetic fraction {metrics['mix/synthetic_fraction']:.3f})  run {result['run_id']}"
    )
