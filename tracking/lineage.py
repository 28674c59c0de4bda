"""Datasets in and out of runs, in one place.

A stage reads its dataset with `load_manifest` (a folder or `mnist5k` scanned
and validated, or the manifest a mix / corrupt / synthesize run logged) and
records what it read or wrote with `log_dataset`: the manifest as the artifact
`dataset/` (manifest.csv + manifest.json) and each split as an MLflow dataset
input, so the UI links every run to the data that fed it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from imaging.errors import InputError
from imaging.manifest import Manifest

DATASET_ARTIFACT = "dataset"


def run_manifest(run_id: str, what: str = "dataset_run") -> Manifest:
    """The manifest run `run_id` logged under dataset/."""
    from tracking.runs import get_run

    run = get_run(run_id, what)
    try:
        folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=DATASET_ARTIFACT)
    except Exception as error:
        raise InputError(f"{what} {run.info.run_id} has no {DATASET_ARTIFACT}/ artifact; pass a mix, corrupt or synthesize run, or use --data.") from error
    return Manifest.load(Path(folder))


SPLIT_OPTIONS = ("val_fraction", "test_fraction", "split_seed", "skip_bad_images", "max_pixels")


def load_manifest(params: dict):
    """(manifest, scan report or None): `dataset_run`'s logged manifest, else `data` scanned and validated."""
    from imaging.datasets import load_dataset

    if params.get("dataset_run") not in ("", None):
        return run_manifest(params["dataset_run"], "dataset_run"), None
    return load_dataset(params["data"], **{key: params[key] for key in SPLIT_OPTIONS if key in params})


def skipped_files(report) -> dict[str, int]:
    """What a scan left out, as metrics: unreadable images and files that are not images by name."""
    if report is None:
        return {}
    return {"data/skipped_images": report.skipped, "data/ignored_files": report.ignored}


def log_dataset(manifest: Manifest, inputs: dict[str, Manifest] | None = None, *, artifact: bool = True) -> None:
    """Log `manifest` as dataset/ of the active run and `inputs` ({context: manifest}) with `mlflow.log_input`.

    Default inputs: each non-empty split of `manifest` under its split name.
    """
    if inputs is None:
        inputs = {split: manifest.split(split) for split in ("train", "val", "test")}
    for context, rows in inputs.items():
        if len(rows):
            mlflow.log_input(rows.mlflow_dataset(), context=context)
    if artifact:
        with tempfile.TemporaryDirectory() as folder:
            manifest.save(Path(folder))
            mlflow.log_artifacts(folder, DATASET_ARTIFACT)
