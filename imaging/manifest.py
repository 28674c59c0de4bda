"""Manifests: a dataset as one row per image.

Columns (extra ones, such as a synthetic image's `seed` or `prompt`, ride along):
  path    where the bytes are: relative to the manifest's root for real images,
          the artifact path inside run `run_id` for synthetic / corrupted ones
  label   class name
  split   train, val or test
  source  real or synthetic (corrupted copies keep their source and add `corruption`)
  run_id  the run whose artifacts hold the image ('' for files under root)
  sha256  of the file's bytes

The digest covers every row's path, label, split, source, run and sha256, so two
manifests with the same digest describe the same bytes with the same labels.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from imaging.errors import InputError

COLUMNS = ["path", "label", "split", "source", "run_id", "sha256"]
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    frame: pd.DataFrame
    root: str  # folder that real-image paths are relative to
    name: str  # short name shown in the MLflow UI, e.g. "mnist5k"
    classes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for column in COLUMNS:
            if column not in self.frame.columns:
                self.frame[column] = ""
        self.frame = self.frame.reset_index(drop=True)
        self.frame["run_id"] = self.frame["run_id"].fillna("").astype(str)
        if not self.classes:
            self.classes = sorted(self.frame["label"].astype(str).unique())

    @cached_property
    def digest(self) -> str:
        rows = self.frame[COLUMNS].astype(str).sort_values(["split", "path", "run_id"])
        payload = rows.to_csv(index=False).encode() + json.dumps(self.classes).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.frame)

    def split(self, name: str) -> "Manifest":
        return Manifest(self.frame[self.frame["split"] == name].copy(), self.root, f"{self.name}-{name}", list(self.classes))

    def label_indices(self) -> list[int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[label] for label in self.frame["label"].astype(str)]

    def local_paths(self) -> list[Path]:
        """A local file for every row: run artifacts are read in place from a local artifact store,
        and downloaded (once per run folder) from a remote one."""
        folders: dict[tuple[str, str], Path] = {}
        paths = []
        for path, run_id in zip(self.frame["path"], self.frame["run_id"]):
            if not run_id:
                paths.append(Path(self.root) / path)
                continue
            top = path.split("/", 1)[0]
            if (run_id, top) not in folders:
                folders[(run_id, top)] = _artifact_folder(run_id, top)
            rest = path.split("/", 1)[1] if "/" in path else ""
            paths.append(folders[(run_id, top)] / rest if rest else folders[(run_id, top)])
        return paths

    def meta(self) -> dict:
        return {"name": self.name, "root": self.root, "classes": self.classes, "digest": self.digest, "rows": len(self)}

    def save(self, folder: Path) -> tuple[Path, Path]:
        """manifest.csv plus manifest.json (root, classes, digest) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / "manifest.csv", folder / "manifest.json"
        self.frame.to_csv(csv_path, index=False)
        json_path.write_text(json.dumps(self.meta(), indent=2))
        return csv_path, json_path

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        folder = Path(folder)
        csv_path, json_path = folder / "manifest.csv", folder / "manifest.json"
        if not csv_path.is_file() or not json_path.is_file():
            raise InputError(f"{folder} holds no manifest.csv and manifest.json; pass the folder a synthmix run logged as its dataset.")
        meta = json.loads(json_path.read_text())
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        return cls(frame, meta["root"], meta["name"], list(meta["classes"]))

    def mlflow_dataset(self):
        """This manifest as an MLflow dataset, for `mlflow.log_input`."""
        import warnings

        import mlflow.data

        with warnings.catch_warnings():  # a local folder matches more than one MLflow source type
            warnings.simplefilter("ignore")
            # plain object columns: MLflow infers the schema of these faster than of Arrow strings
            return mlflow.data.from_pandas(self.frame[COLUMNS].astype(object), source=self.root or "synthmix", targets="label", name=self.name, digest=self.digest)


def _artifact_folder(run_id: str, top: str) -> Path:
    """Where a run's artifact folder can be read: in place when the artifact store is a local folder."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = MlflowClient().get_run(run_id).info.artifact_uri
    if "://" not in uri or uri.startswith("file://"):
        local = Path(uri.removeprefix("file://")) / top
        if local.is_dir():
            return local
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=top))


def native_format(manifest: Manifest, sample: int = 64) -> tuple[int, int]:
    """(channels, size) of the train images: colour if any sampled image is, the most common side."""
    from collections import Counter

    from imaging.images import open_image, to_array

    rows = manifest.split("train")
    if (rows.frame["source"] == "real").any():  # a mix is shaped like its real images, whatever the synthetic ones are
        rows = real_only(rows)
    # only the sampled rows: local_paths may have to download run artifacts
    paths = Manifest(rows.frame.head(sample).copy(), rows.root, rows.name, rows.classes).local_paths()
    channels, sides = 1, Counter()
    for path in paths:
        array = to_array(open_image(path.read_bytes()))
        channels = max(channels, array.shape[2])
        sides[max(array.shape[:2])] += 1
    return channels, sides.most_common(1)[0][0]


def real_only(manifest: Manifest) -> Manifest:
    """The rows of real images (val and test are scored on these only)."""
    return Manifest(manifest.frame[manifest.frame["source"] == "real"].copy(), manifest.root, manifest.name, list(manifest.classes))
