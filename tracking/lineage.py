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
from imaging.images import DEFAULT_MAX_PIXELS
from imaging.manifest import Manifest
from tracking.runs import EMPTY, get_run

DATASET_ARTIFACT = "dataset"


def run_manifest(run_id: str, what: str = "dataset_run") -> Manifest:
    """The manifest run `run_id` logged under dataset/."""
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

    if str(params.get("dataset_run") or "").strip() not in EMPTY:
        return run_manifest(params["dataset_run"], "dataset_run"), None
    return load_dataset(params["data"], **{key: params[key] for key in SPLIT_OPTIONS if key in params})


def synthetic_source(params: dict, key: str = "synthetic_run") -> tuple[str | None, str | None]:
    """(run id, folder) of the synthetic images: exactly one of params[key] (a synthesize run) and
    params["synthetic_data"] (a folder) is given; InputError otherwise."""
    run_id, folder = [None if str(params.get(k) or "").strip() in EMPTY else str(params[k]).strip() for k in (key, "synthetic_data")]
    if bool(run_id) == bool(folder):
        given = "both" if run_id else "neither"
        raise InputError(f"{given} of {key} and synthetic_data given; pass exactly one: a synthesize run's id (--{key.replace('_', '-')}) "
                         "or a folder of class sub-folders (--synthetic-data).")
    return run_id, folder


def load_synthetic(params: dict):
    """(synthetic candidates, all as train rows with absolute local paths; skipped-file count; the synthesize run or None),
    from params["synthetic_run"] or params["synthetic_data"] (exactly one)."""
    from imaging.datasets import scan_folder
    from imaging.manifest import SPLITS
    from imaging.mixing import absolute_paths
    run_id, folder = synthetic_source(params)
    if run_id:
        run = get_run(run_id, "synthetic_run")
        manifest = run_manifest(run.info.run_id, "synthetic_run")
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
    manifest, report = scan_folder(root, val_fraction=0, test_fraction=0, skip_bad_images=params.get("skip_bad_images", False),
                                   max_pixels=params.get("max_pixels", DEFAULT_MAX_PIXELS), name=f"{root.name}-synthetic")
    manifest.frame["source"] = "synthetic"
    manifest.frame["split"] = "train"
    return absolute_paths(manifest), report.skipped, None


def check_synthetic(params: dict, needed: bool = True) -> None:
    """A study or sweep's synthetic source, checked before any run: at most one of synthetic_run and
    synthetic_data (neither: it synthesizes), and the one given exists (when `needed`)."""
    if params.get("synthetic_run", "") in EMPTY and params.get("synthetic_data", "") in EMPTY:
        return
    run_id, _ = synthetic_source(params)
    if not needed:
        return
    if run_id:
        get_run(run_id, "synthetic_run")
    else:
        load_synthetic(params)


def sample_paths(manifest: Manifest, folder) -> list[Path]:
    """Local files of a few rows spread over `manifest`, downloading run artifacts one by one into `folder`."""
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
            _log_input(rows.mlflow_dataset(), context)
    if artifact:
        with tempfile.TemporaryDirectory() as folder:
            manifest.save(Path(folder))
            mlflow.log_artifacts(folder, DATASET_ARTIFACT)


def _log_input(dataset, context: str, attempts: int = 4) -> None:
    """mlflow.log_input, again after a moment when another worker inserted the same dataset at the same time
    (MLflow looks a dataset up by digest, then inserts it: two workers logging one dataset together race)."""
    import time

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except Exception as error:
            text = str(error).lower()
            if attempt + 1 == attempts or not ("unique" in text or "duplicate" in text):
                raise
            time.sleep(0.2 * (attempt + 1))
