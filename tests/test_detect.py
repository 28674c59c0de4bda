"""The detect stage: balanced, leak-free splits; chance AUC when "synthetic" images are real ones;
high AUC when they differ; the transfer matrix on constructed generators; bad input; serving.

Real images are MNIST digits (mnist5k's PNGs, copied into folders); "generators" are constructed
from other digits: `copy` (untouched real digits: no detector can tell them apart), `blur`
(blurred digits: easy to tell apart). smallcnn keeps every detector to seconds.
"""
from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from imaging.detection import detector_manifest, split_synthetic, transfer_auc
from imaging.errors import InputError
from imaging.manifest import Manifest
from conftest import REPO, run_cli, runs_of, venv_env

DIGITS = [str(d) for d in range(10)]
QUICK = {"model": "smallcnn", "epochs": 2, "batch_size": 64, "lr": 3e-3, "saliency": 2, "val_fraction": 0.2, "test_fraction": 0.2}


def _mnist_files() -> dict[str, list[Path]]:
    from imaging.datasets import materialise_mnist5k

    root = materialise_mnist5k()
    return {d: sorted(p for p in root.rglob(f"{d}/*.png")) for d in DIGITS}


def _write(files: list[Path], folder: Path, transform=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        if transform is None:
            shutil.copy(path, folder / f"{path.parent.parent.name}-{path.name}")
        else:
            transform(Image.open(path)).save(folder / f"{path.parent.parent.name}-{path.name}")


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(1.5))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    """real/<digit>/ (100 per class), and constructed generators' folders of other digits:
    copy/<digit>/ and blur/<digit>/ (60 per class each), flat/ (copy's images without class folders)."""
    base = tmp_path_factory.mktemp("digits")
    files = _mnist_files()
    for digit, paths in files.items():
        _write(paths[:100], base / "real" / digit)
        _write(paths[100:160], base / "copy" / digit)
        _write(paths[160:220], base / "blur" / digit, _blur)
        _write(paths[100:160], base / "flat")
    return {name: base / name for name in ("real", "copy", "blur", "flat")}


def fake_synthesis_run(folder: Path, generator: str, data: str) -> str:
    """A run shaped like a synthesize run (images/ and dataset/ artifacts, tags, data param) over `folder`'s class folders."""
    import tempfile

    import mlflow

    with mlflow.start_run(run_name=f"synthesize-{generator}") as run:
        mlflow.set_tags({"synthmix.stage": "synthesize", "synthmix.generator": generator})
        mlflow.log_param("data", data)
        rows = []
        for index, path in enumerate(sorted(folder.rglob("*.png"))):
            rows.append({"path": f"images/{path.parent.name}/{path.name}", "label": path.parent.name, "split": "train", "source": "synthetic",
                         "run_id": run.info.run_id, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "seed": 1000 + index, "generator": generator})
        mlflow.log_artifacts(str(folder), "images")
        with tempfile.TemporaryDirectory() as out:
            Manifest(pd.DataFrame(rows), "", f"{generator}-synthetic").save(Path(out))
            mlflow.log_artifacts(out, "dataset")
    return run.info.run_id


# --- the dataset, in memory -----------------------------------------------------

def _frame(count: int, prefix: str, seeds=None, sources=None) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"{prefix}{i}.png" for i in range(count)], "label": [DIGITS[i % 3] for i in range(count)], "split": "train",
        "source": "synthetic", "run_id": "", "sha256": [f"{prefix}{i}" for i in range(count)],
        "seed": seeds if seeds is not None else list(range(count)), "source_image": sources if sources is not None else [""] * count,
    })


def _real(counts=(60, 20, 20)) -> Manifest:
    splits = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    frame = pd.DataFrame({"path": [f"r{i}.png" for i in range(len(splits))], "label": [DIGITS[i % 3] for i in range(len(splits))], "split": splits,
                          "source": "real", "run_id": "", "sha256": [f"r{i}" for i in range(len(splits))]})
    return Manifest(frame, "/real", "real", DIGITS[:3])


