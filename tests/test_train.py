"""train and evaluate, run for real on small folders, checked through MlflowClient."""
from __future__ import annotations

import json
from pathlib import Path
import os
import signal
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import make_folder, runs_of, run_cli
from imaging.datasets import scan_folder
from imaging.errors import InputError
from models.classifiers import InputAdapter, build_classifier, pretrained_cache_path
from pipelines.evaluate import evaluate
from pipelines.train import train

FAST = {"model": "smallcnn", "epochs": 2, "batch_size": 16, "lr": 3e-3}


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def artifact_paths(run_id: str, folder: str | None = None) -> set[str]:
    client = MlflowClient()
    found, todo = set(), [folder]
    while todo:
        for item in client.list_artifacts(run_id, todo.pop()):
            (todo.append(item.path) if item.is_dir else found.add(item.path))
    return found


def checkpoint_state(run_id: str) -> dict:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt")
    return torch.load(path, map_location="cpu", weights_only=False)


def model_state(run_id: str) -> dict:
    """The checkpoint inside the logged model: the one a finished run keeps."""
    folder = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    [path] = list(Path(folder).rglob("model.pt"))
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def trained(tiny_folder, experiment):
    result = train({"data": str(tiny_folder), **FAST})
    return result.run_id, tiny_folder


def test_train_logs_params_metrics_checkpoint_confusion_matrix_and_model(trained):
    run_id, folder = trained
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "smallcnn" and params["epochs"] == "2" and params["channels"] == "1" and params["image_size"] == "16"
    assert run.data.tags["synthmix.stage"] == "train"
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "perf/imgs_per_s"):
        assert [step for step, _ in history(run_id, key)] == [0, 1], key
    losses = [v for _, v in history(run_id, "train/loss")]
    assert losses[1] < losses[0]
    assert history(run_id, "val/acc")[-1][1] > 0.6  # the bars are easy to learn
    files = artifact_paths(run_id)
    assert {"confusion_matrix/val.png", "confusion_matrix/val.json", "dataset/manifest.csv"} <= files
    assert not any(f.startswith("checkpoints/") for f in files)  # the model keeps the weights; no optimiser state left
    [logged] = MlflowClient().search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert logged.name == "model"
    matrix = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/confusion_matrix/val.json"))
    assert matrix["classes"] == ["ant", "bee", "cat"] and np.array(matrix["matrix"]).sum() == 6
    state = model_state(run_id)
    assert set(state) == {"spec", "model"} and state["spec"]["classes"] == ["ant", "bee", "cat"]
    # the dataset is logged as an input with the manifest's digest
    manifest, _ = scan_folder(folder)
    inputs = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {(f"{manifest.name}-train", manifest.split("train").digest, "train"), (f"{manifest.name}-val", manifest.split("val").digest, "val")}


def test_logged_model_predicts_from_image_bytes_like_the_network(trained):
    run_id, folder = trained
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]
    files = sorted(folder.rglob("*.png"))[:6]
    out = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert list(out.columns[:2]) == ["label", "score"] and set(out["label"]) <= {"ant", "bee", "cat"}
    assert np.allclose(out[["p_ant", "p_bee", "p_cat"]].sum(axis=1), 1.0, atol=1e-5)
    from models.serving import network_from_checkpoint, preprocess

    network, spec = network_from_checkpoint(model_state(run_id))
    with torch.no_grad():
        expected = network(preprocess([f.read_bytes() for f in files], spec)).argmax(1)
    assert out["label"].tolist() == [spec.classes[i] for i in expected]


def test_same_seed_same_metrics_other_seed_other_metrics(tiny_folder, experiment):
    first = train({"data": str(tiny_folder), **FAST, "seed": 1})
    second = train({"data": str(tiny_folder), **FAST, "seed": 1})
    third = train({"data": str(tiny_folder), **FAST, "seed": 2})
    assert first.run_id != second.run_id
    for key in ("train/loss", "val/loss", "val/acc"):
        assert history(first.run_id, key) == history(second.run_id, key)
    assert history(first.run_id, "train/loss") != history(third.run_id, "train/loss")


