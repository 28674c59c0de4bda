"""corrupt: write a corrupted copy of one split of a dataset as run artifacts.

    python -m pipelines corrupt --data mnist5k --kind salt_pepper --severity 3 --split test

Each image of the split is decoded at its own size and colour mode, corrupted
(imaging/corruptions.py) and written as `images/<class>/<file>` in the source's
format (PNG stays PNG, JPEG stays JPEG). The run's `dataset/` manifest is the
whole dataset with that split's rows pointing at the corrupted copies (columns
`corruption`, `severity`, `level`, `source_path`, `source_sha256` say where
each came from), so `train --dataset-run <this run>` trains on it as it is.
"""
from __future__ import annotations

import click

from pipelines._cli import DATA_DEFAULTS, add_options, data_options, handle_errors

DEFAULTS = {
    "data": "mnist5k",
    "dataset_run": "",
    "kind": "salt_pepper",
    "severity": 3,
    "level": -1.0,
    "split": "test",
    "seed": 0,
    **DATA_DEFAULTS,
}
CHUNK = 256  # images decoded and corrupted together


def corrupt_split(params: dict, *, nested: bool = False, run_name: str | None = None) -> dict:
    import hashlib
    import io
    import tempfile
    from pathlib import Path

    import mlflow
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from imaging.corruptions import corrupt, severity_level
    from imaging.errors import InputError
    from imaging.images import open_image, to_array
    from imaging.manifest import Manifest
    from pipelines.train import load_training_manifest
    from tracking.runs import quiet_mlflow, stage_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    level = None if params["level"] is None or params["level"] < 0 else float(params["level"])
    severity_level(params["kind"], params["severity"])  # validates kind and severity before any work
    if params["split"] not in ("train", "val", "test"):
        raise InputError(f"--split {params['split']!r} is not a split; use train, val or test.")
    manifest, _ = load_training_manifest(params)
    chosen = manifest.frame.index[manifest.frame["split"] == params["split"]]
    if len(chosen) == 0:
        raise InputError(f"dataset {manifest.name} has no {params['split']} images to corrupt; pick another --split.")
    paths = manifest.local_paths()
    label_index = {name: i for i, name in enumerate(manifest.classes)}

    name = run_name or f"corrupt-{manifest.name}-{params['split']}-{params['kind']}{params['severity']}-s{params['seed']}"
    tags = {"synthmix.corruption": params["kind"], "synthmix.severity": str(params["severity"])}
    with stage_run("corrupt", name, params, tags, nested=nested, hashed={**params, "digest": manifest.digest}) as run, tempfile.TemporaryDirectory() as folder:
        out_root = Path(folder)
        frame = manifest.frame.copy()
        for column in ("corruption", "severity", "level", "source_path", "source_sha256"):
            frame[column] = ""
        for start in tqdm(range(0, len(chosen), CHUNK), desc=f"corrupting {params['split']}", unit="chunk"):
            rows = chosen[start:start + CHUNK]
            decoded = []
            for row in rows:
                data = paths[row].read_bytes()
                image = open_image(data, params["max_pixels"])
                decoded.append((image.format or "PNG", to_array(image)))
            # images of one shape are corrupted as one batch
            shapes: dict[tuple, list[int]] = {}
            for position, (_, array) in enumerate(decoded):
                shapes.setdefault(array.shape, []).append(position)
            for shape, positions in shapes.items():
                batch = np.stack([decoded[p][1] for p in positions])
                labels = np.array([label_index[frame.at[rows[p], "label"]] for p in positions])
                corrupted = corrupt(batch, params["kind"], params["severity"], seed=params["seed"] * 1_000_003 + start, level=level, labels=labels)
                for p, array in zip(positions, corrupted):
                    row = rows[p]
                    fmt = decoded[p][0]
                    source = frame.at[row, "path"]
                    stem = Path(source).stem
                    suffix = ".jpg" if fmt == "JPEG" else ".png"
                    relative = f"images/{frame.at[row, 'label']}/{stem}-{hashlib.sha1(source.encode()).hexdigest()[:6]}{suffix}"
                    buffer = io.BytesIO()
                    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
                    picture.save(buffer, format="JPEG" if fmt == "JPEG" else "PNG", **({"quality": 95} if fmt == "JPEG" else {}))
                    (out_root / relative).parent.mkdir(parents=True, exist_ok=True)
                    (out_root / relative).write_bytes(buffer.getvalue())
                    frame.loc[row, ["source_path", "source_sha256"]] = [source, frame.at[row, "sha256"]]
                    frame.loc[row, ["path", "run_id", "sha256"]] = [relative, run.info.run_id, hashlib.sha256(buffer.getvalue()).hexdigest()]
                    frame.loc[row, ["corruption", "severity", "level"]] = [params["kind"], str(params["severity"]), "" if level is None else str(level)]
        mlflow.log_artifacts(str(out_root / "images"), "images")
        result = Manifest(frame, manifest.root, f"{manifest.name}-{params['kind']}{params['severity']}", list(manifest.classes))
        with tempfile.TemporaryDirectory() as manifest_folder:
            result.save(Path(manifest_folder))
            mlflow.log_artifacts(manifest_folder, "dataset")
        mlflow.log_input(manifest.split(params["split"]).mlflow_dataset(), context="source")
        mlflow.log_input(result.split(params["split"]).mlflow_dataset(), context=params["split"])
        mlflow.log_metric("corrupt/images", len(chosen))
        print(f"[synthmix] wrote {len(chosen)} corrupted {params['split']} images", flush=True)
        return {"run_id": run.info.run_id, "manifest": result}


@click.command("corrupt", help=__doc__.split("\n\n")[0])
@add_options(data_options())
@click.option("--dataset-run", default="", help="Corrupt the dataset logged by this run (a mix or corrupt run) instead of --data.")
@click.option("--kind", default="salt_pepper", show_default=True, help="Corruption family: salt_pepper, gradient_noise, blend or an ImageNet-C family (gaussian_noise, defocus_blur, snow, jpeg_compression, ...).")
@click.option("--severity", type=click.IntRange(1, 5), default=3, show_default=True, help="Severity 1 (mild) to 5 (harsh).")
@click.option("--level", type=float, default=-1.0, show_default=True, help="Continuous level overriding the severity where the family has one (salt_pepper/gradient_noise: fraction of pixels; blend: weight); -1 uses the severity's.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="Which split to corrupt; the others pass through untouched.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random corruption.")
@handle_errors
def command(**params):
    result = corrupt_split(params)
    click.echo(f"run {result['run_id']}")
