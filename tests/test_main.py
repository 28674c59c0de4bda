"""The study as a user runs it: `main` end to end on a tiny preset, its reruns, a
SIGKILL in the middle, a failing cell, and the MLproject front door."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, make_folder, run_cli, runs_of
from imaging.errors import InputError
from pipelines.main import main, parse_augments, parse_ratios, parse_seeds

TINY = {
    "model": "smallcnn", "epochs": 1, "batch_size": 16, "lr": 3e-3, "device": "cpu", "per_class": 16,
    "ratios": "0,0.5", "augments": "none,salt_pepper:3:0.5", "seeds": "2", "corruptions": "salt_pepper,blend", "severities": "1,5", "saliency": 2,
}


def children(parent_id: str, experiment_id: str) -> list:
    return [r for r in runs_of(experiment_id) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_the_study_nests_every_step_answers_with_intervals_and_reuses_its_steps(tiny_folder, experiment):
    name = f"study-{uuid.uuid4().hex[:8]}"
    first = main({**TINY, "data": str(tiny_folder), "registered_model": name})
    parent = MlflowClient().get_run(first["run_id"])
    steps = children(parent.info.run_id, experiment)
    stages = sorted(r.data.tags["synthmix.stage"] for r in steps)
    # 1 synthesis; 2 seeds x 2 arms x 2 ratios = 8 cells, each trained and evaluated; mixes only at 0.5, shared by both arms
    assert stages == ["evaluate"] * 8 + ["mix"] * 2 + ["synthesize"] + ["train"] * 8
    for run in steps:
        assert run.data.tags["synthmix.study"] == parent.data.tags["synthmix.study"] and run.info.status == "FINISHED"
    cells = {(r.data.tags["synthmix.ratio"], r.data.tags["synthmix.augment"], r.data.tags["synthmix.seed"]) for r in steps if r.data.tags["synthmix.stage"] == "train"}
    assert len(cells) == 8 and ("0.5", "salt_pepper:3:0.5", "1") in cells

    # the answer: the description is the headline, the metrics are the per-seed ones summarised
    assert parent.data.tags["mlflow.note.content"] == first["headline"] and "synthetic" in first["headline"]
    results = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="results.csv"))
    none_real = results[(results["ratio"] == 0) & (results["augment"] == "none")]["test/acc"]
    assert parent.data.metrics["study/test/acc/mean/none/r0"] == pytest.approx(none_real.mean())
    paired = results[results["augment"] == "none"].pivot(index="seed", columns="ratio", values="test/acc")
    assert parent.data.metrics["study/diff/test/acc/mean/none/r0.5"] == pytest.approx((paired[0.5] - paired[0.0]).mean())
    assert {"study/robust/acc/salt_pepper/mean/none/r0.5", "study/robust/mce/mean/salt_pepper-3-0.5/r0"} <= set(parent.data.metrics)
    files = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)} | {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "figures")}
    assert {"report.html", "summary.csv", "summary.md", "results.csv", "runs.csv", "figures/accuracy.png", "figures/robustness.png"} <= files
    html = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html")).read_text()
    assert first["headline"].split(" (")[0] in html and "https://" not in html and "http://127" in html  # the UI link is text, not a fetched resource

    # the champion: the train run with the best val/acc (never test/acc), registered and aliased, named in the output and report
    client = MlflowClient()
    champion = client.get_model_version_by_alias(name, "champion")
    trained = [r for r in steps if r.data.tags["synthmix.stage"] == "train"]
    assert client.get_run(champion.run_id).data.metrics["val/acc"] == max(r.data.metrics["val/acc"] for r in trained)
    assert first["champion"].startswith(f"models:/{name}@champion is version 1, train run {champion.run_id[:8]}")
    assert "best val/acc of 8 finished train runs" in first["champion"] and f"Registry: models:/{name}@champion is version 1" in html
    assert client.get_run(parent.info.run_id).data.tags["synthmix.champion"] == f"models:/{name}@champion"

    # the same command again continues the same parent and reuses every step
    again = main({**TINY, "data": str(tiny_folder), "registered_model": name})
    assert again["run_id"] == first["run_id"] and again["headline"] == first["headline"]
    assert len(runs_of(experiment, "train")) == 8 and len(runs_of(experiment, "main")) == 1
    steps_table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="runs.csv"))
    assert set(steps_table["status"]) == {"reused"}
    assert "version 1 already holds 'champion'" in again["champion"] and len(client.search_model_versions(f"name = '{name}'")) == 1
    # another study whose every step is reused from this one (a different tolerance) finds the same champion
    other = main({**TINY, "data": str(tiny_folder), "registered_model": name, "tolerance": 0.05})
    assert other["run_id"] != first["run_id"] and "version 1 already holds 'champion'" in other["champion"]
    assert "best val/acc of 8 finished train runs" in other["champion"]
    from pipelines.register import register

    assert register({"parent_run": other["run_id"], "registered_model": name}).candidates == 8  # found through its runs.csv


def test_a_failing_cell_is_reported_and_the_study_goes_on(tmp_path, experiment):
    real = make_folder(tmp_path / "real", per_class=20)
    synthetic = make_folder(tmp_path / "synthetic", per_class=4)  # 4 per class: enough for 25%, not for 75% of 16 train images
    result = main({**TINY, "data": str(real), "synthetic_data": str(synthetic), "ratios": "0,0.25,0.75", "augments": "none"})
    parent = MlflowClient().get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    results = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="results.csv"))
    failed = results[results["status"] == "failed"]
    assert sorted(failed["ratio"]) == [0.75, 0.75] and failed["error"].str.contains("synthetic").all()
    assert parent.data.metrics["study/cells_failed"] == 2 and parent.data.metrics["study/cells_ok"] == 4
    html = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="report.html")).read_text()
    assert "failed" in html and "InputError" in html


def test_study_options_are_checked_before_any_run(tiny_folder, experiment):
    with pytest.raises(InputError, match=r"--ratios '0.5,0.6' lacks 0: the real-only cell"):
        main({**TINY, "data": str(tiny_folder), "ratios": "0.5,0.6"})
    with pytest.raises(InputError, match=r"augment item 'pepper:3:0.5' names unknown kind"):
        main({**TINY, "data": str(tiny_folder), "augments": "none,pepper:3:0.5"})
    assert runs_of(experiment) == []
    assert parse_ratios("0.8, 0,0.5") == [0, 0.5, 0.8] and parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    assert parse_augments("none,salt_pepper:3:0.5+blend:1:0.2") == ["", "salt_pepper:3:0.5,blend:1:0.2"]
    result = run_cli("main", "--data", str(tiny_folder), "--seeds", "0")
    assert result.returncode == 2 and "--seeds '0' asks for no seed" in result.stderr


def test_sigkill_during_the_third_training_then_the_same_command_finishes_only_what_is_missing(tmp_path, experiment):
    folder = make_folder(tmp_path / "kill", per_class=24)
    args = ["main", "--data", str(folder), "--model", "smallcnn", "--epochs", "2", "--batch-size", "8", "--ratios", "0,0.5",
            "--augments", "none", "--seeds", "2", "--per-class", "16", "--corruptions", "salt_pepper", "--severities", "1",
            "--saliency", "0", "--device", "cpu", "--checkpoint-every", "0"]
    process = subprocess.Popen([sys.executable, "-m", "pipelines", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    trainings = 0
    for line in process.stdout:
        trainings += "train run started" in line
        if trainings == 3 and "epoch 1/2" in line and "checkpoint saved" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=300)
    assert process.returncode == -signal.SIGKILL
    before = {r.info.run_id: r.info.status for r in runs_of(experiment)}
    assert sorted(before.values()) == ["FINISHED"] * 6 + ["RUNNING"] * 2  # synthesis, 2 trains, 2 evaluations, 1 mix; the parent and the 3rd training

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "continuing from the checkpoint of epoch 1/2" in rerun.stdout
    after = runs_of(experiment)
    counts = pd.Series([r.data.tags["synthmix.stage"] for r in after]).value_counts().to_dict()
    assert counts == {"main": 1, "synthesize": 1, "mix": 2, "train": 4, "evaluate": 4}  # nothing done twice
    assert all(r.info.status == "FINISHED" for r in after) and set(before) <= {r.info.run_id for r in after}
    assert rerun.stdout.count("reused (same config, code and inputs)") == 6  # synth, 2 trains, 2 evals, 1 mix


def test_runs_go_to_a_named_experiment_not_default(tiny_folder):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    result = subprocess.run([sys.executable, "-m", "pipelines", "train", "--data", str(tiny_folder), "--model", "smallcnn", "--epochs", "1"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = re.search(r"run ([0-9a-f]{32})\s*$", result.stdout.strip()).group(1)
    experiment = MlflowClient().get_experiment(MlflowClient().get_run(run_id).info.experiment_id)
    assert experiment.name == "synthmix" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "workflowType=machine_learning" in result.stdout  # the printed link opens the training-runs view


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


@pytest.mark.postgres
def test_two_workers_split_the_grid_through_postgresql_and_one_report_holds_every_cell(tmp_path, pg_databases):
    from conftest import study_workers

    backend, outputs = study_workers(tmp_path, pg_databases, "grid", "--seeds", "2", "--corruptions", "salt_pepper", "--severities", "1")
    client = MlflowClient(tracking_uri=backend)
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id], max_results=1000)
    trained = [r for r in runs if r.data.tags["synthmix.stage"] == "train"]
    cells = sorted((r.data.tags["synthmix.ratio"], r.data.tags["synthmix.seed"]) for r in trained)
    assert cells == [("0.0", "0"), ("0.0", "1"), ("0.5", "0"), ("0.5", "1")]  # 4 train runs, none twice
    [parent] = [r for r in runs if r.data.tags["synthmix.stage"] == "main"]  # one study run, both workers' steps under it
    assert {r.data.tags["mlflow.parentRunId"] for r in trained} == {parent.info.run_id}
    assert sum("writes the report" in out for out in outputs) <= 1 and sum("report: " in out for out in outputs) >= 1
    results = pd.read_csv(client.download_artifacts(parent.info.run_id, "results.csv", str(tmp_path)))
    assert sorted(zip(results["ratio"], results["seed"])) == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)] and set(results["status"]) == {"ok"}
    assert set(results["train_run"]) == {r.info.run_id for r in trained}


def test_a_cell_whose_worker_died_is_run_again_by_the_next_worker(tmp_path):
    import json

    import optuna

    from pipelines.main import _cells_on_workers

    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    cells = [(0, "", 0.0), (0, "", 0.5), (1, "", 0.0)]
    ran = []

    def run_cell(seed, augment, ratio):
        ran.append((seed, augment, ratio))
        return {"ratio": ratio, "augment": "none", "seed": seed, "status": "ok", "val/acc": 0.5}

    # a first worker finished cell 0 and died in cell 1 (its trial failed by heartbeat)
    study = optuna.create_study(storage=storage, study_name="main-s", direction="maximize",
                                sampler=optuna.samplers.GridSampler({"cell": [0, 1, 2]}, seed=0))
    study.enqueue_trial({"cell": 0})
    trial = study.ask()
    assert trial.suggest_categorical("cell", [0, 1, 2]) == 0
    trial.set_user_attr("row", json.dumps(run_cell(*cells[0])))
    study.tell(trial, 0.5)
    study.enqueue_trial({"cell": 1})
    dead = study.ask()
    assert dead.suggest_categorical("cell", [0, 1, 2]) == 1
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    ran.clear()
    rows, left = _cells_on_workers(storage, "s", cells, run_cell)
    assert sorted(ran) == [(0, "", 0.5), (1, "", 0.0)] and left == 0  # the dead worker's cell and the free one, nothing twice
    assert [(r["seed"], r["ratio"]) for r in rows] == [(0, 0.0), (0, 0.5), (1, 0.0)]
    ran.clear()
    assert _cells_on_workers(storage, "s", cells, run_cell)[1] == 0 and ran == []  # a rerun finds every cell done
