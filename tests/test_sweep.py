"""Sweeps: the space file is checked before any trial, a pruned training is never resumed, a
sweep on one machine, and many workers on one Optuna study in PostgreSQL logging to one real
MLflow tracking server, one of them SIGKILLed in the middle of a trial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, free_port, make_folder, run_cli, venv_env, wait_for_http
from imaging.errors import InputError
from pipelines.sweep import DEFAULT_SPACE, load_space, sweep

TINY_SPACE = """
ratio: 0.0
kind: {choices: [none, salt_pepper]}
severity: {low: 1, high: 5}
probability: {low: 0.2, high: 0.8}
lr: {low: 0.001, high: 0.01, log: true}
"""


@pytest.mark.parametrize("text, message", [
    ("colour: 0.5", r"space file .*: colour: unknown parameter; use ratio, lr"),
    ("kind: {choices: [none, sparkle]}", r"kind: unknown corruption family 'sparkle'"),
    ("ratio: {low: 0.2, high: 1.0}", r"ratio: high 1.0 is out of range; it must be from 0 up to \(not including\) 1"),
    ("severity: {low: 0, high: 3}", r"severity: low 0 is out of range; it must be from 1 to 5"),
    ("lr: {low: 0.01, high: 0.001}", r"lr: low 0.01 must be below high 0.001"),
    ("lr: {low: 0, high: 0.1, log: true}", r"lr: low 0 is out of range; a learning rate must be above 0"),
    ("weight_decay: {low: 0, high: 0.1, log: true}", r"weight_decay: a log range needs low above 0"),
    ("probability: [0.1, 0.5]", r"probability: a list must be written as \{choices: \[...\]\}"),
    ("lr: {low: 0.001}", r"lr: give both low and high"),
    ("ratio: {low: 0, high: 0.5, scale: 2}", r"ratio: unknown key\(s\) scale"),
    ("severity: 2.5", r"severity: 2.5 is not a whole number"),
    ("- just a list", r"must map parameter names to values"),
])
def test_a_bad_space_file_is_refused_naming_the_entry(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_space(str(path))


def test_the_default_space_and_a_file_sample_within_their_ranges(tmp_path):
    (tmp_path / "space.json").write_text('{"ratio": {"choices": [0, 0.5]}, "kind": "blend", "severity": 2, "probability": 0.5, "lr": {"low": 0.001, "high": 0.002}}')
    fixed = load_space(str(tmp_path / "space.json"))
    default = load_space(None)
    assert set(default.entries) == set(DEFAULT_SPACE) and default.may_use_synthetic()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    other = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(30):
        trial = study.ask()
        values = default.suggest(trial)
        assert 0 <= values["ratio"] <= 0.9 and 1e-4 <= values["lr"] <= 1e-2
        kinds.add(values["kind"])
        if values["kind"] == "none":
            assert "severity" not in values and "probability" not in values  # nothing to sample without a corruption
        else:
            assert values["severity"] in range(1, 6) and 0.1 <= values["probability"] <= 1.0
        study.tell(trial, 0.0)
        values = fixed.suggest(other.ask())
        assert values["ratio"] in (0, 0.5) and values["kind"] == "blend" and values["severity"] == 2 and 0.001 <= values["lr"] <= 0.002
    assert len(kinds) >= 4


def test_a_pruned_training_ends_killed_and_is_never_resumed(tiny_folder, experiment):
    from pipelines.train import train

    params = {"data": str(tiny_folder), "model": "smallcnn", "epochs": 3, "batch_size": 16, "device": "cpu", "checkpoint_every": 0}

    def prune(epoch, metrics):
        raise optuna.TrialPruned("pruned after epoch 1")

    with pytest.raises(optuna.TrialPruned):
        train(params, on_epoch=prune, reuse=True)
    [pruned] = [r for r in mlflow.search_runs([experiment], output_format="list")]
    assert pruned.info.status == "KILLED" and pruned.data.tags["synthmix.pruned"] == "true"
    again = train(params, reuse=True)  # the same config: a new run from scratch, not a continuation of the pruned one
    assert again.run_id != pruned.info.run_id and MlflowClient().get_run(again.run_id).info.status == "FINISHED"
    assert [m.step for m in MlflowClient().get_metric_history(again.run_id, "val/acc")] == [0, 1, 2]


def _trial_runs(client, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], max_results=1000) if r.data.tags.get("synthmix.stage") == "trial"]


def test_a_sweep_on_one_machine_prunes_nests_its_trials_and_reports_the_best(tmp_path, tiny_folder, experiment):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    params = {"data": str(tiny_folder), "space": str(space), "model": "smallcnn", "epochs": 3, "batch_size": 16, "device": "cpu",
              "n_trials": 6, "storage": storage, "study": "one", "pruner": "median", "seed": 1}
    result = sweep(params)
    study = optuna.load_study(study_name="one", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 6
    client = MlflowClient()
    trials = _trial_runs(client, experiment)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == sorted(states)  # one MLflow run per trial, no duplicate
    for run in trials:
        state = states[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.state"] == state and run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[state]
    sweep_run = client.get_run(result.run_id)
    best = study.best_trial
    assert sweep_run.data.params["best.trial"] == str(best.number) and sweep_run.data.metrics["best/val/acc"] == pytest.approx(best.value)
    plots = {a.path for a in client.list_artifacts(result.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/trials.csv"} <= plots
    # the same command again joins a study that has its trials: nothing more is trained
    sweep(params)
    assert len(optuna.load_study(study_name="one", storage=storage).trials) == len(states)
    # register takes the best trial's model from below the sweep run
    from pipelines.register import register

    done = register({"parent_run": result.run_id, "registered_model": f"sweep-{experiment}"})
    assert done.run_id == best.user_attrs["train_run_id"] or client.get_run(done.run_id).data.metrics["val/acc"] == pytest.approx(best.value)


def test_an_unreachable_tracking_server_or_storage_is_one_line_and_exit_2(tiny_folder):
    started = time.monotonic()
    result = run_cli("train", "--data", str(tiny_folder), env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach the MLflow tracking store at http://127.0.0.1:9 ([Errno 111] Connection refused); "
        "start it (make server) or point MLFLOW_TRACKING_URI at one that runs."
    ]
    result = run_cli("sweep", "--data", str(tiny_folder), "--storage", "postgresql://postgres:secret@127.0.0.1:1/optuna")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: cannot reach the Optuna storage at postgresql://postgres:***@127.0.0.1:1/optuna") and "secret" not in result.stderr


def _worker(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    full = {k: v for k, v in venv_env(env).items() if k != "MLFLOW_EXPERIMENT_ID"}  # the experiment is named in env
    return subprocess.Popen([sys.executable, "-m", "pipelines", "sweep", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=full, cwd=log.parent, start_new_session=True)


@pytest.mark.postgres
def test_workers_share_one_study_in_postgresql_and_a_dead_workers_trial_fails(tmp_path, tiny_folder, pg_databases):
    backend, storage = pg_databases(), pg_databases()
    port = free_port()
    server_log = tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "tracking.server", "--port", str(port), "--backend-store-uri", backend,
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=server_log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=venv_env(), start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, server_log)
        uri = f"http://127.0.0.1:{port}"
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "team"}
        space = tmp_path / "space.yaml"
        space.write_text(TINY_SPACE)
        common = ["--data", str(tiny_folder), "--space", str(space), "--model", "smallcnn", "--batch-size", "16", "--device", "cpu",
                  "--storage", storage, "--pruner", "none", "--heartbeat", "2"]

        # two workers, one study: exactly 6 finished trials, each with its run on the server
        workers = [_worker([*common, "--study", "shared", "--n-trials", "6", "--epochs", "2"], env, tmp_path / f"w{i}.log") for i in range(2)]
        for i, worker in enumerate(workers):
            assert worker.wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
        study = optuna.load_study(study_name="shared", storage=storage)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 6 and len({t.number for t in study.trials}) == len(study.trials)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.get_experiment_by_name("team").experiment_id
        runs = {int(r.data.tags["optuna.trial"]): r for r in _trial_runs(client, experiment_id) if r.data.tags["optuna.study"] == "shared"}
        for trial in finished:
            assert runs[trial.number].data.tags["optuna.state"] == trial.state.name and runs[trial.number].info.status == "FINISHED"
            assert runs[trial.number].info.run_id == trial.user_attrs["mlflow_run_id"]
        sweep_runs = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("synthmix.stage") == "sweep"]
        assert len(sweep_runs) == 2 and {r.info.status for r in sweep_runs} == {"FINISHED"}  # one per worker, trials nested under them
        assert {runs[t.number].data.tags["mlflow.parentRunId"] for t in finished} <= {r.info.run_id for r in sweep_runs}

        # a worker SIGKILLed in the middle of a trial: the trial becomes FAIL through its missing heartbeat, another worker finishes
        slow = [*common, "--study", "killed", "--n-trials", "3", "--epochs", "40"]
        victim = _worker(slow, env, tmp_path / "victim.log")
        deadline = time.monotonic() + 300
        while True:
            try:
                running = [t for t in optuna.load_study(study_name="killed", storage=storage).trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            except KeyError:  # the worker has not created the study yet
                running = []
            trains = [r for r in client.search_runs([experiment_id], "tags.`synthmix.stage` = 'train' AND attributes.status = 'RUNNING'")] if running else []
            if running and trains and client.get_metric_history(trains[0].info.run_id, "val/acc"):
                break  # a trial is training and has logged an epoch
            assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()[-3000:]
            time.sleep(0.3)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        dead = running[0]
        logged = {m.step for m in client.get_metric_history(trains[0].info.run_id, "val/acc")}
        time.sleep(7)  # past the grace period of 3 heartbeats
        survivor = _worker([*slow[:-1], "2"], env, tmp_path / "survivor.log")  # fewer epochs: the trials' number is what counts
        assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
        study = optuna.load_study(study_name="killed", storage=storage)
        states = {t.number: t.state for t in study.trials}
        assert states[dead.number] == TrialState.FAIL
        assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 3
        dead_run = client.get_run(dead.user_attrs["mlflow_run_id"])
        assert dead_run.info.status == "FAILED" and dead_run.data.tags["optuna.state"] == "FAIL"
        # the dead worker's sweep run and the dead trial's nested train run are not left RUNNING either: their heartbeats stopped
        victim_sweep = client.get_run(dead_run.data.tags["mlflow.parentRunId"])
        for left in (victim_sweep, client.get_run(trains[0].info.run_id)):
            assert left.info.status == "FAILED" and left.data.tags["synthmix.failed_by"].startswith("heartbeat"), left.info
        assert not client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        assert {m.step for m in client.get_metric_history(trains[0].info.run_id, "val/acc")} >= logged  # nothing logged is lost
        assert len([r for r in _trial_runs(client, experiment_id) if r.data.tags["optuna.study"] == "shared"]) == len(runs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_mlflow_run_sweep_as_a_user_types_it_alone_and_as_two_processes(tmp_path, tiny_folder, experiment):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)

    def command(n: int):
        return [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", "sweep", "--env-manager", "local",
                "-P", f"data={tiny_folder}", "-P", f"space={space}", "-P", "model=smallcnn", "-P", "epochs=1", "-P", "batch_size=16",
                "-P", f"n_trials={n}", "-P", f"storage={storage}", "-P", "study=front-door", "-P", "device=cpu"]

    env = {k: v for k, v in venv_env().items() if k != "MLFLOW_EXPERIMENT_ID"}  # mlflow run takes a name or an id, not both
    alone = subprocess.run(command(2), capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    pair = [subprocess.Popen(command(5), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in pair]
    assert all(p.returncode == 0 for p in pair), outputs[0][-2000:] + outputs[1][-2000:]
    study = optuna.load_study(study_name="front-door", storage=storage)
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 5


def test_robust_accuracy_on_a_corrupted_val_split_is_an_objective(tmp_path, tiny_folder, experiment):
    from pipelines.train import train

    trained = train({"data": str(tiny_folder), "model": "smallcnn", "epochs": 2, "batch_size": 16, "device": "cpu", "val_corruption": "salt_pepper:5"})
    client = MlflowClient()
    robust = client.get_metric_history(trained.run_id, "val_robust/acc")
    assert [m.step for m in robust] == [0, 1] and all(0 <= m.value <= 1 for m in robust)
    with pytest.raises(InputError, match=r"--val-corruption 'salt_pepper' is not kind:severity"):
        train({"data": str(tiny_folder), "model": "smallcnn", "val_corruption": "salt_pepper"})
    large = make_folder(tmp_path / "large", per_class=6, size=80)
    with pytest.raises(InputError, match=r"--val-corruption works on images up to 64 px \(these are 80 px\)"):
        train({"data": str(large), "model": "smallcnn", "val_corruption": "salt_pepper:3", "workers": 0})
    assert not [r for r in mlflow.search_runs([experiment], output_format="list") if r.data.params.get("data") == str(large)]  # no run left behind
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    result = sweep({"data": str(tiny_folder), "space": str(space), "model": "smallcnn", "epochs": 2, "batch_size": 16, "device": "cpu", "n_trials": 2,
                    "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "study": "robust", "metric": "val_robust/acc", "val_corruption": "gaussian_noise:3"})
    study = optuna.load_study(study_name="robust", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    for trial in study.trials:
        assert trial.value == pytest.approx(client.get_run(trial.user_attrs["train_run_id"]).data.metrics["val_robust/acc"])
        assert client.get_run(trial.user_attrs["train_run_id"]).data.params["val_corruption"] == "gaussian_noise:3"
    assert client.get_run(result.run_id).data.metrics["best/val_robust/acc"] == pytest.approx(study.best_value)