def test_splits_follow_the_real_proportions_and_never_share_a_seed_or_source_image():
    # 120 images, but pairs share a seed and triples a source image: groups must stay whole
    seeds = [i // 2 for i in range(120)]
    sources = [f"src{i // 3}" for i in range(120)]
    frame = _frame(120, "s", seeds, sources)
    split = split_synthetic(frame, {"train": 60, "val": 20, "test": 20}, seed=0, key="gen")
    counts = pd.Series(split).value_counts()
    assert abs(counts["train"] - 72) <= 6 and abs(counts["val"] - 24) <= 6 and abs(counts["test"] - 24) <= 6
    for column in ("seed", "source_image"):
        assert frame.assign(split=split).groupby(column)["split"].nunique().max() == 1
    assert list(split) == list(split_synthetic(frame, {"train": 60, "val": 20, "test": 20}, seed=0, key="gen"))  # seeded
    assert list(split) != list(split_synthetic(frame, {"train": 60, "val": 20, "test": 20}, seed=1, key="gen"))


def test_identical_files_land_in_one_split():
    frame = _frame(60, "s")
    frame.loc[30:, "sha256"] = frame.loc[:29, "sha256"].to_numpy()  # every image twice, under other seeds
    split = split_synthetic(frame, {"train": 3, "val": 1, "test": 1}, seed=0, key="gen")
    assert frame.assign(split=split).groupby("sha256")["split"].nunique().max() == 1


def test_every_split_is_balanced_per_class_and_a_generator_splits_alike_alone_or_pooled():
    real = _real()
    a, b = _frame(90, "a"), _frame(150, "b")
    pooled = detector_manifest(real, {"a": Manifest(a, "", "a"), "b": Manifest(b, "", "b")}, seed=3)
    alone = detector_manifest(real, {"a": Manifest(a, "", "a")}, seed=3)
    assert pooled.classes == ["real", "synthetic"]
    for manifest in (pooled, alone):
        for split in ("train", "val", "test"):
            rows = manifest.frame[manifest.frame["split"] == split]
            per = rows.groupby(["class", "label"]).size().unstack()
            assert (per["real"] == per["synthetic"]).all(), (split, per)
        real_rows = manifest.frame[manifest.frame["label"] == "real"]
        assert set(zip(real_rows["path"], real_rows["split"])) <= set(zip(real.frame["path"], real.frame["split"]))  # real splits kept
    split_of = lambda m: dict(zip(m.frame.loc[m.frame["generator"] == "a", "path"], m.frame.loc[m.frame["generator"] == "a", "split"]))
    together, single = split_of(pooled), split_of(alone)
    assert all(together[path] == single[path] for path in set(together) & set(single)) and len(set(together) & set(single)) > 30


def test_too_few_synthetic_images_or_an_empty_real_split_is_refused():
    with pytest.raises(InputError, match="too few synthetic images in g: 2 images"):
        detector_manifest(_real(), {"g": Manifest(_frame(2, "g"), "", "g")})
    with pytest.raises(InputError, match="has no test images"):
        detector_manifest(_real((60, 20, 0)), {"g": Manifest(_frame(50, "g"), "", "g")})
    with pytest.raises(InputError, match="empty"):
        detector_manifest(_real(), {"g": Manifest(_frame(0, "g"), "", "g")})


def test_transfer_auc_is_the_mean_off_the_diagonal():
    matrix = pd.DataFrame([[1.0, 0.6, 0.7], [0.5, 0.9, 0.8], [0.55, 0.65, 0.95]], index=list("abc"), columns=list("abc"))
    assert transfer_auc(matrix) == pytest.approx((0.6 + 0.7 + 0.5 + 0.8 + 0.55 + 0.65) / 6)


# --- the stage ------------------------------------------------------------------

def test_real_images_posing_as_synthetic_give_chance_auc(digits, experiment):
    from pipelines.detect import detect

    result = detect({**QUICK, "data": str(digits["real"]), "synthetic_data": str(digits["copy"])})
    assert abs(result.metrics["test/auc"] - 0.5) < 0.1, result.metrics
    assert result.metrics["test/images"] >= 200


def test_blurred_digits_are_caught_and_the_run_logs_what_a_user_reads(digits, experiment):
    import mlflow

    from pipelines.detect import TAG_DETECTOR, detect

    result = detect({**QUICK, "data": str(digits["real"]), "synthetic_data": str(digits["blur"])})
    assert result.metrics["test/auc"] > 0.95 and result.metrics["test/acc"] > 0.6, result.metrics  # 2 epochs: ranked well, threshold not yet calibrated
    run = mlflow.get_run(result.run_id)
    artifacts = {a.path for folder in ("confusion_matrix", "reports", "roc", "saliency", "predictions", "dataset") for a in mlflow.MlflowClient().list_artifacts(result.run_id, folder)}
    assert {"confusion_matrix/test.png", "reports/test_classification_report.json", "roc/test.png", "saliency/gradcam_test.png", "predictions/test.csv", "dataset/manifest.csv"} <= artifacts
    train_run = mlflow.get_run(run.data.tags[TAG_DETECTOR])
    assert train_run.data.tags["mlflow.parentRunId"] == result.run_id and train_run.data.tags["synthmix.task"] == "detector"
    assert "val/acc" in run.data.metrics
    # the logged test predictions give the logged AUC
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.csv"))
    assert roc_auc_score(table["label"] == "synthetic", table["p_synthetic"]) == pytest.approx(result.metrics["test/auc"])
    # a rerun trains nothing: the detector's train run is reused
    again = detect({**QUICK, "data": str(digits["real"]), "synthetic_data": str(digits["blur"])})
    assert mlflow.get_run(again.run_id).data.tags[TAG_DETECTOR] == train_run.info.run_id


def test_the_transfer_matrix_on_constructed_generators(digits, experiment):
    import mlflow

    from pipelines.detect import detect

    copy = fake_synthesis_run(digits["copy"], "copy", str(digits["real"]))
    blur = fake_synthesis_run(digits["blur"], "blur", str(digits["real"]))
    result = detect({**QUICK, "data": str(digits["real"]), "synthetic_runs": f"{blur},{copy}", "saliency": 0})
    matrix = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="transfer/auc.csv"), index_col=0)
    assert list(matrix.index) == ["blur", "copy"] and list(matrix.columns) == ["blur", "copy"]
    assert matrix.loc["blur", "blur"] > 0.95  # blur is seen
    for trained, tested in (("blur", "copy"), ("copy", "copy")):
        assert abs(matrix.loc[trained, tested] - 0.5) < 0.15, matrix  # a copy is invisible, to its own detector and to blur's
    # (a copy detector has learnt nothing real: its ranking of blurred digits is arbitrary, so it is not asserted)
    assert result.metrics["detect/transfer_auc"] == pytest.approx((matrix.loc["blur", "copy"] + matrix.loc["copy", "blur"]) / 2, abs=1e-4)
    assert result.metrics["test/auc/blur"] > 0.9 and abs(result.metrics["test/auc/copy"] - 0.5) < 0.15
    children = [r for r in runs_of(experiment, "detect") if r.data.tags.get("synthmix.transfer_of") == result.run_id]
    assert sorted(r.data.tags["synthmix.generators"] for r in children) == ["blur", "copy"]
    assert all(r.data.tags["mlflow.parentRunId"] == result.run_id for r in children)