def test_sigkill_then_rerun_resumes_to_the_uninterrupted_result(tmp_path, experiment):
    folder = make_folder(tmp_path / "resume", per_class=60, size=24)
    args = ["train", "--data", str(folder), "--model", "smallcnn", "--epochs", "3", "--batch-size", "8", "--seed", "5", "--checkpoint-every", "0"]
    process = subprocess.Popen([sys.executable, "-m", "pipelines", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    for line in process.stdout:
        if "epoch 1/3" in line and "checkpoint saved" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    [killed] = runs_of(experiment, "train")
    assert killed.info.status == "RUNNING" and len(history(killed.info.run_id, "val/acc")) < 3

    resumed = run_cli(*args)  # the same command again
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing from the checkpoint of epoch" in resumed.stdout
    [run] = runs_of(experiment, "train")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"

    mlflow.set_experiment(f"uninterrupted-{experiment}")
    reference = train({"data": str(folder), "model": "smallcnn", "epochs": 3, "batch_size": 8, "seed": 5})
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        resumed_history = sorted({step: value for step, value in history(run.info.run_id, key)}.items())
        assert resumed_history == history(reference.run_id, key), key
    ours, theirs = model_state(run.info.run_id)["model"], model_state(reference.run_id)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_checkpoints_by_time_and_kept_only_when_asked(tiny_folder, experiment):
    every_epoch = train({"data": str(tiny_folder), **FAST, "epochs": 3, "checkpoint_every": 0, "keep_checkpoint": True})
    state = checkpoint_state(every_epoch.run_id)  # the finished state, optimiser included
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "params", "spec"} <= set(state)
    assert all(torch.equal(state["model"][k], v) for k, v in model_state(every_epoch.run_id)["model"].items())
    rarely = run_cli("train", "--data", str(tiny_folder), "--model", "smallcnn", "--epochs", "3", "--checkpoint-every", "3600")
    assert rarely.returncode == 0, rarely.stderr
    assert "checkpoint saved" not in rarely.stdout  # an hour never passed between epochs


def test_resume_run_that_does_not_exist(experiment):
    with pytest.raises(InputError, match=r"resume_run 'abc123' is not in the tracking store"):
        train({"resume_run": "abc123"})


def test_pretrained_weights_come_from_the_torch_cache_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InputError, match=r"ImageNet weights for resnet18 are not in the torch cache and synthmix is offline; download .* copy it to .*resnet18-.*\.pth"):
        build_classifier("resnet18", 10, 1, pretrained=True)
    torch.manual_seed(0)
    imagenet = build_classifier("resnet18", 1000, 3).state_dict()
    path = pretrained_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(imagenet, path)
    grey = build_classifier("resnet18", 10, 1, pretrained=True).state_dict()
    assert torch.allclose(grey["conv1.weight"], imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(grey["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    assert grey["fc.weight"].shape == (10, 512)  # head re-initialised for 10 classes


def test_any_torchvision_model_trains_and_serves_from_its_checkpoint(tiny_folder, experiment):
    result = train({"data": str(tiny_folder), **FAST, "model": "mobilenet_v3_small", "epochs": 1})
    classifier = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    network = classifier.unwrap_python_model().network
    assert isinstance(network, InputAdapter) and network.resize_to is None  # 16 px grey digits, repeated to RGB
    image = next(iter(sorted(tiny_folder.rglob("*.png")))).read_bytes()
    answer = classifier.predict(pd.DataFrame({"image": [image]}))
    assert answer["label"][0] in ("ant", "bee", "cat") and answer[["p_ant", "p_bee", "p_cat"]].sum(axis=1)[0] == pytest.approx(1, abs=1e-5)
    assert "val/acc" in MlflowClient().get_run(result.run_id).data.metrics


def test_a_model_that_needs_bigger_images_resizes_them_itself_and_a_wrong_name_gets_suggestions():
    vit = build_classifier("vit_b_16", 2, 1, image_size=28)
    assert isinstance(vit, InputAdapter) and vit.resize_to == 224  # a ViT takes exactly its 224 px
    with torch.no_grad():
        assert vit.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    assert build_classifier("efficientnet_b0", 3, 3, image_size=28).resize_to is None
    assert not isinstance(build_classifier("resnet50", 3, 1), InputAdapter)  # ResNets adapt their first convolution instead
    with pytest.raises(InputError, match=r"--model 'resnet5O' is not a torchvision classification model; did you mean resnet50"):
        build_classifier("resnet5O", 2, 3)
    done = run_cli("train", "--model", "vgg", "--epochs", "1")
    assert done.returncode == 2 and "did you mean" in done.stderr and "vgg11" in done.stderr and done.stderr.count("\n") == 1


def test_pretrained_weights_of_any_torchvision_model_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InputError, match=r"ImageNet weights for mobilenet_v3_small are not in the torch cache"):
        build_classifier("mobilenet_v3_small", 2, 1, pretrained=True)
    torch.manual_seed(0)
    from torchvision import models as tvm

    imagenet = tvm.mobilenet_v3_small(num_classes=1000).state_dict()
    path = pretrained_cache_path("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    torch.save(imagenet, path)
    grey = build_classifier("mobilenet_v3_small", 2, 1, pretrained=True).state_dict()
    assert torch.equal(grey["network.features.0.0.weight"], imagenet["features.0.0.weight"])  # all 3 input channels kept: grey is repeated
    assert grey["network.classifier.3.weight"].shape == (2, 1024)  # head re-initialised for 2 classes


def test_weights_file_is_loaded_and_a_bad_one_is_named(tmp_path):
    source = build_classifier("smallcnn", 3, 1)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = build_classifier("smallcnn", 3, 1, weights=tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    (tmp_path / "bad.pt").write_text("nonsense")
    with pytest.raises(InputError, match=r"--weights .*bad.pt could not be read as a PyTorch state dict"):
        build_classifier("smallcnn", 3, 1, weights=tmp_path / "bad.pt")


def test_evaluate_logs_test_metrics_report_confusion_matrix_and_misclassified(trained):
    run_id, folder = trained
    result = evaluate({"train_run": run_id})
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    manifest, _ = scan_folder(folder)
    test_files = manifest.split("test").local_paths()
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    predicted = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in test_files]}))["label"]
    expected_acc = float((predicted.to_numpy() == manifest.split("test").frame["label"].to_numpy()).mean())
    assert metrics["test/acc"] == pytest.approx(expected_acc)
    assert 0 <= metrics["test/macro_f1"] <= 1 and metrics["test/images"] == len(test_files)
    files = artifact_paths(result.run_id)
    assert {"confusion_matrix/test.png", "confusion_matrix/test.json", "reports/test_classification_report.json", "misclassified/test.png"} <= files
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/reports/test_classification_report.json"))
    assert {"ant", "bee", "cat", "macro avg"} <= set(report)


def test_evaluate_refuses_test_classes_the_model_lacks_and_accepts_fewer(trained, tmp_path):
    run_id, _ = trained
    other = make_folder(tmp_path / "other", classes=("ant", "bee", "dog"), per_class=10)
    with pytest.raises(InputError, match=r"the test split has classes the model was not trained on: \['dog'\]"):
        evaluate({"train_run": run_id, "data": str(other)})
    fewer = make_folder(tmp_path / "fewer", classes=("ant", "cat"), per_class=10)
    result = evaluate({"train_run": run_id, "data": str(fewer)})
    assert result.metrics["test/images"] == 2


def test_evaluate_without_a_model(experiment):
    with pytest.raises(InputError, match="evaluate needs --train-run"):
        evaluate({})
