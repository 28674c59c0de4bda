"""register: which train run is chosen (on validation data; ties; runs without the metric or of
other stages left out) and when the alias moves (only to a better model on the same metric
and validation data)."""
from __future__ import annotations

import time
import uuid

import mlflow
import pytest
from mlflow.entities import LoggedModelOutput
from mlflow.tracking import MlflowClient

from conftest import run_cli
from imaging.errors import InputError
from pipelines.register import choose, lower_is_better, model_name, register


def fake_train_run(metrics: dict, *, stage="train", status="FINISHED", digest="val-a", data="mnist5k", parent=None, model=True, tags=None) -> str:
    """A run shaped like a train run (tags, metrics, val dataset input, a logged model), without training."""
    import pandas as pd

    client = MlflowClient()
    with mlflow.start_run(nested=parent is not None, parent_run_id=parent) as run:
        mlflow.set_tags({"synthmix.stage": stage, **(tags or {})})
        mlflow.log_param("data", data)
        if metrics:
            mlflow.log_metrics(metrics)
        dataset = mlflow.data.from_pandas(pd.DataFrame({"path": ["a.png"]}), name=f"{data}-val", digest=digest)
        mlflow.log_input(dataset, context="val")
        if model:
            logged = mlflow.create_external_model(name="model")
            client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, 0)])
    if status != "FINISHED":
        client.set_terminated(run.info.run_id, status)
    time.sleep(0.01)  # distinct end times, for the tie-break
    return run.info.run_id


def test_the_best_validation_run_is_chosen_and_the_rest_are_left_out_with_reasons(experiment):
    best = fake_train_run({"val/acc": 0.90, "val/loss": 0.30})
    fake_train_run({"val/acc": 0.80, "val/loss": 0.20, "test/acc": 0.99})  # better on test: must not matter
    fake_train_run({"val/acc": 0.99}, stage="evaluate")  # another stage
    fake_train_run({"val/acc": 0.95}, status="FAILED")
    fake_train_run({"train/loss": 0.1})  # no val/acc
    fake_train_run({"val/acc": 0.97}, model=False)
    choice = choose(mlflow.search_runs([experiment], output_format="list"), "val/acc")
    assert choice.best.run_id == best and choice.ties == 0 and choice.others == 1
    assert [round(c.value, 2) for c in choice.ranked] == [0.90, 0.80]
    assert choice.ignored == {"not finished (failed)": 1, "with no val/acc": 1, "with no logged model": 1}
    # a loss is minimised
    assert choose(mlflow.search_runs([experiment], output_format="list"), "val/loss").best.value == pytest.approx(0.20)
    assert lower_is_better("val/loss", "auto") and not lower_is_better("val/acc", "auto") and lower_is_better("val/acc", "minimize")


def test_ties_go_to_the_lower_validation_loss_then_to_the_earlier_run(experiment):
    first = fake_train_run({"val/acc": 0.9, "val/loss": 0.5})
    second = fake_train_run({"val/acc": 0.9, "val/loss": 0.5})
    runs = lambda: mlflow.search_runs([experiment], output_format="list")  # noqa: E731
    choice = choose(runs(), "val/acc")
    assert choice.best.run_id == first and choice.ties == 1
    lower_loss = fake_train_run({"val/acc": 0.9, "val/loss": 0.4})
    choice = choose(runs(), "val/acc")
    assert choice.best.run_id == lower_loss and choice.ties == 2 and second in [c.run_id for c in choice.ranked]


def test_runs_validated_on_different_data_are_not_ranked_together(experiment):
    fake_train_run({"val/acc": 0.9}, digest="one", data="mnist5k")
    fake_train_run({"val/acc": 0.8}, digest="two", data="/data/flowers")
    with pytest.raises(InputError, match=r"validated on 2 different validation sets .*pass --data or --parent-run"):
        choose(mlflow.search_runs([experiment], output_format="list"), "val/acc")
    assert choose(mlflow.search_runs([experiment], output_format="list"), "val/acc", data="/data/flowers").best.dataset == "/data/flowers"
    assert model_name("/data/flowers/") == "flowers-classifier" and model_name("my data!") == "my-data-classifier"


def test_nothing_to_choose_is_one_line_naming_why(experiment):
    fake_train_run({"train/loss": 1.0})
    result = run_cli("register", "--experiment", MlflowClient().get_experiment(experiment).name)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: no finished train run with val/acc and a logged model in experiment '{MlflowClient().get_experiment(experiment).name}' "
        "(1 train run with no val/acc); run train or main first, or pick another --metric."
    ]
    assert run_cli("register", "--experiment", "no-such-experiment").stderr.startswith("error: --experiment 'no-such-experiment' is not an experiment")
    assert "--alias 'latest' is not a usable alias" in run_cli("register", "--alias", "latest").stderr


def test_the_alias_moves_only_to_a_better_model_on_the_same_metric_and_data(experiment):
    name = f"test-{uuid.uuid4().hex[:8]}"
    client = MlflowClient()
    study = fake_train_run({}, stage="main", model=False)
    cell = {"synthmix.study": "s", "synthmix.ratio": "0.5", "synthmix.augment": "none", "synthmix.seed": "1"}
    first = fake_train_run({"val/acc": 0.80, "val/loss": 0.5}, parent=study, tags=cell)
    done = register({"parent_run": study, "registered_model": name})
    assert done.moved and done.version == "1" and done.run_id == first
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["synthmix.ratio"] == "0.5" and tags["synthmix.seed"] == "1" and tags["val/acc"] == "0.8000" and tags["synthmix.train_run"] == first

    # the same choice again: no new version, the alias stays
    again = register({"parent_run": study, "registered_model": name})
    assert again.version == "1" and not again.moved and "already holds 'champion'" in again.message
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # a better run moves the alias
    better = fake_train_run({"val/acc": 0.85, "val/loss": 0.6}, parent=study)
    moved = register({"parent_run": study, "registered_model": name})
    assert moved.moved and moved.run_id == better and moved.previous == "1" and "beats version 1 (val/acc 0.8000)" in moved.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == moved.version == "2"

    # another study on the same validation data whose best is worse: registered, the alias stays
    other = fake_train_run({}, stage="main", model=False)
    worse = fake_train_run({"val/acc": 0.83}, parent=other)
    kept = register({"parent_run": other, "registered_model": name})
    assert not kept.moved and kept.run_id == worse and kept.version == "3"
    assert "version 2 keeps 'champion' (val/acc 0.8500 is not beaten)" in kept.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    # a different metric or other validation data does not compare: the alias stays unless forced
    by_loss = register({"parent_run": study, "registered_model": name, "metric": "val/loss"})
    assert not by_loss.moved and "chosen on val/acc, not val/loss" in by_loss.message
    elsewhere = fake_train_run({}, stage="main", model=False)
    fake_train_run({"val/acc": 0.99}, parent=elsewhere, digest="val-b")
    assert not register({"parent_run": elsewhere, "registered_model": name}).moved
    forced = register({"parent_run": elsewhere, "registered_model": name, "force": True})
    assert forced.moved and str(client.get_model_version_by_alias(name, "champion").version) == forced.version