def test_mlflow_run_on_a_flat_folder_as_a_user_types_it_and_the_detector_serves_through_the_classifier_pyfunc(digits, experiment, tmp_path):
    import subprocess
    import sys

    import mlflow

    from pipelines.detect import TAG_DETECTOR
    from pipelines.register import register

    command = [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", "detect", "--env-manager", "local",
               "-P", f"data={digits['real']}", "-P", f"synthetic_data={digits['flat']}", "-P", "val_fraction=0.2", "-P", "test_fraction=0.2",
               "-P", "model=smallcnn", "-P", "epochs=2", "-P", "batch_size=64", "-P", "lr=0.003", "-P", "saliency=0", "-P", "device=cpu"]
    env = {k: v for k, v in venv_env().items() if k != "MLFLOW_EXPERIMENT_ID"}  # mlflow run takes a name or an id, not both
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = runs_of(experiment, "detect")
    assert run.info.status == "FINISHED" and abs(run.data.metrics["test/auc"] - 0.5) < 0.15  # copies of real digits
    assert run.data.params["synthetic_data"] == str(digits["flat"])
    train_run = run.data.tags[TAG_DETECTOR]
    model = mlflow.pyfunc.load_model(f"runs:/{train_run}/model")
    images = sorted((digits["real"] / "3").iterdir())[:2]
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]}))
    assert list(answer.columns) == ["label", "score", "p_real", "p_synthetic"]
    assert set(answer["label"]) <= {"real", "synthetic"} and np.allclose(answer["p_real"] + answer["p_synthetic"], 1, atol=1e-5)
    done = register({"parent_run": run.info.run_id})
    assert done.name == f"{digits['real'].name}-detector" and done.run_id == train_run and done.moved


