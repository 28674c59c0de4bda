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

from pipelines._cli import TABLE, data_params, defaults, option, stage_command

PARAMS = [
    *data_params(),
    option("dataset_run", "", "Corrupt the dataset logged by this run (a mix or corrupt run) instead of --data."),
    option("kind", "salt_pepper", "Corruption family: salt_pepper, gradient_noise, blend or an ImageNet-C family (gaussian_noise, defocus_blur, snow, jpeg_compression, ...)."),
    option("severity", 3, "Severity 1 (mild) to 5 (harsh).", click.IntRange(1, 5)),
    option("level", -1.0, "Continuous level overriding the severity where the family has one (salt_pepper/gradient_noise: fraction of pixels; blend: weight); -1 uses the severity's.", float),
    option("split", "test", "Which split to corrupt; the others pass through untouched.", click.Choice(["train", "val", "test"])),
    option("seed", 0, "Seed of the random corruption.", int),
    TABLE,
]
DEFAULTS = defaults(PARAMS)
CHUNK = 256  # images decoded and corrupted together


def corrupt_split(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Corrupt with `params` (DEFAULTS filled in); returns a StageResult whose manifest is the corrupted dataset."""
    from imaging.corruptions import severity_level
    from imaging.errors import InputError
    from tracking.lineage import load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    level = None if params["level"] is None or params["level"] < 0 else float(params["level"])
    severity_level(params["kind"], params["severity"], level=level)  # kind, severity and level are checked before any work
    if params["split"] not in ("train", "val", "test"):
        raise InputError(f"--split {params['split']!r} is not a split; use train, val or test.")
    manifest, _ = load_manifest(params)
    chosen = manifest.frame.index[manifest.frame["split"] == params["split"]]
    if len(chosen) == 0:
        raise InputError(f"dataset {manifest.name} has no {params['split']} images to corrupt; pick another --split.")
    name = run_name or f"corrupt-{manifest.name}-{params['split']}-{params['kind']}{params['severity']}-s{params['seed']}"
    all_tags = {"synthmix.corruption": params["kind"], "synthmix.severity": str(params["severity"]), **(tags or {})}
    return get_or_run(
        # the digest names the data; which run (or pointer) logged that manifest does not change what is written
        "corrupt", cache_key("corrupt", params, ("dataset_run",), digest=manifest.digest), load=lambda: None,
        work=lambda run, _: _write(run, params, manifest, chosen, level),
        run_name=name, params=params, tags=all_tags, nested=nested, reuse=reuse,
    )


def _write(run, params: dict, manifest, chosen, level: float | None):
    """Decode, corrupt and write the chosen rows as the run's artifacts; log the resulting dataset."""
    import tempfile
    from pathlib import Path

    import mlflow
    from tqdm.auto import tqdm

    from imaging.manifest import Manifest
    from tracking.lineage import log_dataset

    frame = manifest.frame.copy()
    for column in ("corruption", "severity", "level", "source_path", "source_sha256"):
        frame[column] = ""
    tables = set()  # the published severity tables the images' sizes chose
    paths = manifest.local_paths()  # one per row, in the frame's (range) index order
    with tempfile.TemporaryDirectory() as folder:
        for start in tqdm(range(0, len(chosen), CHUNK), desc=f"corrupting {params['split']}", unit="chunk"):
            tables |= _corrupt_chunk(Path(folder), run.info.run_id, params, manifest, paths, frame, chosen[start:start + CHUNK], start, level)
        mlflow.log_artifacts(str(Path(folder) / "images"), "images")
    mlflow.set_tag("synthmix.corruption_table", ",".join(sorted(tables)))
    result = Manifest(frame, manifest.root, f"{manifest.name}-{params['kind']}{params['severity']}", list(manifest.classes))
    log_dataset(result, {"source": manifest.split(params["split"]), params["split"]: result.split(params["split"])})
    print(f"[synthmix] wrote {len(chosen)} corrupted {params['split']} images", flush=True)
    metrics = {"corrupt/images": len(chosen)}
    mlflow.log_metrics(metrics)
    return metrics, {"manifest": result}


def _corrupt_chunk(out_root, run_id: str, params: dict, manifest, paths, frame, rows, start: int, level: float | None) -> set[str]:
    """Decode, corrupt (images of one shape as one batch) and write `rows`, pointing their manifest rows at the copies; the tables used."""
    import hashlib
    from pathlib import Path

    import numpy as np

    from imaging.corruptions import corrupt
    from imaging.images import open_image, suffix_for, to_array, write_as
    from pipelines._cli import corruption_table

    decoded = []
    for row in rows:
        image = open_image(paths[row].read_bytes(), params["max_pixels"])
        decoded.append((image.format or "PNG", to_array(image)))
    shapes: dict[tuple, list[int]] = {}
    for position, (_, array) in enumerate(decoded):
        shapes.setdefault(array.shape, []).append(position)
    tables = set()
    label_index = {name: i for i, name in enumerate(manifest.classes)}
    for shape, positions in shapes.items():
        table = corruption_table(params["table"], min(shape[:2]))
        tables.add(table)
        labels = np.array([label_index[frame.at[rows[p], "label"]] for p in positions])
        corrupted = corrupt(np.stack([decoded[p][1] for p in positions]), params["kind"], params["severity"], seed=params["seed"] * 1_000_003 + start, level=level, labels=labels, table=table)
        for p, array in zip(positions, corrupted):
            row, source = rows[p], frame.at[rows[p], "path"]
            relative = f"images/{frame.at[row, 'label']}/{Path(source).stem}-{hashlib.sha1(source.encode()).hexdigest()[:6]}{suffix_for(decoded[p][0])}"
            sha256 = write_as(out_root, relative, array, decoded[p][0])
            frame.loc[row, ["source_path", "source_sha256"]] = [source, frame.at[row, "sha256"]]
            frame.loc[row, ["path", "run_id", "sha256"]] = [relative, run_id, sha256]
            frame.loc[row, ["corruption", "severity", "level"]] = [params["kind"], str(params["severity"]), "" if level is None else str(level)]
    return tables


def run_command(**params):
    result = corrupt_split(params, reuse=True)
    click.echo(f"run {result.run_id}")


command = stage_command("corrupt", __doc__, PARAMS, run_command)
