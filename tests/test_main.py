"""The study as a user runs it: `main`, and the MLproject front door."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, runs_of
from pipelines.main import main

STUDY = {
    "model": "smallcnn", "pretrained": False, "epochs": 1, "batch_size": 16, "lr": 3e-3, "seed": 0, "device": "cpu",
    "corruptions": "salt_pepper,blend", "severities": "1,5", "saliency": 2,
    "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0, "skip_bad_images": False, "max_pixels": 10**8,
}


def test_main_nests_train_and_evaluate_and_reuses_them_when_rerun(tiny_folder, experiment):
    first = main({**STUDY, "data": str(tiny_folder)})
    parent = MlflowClient().get_run(first.run_id)
    children = [r for r in runs_of(experiment) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["synthmix.stage"] for r in children) == ["evaluate", "train"]
    evaluated = MlflowClient().get_run(first["evaluate"].run_id)
    metrics = evaluated.data.metrics
    assert {"robust/acc/salt_pepper/1", "robust/acc/salt_pepper/5", "robust/acc/blend/5", "robust/mce"} <= set(metrics)
    assert parent.data.metrics["best/test/acc"] == metrics["test/acc"]
    artifacts = {a.path for folder in ("saliency", "robustness") for a in MlflowClient().list_artifacts(evaluated.info.run_id, folder)}
    assert {"saliency/gradcam_clean.png", "saliency/gradcam_salt_pepper-5.png", "robustness/accuracy.csv", "robustness/accuracy.png"} <= artifacts

    again = main({**STUDY, "data": str(tiny_folder)})
    assert again["train"].run_id == first["train"].run_id and again["train"].reused
    assert again["evaluate"].run_id == first["evaluate"].run_id
    assert len(runs_of(experiment, "train")) == 1 and len(runs_of(experiment, "main")) == 2


def mlflow_run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}  # set_experiment() sets it in-process
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), *args, "--env-manager", "local"], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_mlflow_run_train_then_evaluate_as_a_user_types_it(tiny_folder, experiment):
    trained = mlflow_run("-e", "train", "-P", "epochs=1", "-P", "model=smallcnn", "-P", f"data={tiny_folder}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_id = re.search(r"run ([0-9a-f]{32})\s*$", trained.stdout.strip()).group(1)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] in ("1", "1.0")
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val/acc")] == [0]

    evaluated = mlflow_run("-e", "evaluate", "-P", f"train_run={run_id}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    [evaluate_run] = runs_of(experiment, "evaluate")
    assert evaluate_run.data.tags["synthmix.train_run"] == run_id and "test/acc" in evaluate_run.data.metrics
    assert mlflow.artifacts.load_text(f"runs:/{evaluate_run.info.run_id}/confusion_matrix/test.json").startswith("{")