def test_bad_input_is_one_line_and_leaves_no_run(digits, experiment, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(digits["real"], other)
    cases = []
    # a synthesis run of another dataset
    foreign = fake_synthesis_run(digits["copy"], "copy", str(other))
    cases.append((["--synthetic-runs", foreign], "was synthesized from"))
    # images of another size
    big = tmp_path / "big"
    for digit in DIGITS[:3]:
        (big / digit).mkdir(parents=True)
        for index, path in enumerate(sorted((digits["copy"] / digit).iterdir())[:20]):
            Image.open(path).resize((32, 32)).save(big / digit / f"{index}.png")
    cases.append((["--synthetic-data", str(big)], "32x32x1"))
    # another file format
    jpeg = tmp_path / "jpeg"
    for digit in DIGITS:
        (jpeg / digit).mkdir(parents=True)
        for index, path in enumerate(sorted((digits["copy"] / digit).iterdir())[:10]):
            Image.open(path).save(jpeg / digit / f"{index}.jpg", quality=95)
    cases.append((["--synthetic-data", str(jpeg)], "JPEG files but the real ones are PNG"))
    # too few images for a split
    few = tmp_path / "few"
    _write(sorted((digits["copy"] / "1").iterdir())[:2], few)
    cases.append((["--synthetic-data", str(few)], "too few synthetic images"))
    # one class empty: a folder of generated images that holds none
    (tmp_path / "empty").mkdir()
    cases.append((["--synthetic-data", str(tmp_path / "empty")], "holds no images"))
    # nothing, or both
    cases.append(([], "neither of synthetic_runs and synthetic_data"))
    cases.append((["--synthetic-data", str(digits["copy"]), "--synthetic-runs", foreign], "both of synthetic_runs and synthetic_data"))
    cases.append((["--synthetic-data", str(tmp_path / "missing")], "is not a folder"))
    cases.append((["--synthetic-data", str(digits["copy"]), "--model", "resnet5O"], "did you mean resnet50"))
    from click.testing import CliRunner

    from pipelines.detect import command

    for extra, message in cases[1:]:  # in-process: the same click command, without a process start per case
        done = CliRunner().invoke(command, ["--data", str(digits["real"]), "--model", "smallcnn", *extra])
        assert done.exit_code == 2, (extra, done.output[-2000:])
        assert message in done.output and done.output.startswith("error: ") and done.output.count("\n") == 1, (extra, done.output)
    done = run_cli("detect", "--data", str(digits["real"]), "--model", "smallcnn", *cases[0][0])  # and once as a user types it
    assert done.returncode == 2 and cases[0][1] in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert runs_of(experiment, "detect") == [] and runs_of(experiment, "train") == []
