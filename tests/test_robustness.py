"""corrupt stage, training with on-the-fly corruption, robustness metrics (CE, mCE)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import make_folder, run_cli, runs_of, write_image
from imaging.datasets import scan_folder
from imaging.errors import InputError
from imaging.images import decode
from pipelines.corrupt import corrupt_split
from pipelines.evaluate import evaluate
from tracking.statistics import corruption_errors
from pipelines.train import train

FAST = {"model": "smallcnn", "epochs": 2, "batch_size": 16, "lr": 3e-3}


def test_corrupt_writes_the_split_in_the_source_format_with_provenance(tmp_path, experiment):
    root = make_folder(tmp_path / "d", per_class=20, size=32)
    write_image(root / "ant" / "photo.jpg", np.full((32, 32, 3), 120, np.uint8))
    result = corrupt_split({"data": str(root), "kind": "salt_pepper", "severity": 2, "split": "test", "test_fraction": 0.25, "seed": 3})
    manifest = result.manifest
    assert MlflowClient().get_run(result.run_id).data.tags["synthmix.corruption_table"] == "cifar"  # 32 px images
    test = manifest.frame[manifest.frame["split"] == "test"]
    untouched = manifest.frame[manifest.frame["split"] != "test"]
    assert (test["run_id"] == result.run_id).all() and (test["corruption"] == "salt_pepper").all()
    assert (untouched["run_id"] == "").all() and (untouched["corruption"] == "").all()
    original, _ = scan_folder(root, test_fraction=0.25)
    sources = original.frame.set_index("path")
    for _, row in test.iterrows():
        clean_bytes = (root / row["source_path"]).read_bytes()
        assert row["source_sha256"] == sources.loc[row["source_path"], "sha256"] == hashlib.sha256(clean_bytes).hexdigest()
        local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=row["path"])
        data = open(local, "rb").read()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        clean, dirty = decode(clean_bytes), decode(data)
        assert Image.open(local).format == Image.open(root / row["source_path"]).format
        assert clean.shape == dirty.shape
        if row["path"].endswith(".png"):  # lossless: exactly the replaced pixels differ
            expected = round(0.05 * 32 * 32)
            assert 0 < int((clean != dirty).any(axis=2).sum()) <= expected
    # the corrupted dataset trains as it is
    trained = train({"dataset_run": result.run_id, **FAST, "epochs": 1})
    assert MlflowClient().get_run(trained.run_id).info.status == "FINISHED"


def test_corrupt_rejects_a_bad_kind_before_writing_anything(tmp_path, experiment):
    result = run_cli("corrupt", "--data", str(make_folder(tmp_path / "d", per_class=5)), "--kind", "rain")
    assert result.returncode == 2 and "unknown corruption kind 'rain'; use one of salt_pepper" in result.stderr
    assert runs_of(experiment) == []


def test_corruption_errors_follow_hendrycks_and_dietterich():
    errors = {"noise": {1: 0.2, 2: 0.4}, "blur": {1: 0.1, 2: 0.3}}
    baseline = {"clean_error": 0.1, "errors": {"noise": {1: 0.4, 2: 0.6}, "blur": {1: 0.2, 2: 0.2}}}
    out = corruption_errors(errors, 0.05, baseline)
    assert out["robust/ce/noise"] == pytest.approx(0.6 / 1.0)
    assert out["robust/ce/blur"] == pytest.approx(0.4 / 0.4)
    assert out["robust/mce"] == pytest.approx(0.8)
    assert out["robust/relative_ce/noise"] == pytest.approx((0.15 + 0.35) / (0.3 + 0.5))
    assert out["robust/relative_ce/blur"] == pytest.approx((0.05 + 0.25) / (0.1 + 0.1))
    plain = corruption_errors(errors, 0.05, None)
    assert plain["robust/ce/noise"] == pytest.approx(0.3) and plain["robust/mce"] == pytest.approx(0.25)
    assert plain["robust/relative_mce"] == pytest.approx(((0.15 + 0.35) / 2 + (0.05 + 0.25) / 2) / 2)


def test_evaluate_scores_every_kind_and_severity_and_normalises_by_a_baseline(tiny_folder, experiment):
    model = train({"data": str(tiny_folder), **FAST}).run_id
    baseline_model = train({"data": str(tiny_folder), **FAST, "seed": 1}).run_id
    spec = {"corruptions": "salt_pepper,gaussian_noise", "severities": "1,5"}
    baseline = evaluate({"train_run": baseline_model, **spec})
    result = evaluate({"train_run": model, **spec, "baseline_run": baseline.run_id})
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert MlflowClient().get_run(result.run_id).data.tags["synthmix.corruption_table"] == "cifar"  # 16 px: CIFAR-10-C's table
    base = MlflowClient().get_run(baseline.run_id).data.metrics
    for kind in ("salt_pepper", "gaussian_noise"):
        expected = sum(1 - metrics[f"robust/acc/{kind}/{s}"] for s in (1, 5)) / sum(1 - base[f"robust/acc/{kind}/{s}"] for s in (1, 5))
        assert metrics[f"robust/ce/{kind}"] == pytest.approx(expected)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="robustness/accuracy.csv"), index_col=0)
    assert list(table.columns) == ["clean", "1", "5"] and list(table.index) == ["salt_pepper", "gaussian_noise"]
    assert table.loc["salt_pepper", "5"] == pytest.approx(metrics["robust/acc/salt_pepper/5"], abs=1e-4)
    with pytest.raises(InputError, match=r"baseline_run .* lacks robust/acc for \['blend/1'"):
        evaluate({"train_run": model, "corruptions": "blend", "severities": "1", "baseline_run": baseline.run_id})


def test_evaluate_rejects_unknown_corruptions_and_severities():
    from imaging.corruptions import parse_kinds as parse_corruptions, parse_severities

    with pytest.raises(InputError, match=r"--corruptions has unknown kinds \['fire'\]"):
        parse_corruptions("salt_pepper,fire")
    with pytest.raises(InputError, match="--severities '0,6' must list integers from 1 to 5"):
        parse_severities("0,6")
    assert parse_severities("3,1,3") == [1, 3]


def test_augment_corrupts_training_batches(tiny_folder, experiment, monkeypatch):
    import imaging.corruptions as corruptions

    seen = []
    original = corruptions.apply_augment

    def spy(batch, specs, *, generator_seed, labels=None, table=None):
        assert table == "cifar"  # 16 px images: the auto table
        out = original(batch, specs, generator_seed=generator_seed, labels=labels, table=table)
        seen.append(float((out != batch).float().mean()))
        return out

    monkeypatch.setattr(corruptions, "apply_augment", spy)
    clean = train({"data": str(tiny_folder), **FAST})
    noisy = train({"data": str(tiny_folder), **FAST, "augment": "salt_pepper:5:1.0"})
    assert len(seen) == 2 * 3 and min(seen) > 0.2  # 3 batches an epoch; every image had 30% of its pixels replaced
    assert MlflowClient().get_run(noisy.run_id).data.params["augment"] == "salt_pepper:5:1.0"
    assert noisy.metrics["train/loss"] != clean.metrics["train/loss"]
    with pytest.raises(InputError, match="augment item 'salt_pepper:9:0.5' has severity '9'"):
        train({"data": str(tiny_folder), **FAST, "augment": "salt_pepper:9:0.5"})


def test_the_severity_table_can_be_chosen_and_is_logged_as_param_and_tag(tmp_path, tiny_folder, experiment):
    from imaging.corruptions import corrupt

    client = MlflowClient()
    common = {"data": str(tiny_folder), "kind": "defocus_blur", "severity": 3, "split": "test", "seed": 0}
    auto = corrupt_split(common)
    chosen = corrupt_split({**common, "table": "imagenet"})
    for result, table in ((auto, "cifar"), (chosen, "imagenet")):  # 16 px images: auto takes CIFAR-10-C's
        run = client.get_run(result.run_id)
        assert run.data.tags["synthmix.corruption_table"] == table and run.data.params["table"] == ("auto" if result is auto else "imagenet")
    # the images are ImageNet-C's defocus blur, not CIFAR-10-C's
    row = chosen.manifest.frame[chosen.manifest.frame["split"] == "test"].iloc[0]
    written = np.asarray(Image.open(chosen.manifest.local_paths()[chosen.manifest.frame.index.get_loc(row.name)]))
    source = np.asarray(Image.open(Path(chosen.manifest.root) / row["source_path"]))
    flat = written.reshape(-1).astype(int)
    as_imagenet = corrupt(source[None, :, :, None], "defocus_blur", 3, seed=0, table="imagenet")[0, :, :, 0].reshape(-1).astype(int)
    as_cifar = corrupt(source[None, :, :, None], "defocus_blur", 3, seed=0, table="cifar")[0, :, :, 0].reshape(-1).astype(int)
    assert np.abs(flat - as_imagenet).mean() < np.abs(flat - as_cifar).mean()
    model = train({"data": str(tiny_folder), **FAST}).run_id
    scored = evaluate({"train_run": model, "corruptions": "defocus_blur", "severities": "3", "table": "tiny"})
    assert client.get_run(scored.run_id).data.tags["synthmix.corruption_table"] == "tiny"
