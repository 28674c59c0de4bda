"""The front doors users type, end to end: `mlflow run . -e <stage>` chained by the ids MLflow
printed, a rerun that becomes a pointer, killed commands (SIGKILL, SIGTERM) continued by the
same command, the study under `mlflow run` with and without --experiment-name, and two sweep
workers started at once sharing one synthesis.

Every test has its own sqlite tracking store (so the Default experiment holds only its runs),
and asserts on the metrics, artifacts and tags of the ids the commands printed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, make_folder, venv_env

pytestmark = pytest.mark.slow

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PRINTED = re.compile(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===")
TRAIN = ["-P", "model=smallcnn", "-P", "batch_size=16", "-P", "device=cpu"]
# the smallest study: 1 synthesis, 2 seeds x ratios 0 and 0.5 (2 mixes, 4 trainings, 4 evaluations)
STUDY = {"model": "smallcnn", "epochs": "1", "batch_size": "16", "device": "cpu", "per_class": "16", "ratios": "0,0.5", "seeds": "2",
         "augments": "none", "corruptions": "salt_pepper", "severities": "1", "saliency": "0", "registered_model": "none"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """3 classes x 20 images of 16 px: a stage finishes in seconds."""
    return make_folder(tmp_path_factory.mktemp("front-door") / "tiny", per_class=20)


@pytest.fixture(scope="module")
def slow_epochs(tmp_path_factory) -> Path:
    """3 classes x 300 images of 32 px: a smallcnn epoch takes a second or two on a CPU, time to kill it between checkpoints."""
    return make_folder(tmp_path_factory.mktemp("front-door") / "slow", per_class=300, size=32)


class Store:
    """A fresh sqlite tracking store for one test: its URL, a client, and the environment commands get."""

    def __init__(self, root: Path):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        # created here, so the Default experiment's artifacts go under root, not under the folder `mlflow run` runs in
        SqlAlchemyStore(self.uri, str(root / "artifacts")).engine.dispose()
        self.client = MlflowClient(tracking_uri=self.uri)
        env = venv_env({"MLFLOW_TRACKING_URI": self.uri})
        self.env = {k: v for k, v in env.items() if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}

    def experiment(self, name: str, create: bool = False) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None and create:
            return self.client.create_experiment(name, artifact_location=str(self.root / "artifacts" / name))
        return found.experiment_id

    def runs(self, experiment_ids: list[str] | None = None, stage: str | None = None, status: str | None = None) -> list:
        ids = experiment_ids or [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(ids, max_results=1000)
        return [r for r in runs if (stage is None or r.data.tags.get("synthmix.stage") == stage) and (status is None or r.info.status == status)]

    def keys(self) -> list[tuple]:
        """Every run's id, status, config hash and code version: a rerun that did not continue shows why (a code edit between the commands changes the key)."""
        return [(r.info.run_id, r.info.status, r.data.tags.get("synthmix.config_hash"), r.data.tags.get("synthmix.code_version")) for r in self.runs()]

    def artifacts(self, run_id: str, folder: str | None = None) -> set[str]:
        return {a.path for a in self.client.list_artifacts(run_id, folder)}

    def steps(self, run_id: str, metric: str = "val/acc") -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run_id, metric))

    def mlflow_run(self, entry: str, *args: str, timeout: int = 600) -> tuple[str, str]:
        """`mlflow run . -e entry ... --env-manager local` in the repository, as a user types it; (the id it printed, its output)."""
        done = subprocess.run(self.mlflow_command(entry, *args), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        return PRINTED.search(output).group(1), output

    def mlflow_command(self, entry: str, *args: str) -> list[str]:
        return [MLFLOW, "run", ".", "-e", entry, *args, "--env-manager", "local"]

    def start(self, command: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
        """A command in its own process group (so a SIGKILL takes `mlflow run` and the stage it started)."""
        return subprocess.Popen(command, cwd=cwd or self.root, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def pipelines(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        """`python -m pipelines ...` with no experiment variable: its runs go to experiment synthmix."""
        return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    """A fresh store, also this process's tracking store (MLflow resolves a run's logged model through the current one)."""
    made = Store(tmp_path)
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", made.uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(made.uri)
    yield made
    mlflow.set_tracking_uri(previous)


def params(values: dict) -> list[str]:
    return [word for key, value in values.items() for word in ("-P", f"{key}={value}")]


def wait_for(condition, process: subprocess.Popen, log: Path, seconds: float = 300, every: float = 0.1):
    """Poll `condition()` until it returns something truthy (returned); fails if the process ends first."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the command ended (exit {process.returncode}) before the moment to stop it:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(every)


def kill(process: subprocess.Popen, sig=signal.SIGKILL) -> None:
    os.killpg(process.pid, sig)
    process.wait(timeout=60)


def checkpointed_train_run(store: Store, experiment_ids: list[str]):
    """The RUNNING train run once it has logged checkpoints/last.pt, else None."""
    for run in store.runs(experiment_ids, "train", "RUNNING"):
        if "checkpoints/last.pt" in store.artifacts(run.info.run_id, "checkpoints"):
            return run
    return None


def test_mlflow_run_train_then_evaluate_by_the_printed_id(store, tiny):
    train_id, _ = store.mlflow_run("train", *TRAIN, "-P", "epochs=1", "-P", f"data={tiny}")
    trained = store.client.get_run(train_id)
    assert trained.info.status == "FINISHED" and trained.data.tags["synthmix.stage"] == "train"
    assert "synthmix.points_to" not in trained.data.tags  # a fresh result lives in the run MLflow made
    assert "val/acc" in trained.data.metrics and store.steps(train_id) == [0]
    assert "model/MLmodel" in store.artifacts(train_id, "model") and "confusion_matrix/val.png" in store.artifacts(train_id, "confusion_matrix")

    evaluate_id, _ = store.mlflow_run("evaluate", "-P", f"train_run={train_id}", "-P", "device=cpu")
    evaluated = store.client.get_run(evaluate_id)
    assert evaluated.info.status == "FINISHED" and "test/acc" in evaluated.data.metrics
    assert evaluated.data.tags["synthmix.train_run"] == train_id
    # both where MLflow put them: the Default experiment, as no --experiment-name was given
    assert trained.info.experiment_id == evaluated.info.experiment_id == store.experiment("Default") == "0"
    assert {r.info.run_id for r in store.runs()} == {train_id, evaluate_id}


def test_synthesize_mix_train_evaluate_chained_by_printed_ids_and_a_rerun_is_a_pointer(store, tiny):
    synthesize = ["-P", f"data={tiny}", "-P", "generator=vae", "-P", "per_class=8", "-P", "epochs=1", "-P", "quality=false", "-P", "device=cpu"]
    synth_id, _ = store.mlflow_run("synthesize", *synthesize)
    synthesized = store.client.get_run(synth_id)
    assert synthesized.data.metrics["synth/images"] == 24 and store.artifacts(synth_id, "dataset")
    mix_id, _ = store.mlflow_run("mix", "-P", f"data={tiny}", "-P", f"synthetic_run={synth_id}", "-P", "ratio=0.5")
    mixed = store.client.get_run(mix_id)
    assert 0.4 <= mixed.data.metrics["mix/synthetic_fraction"] <= 0.6
    train_id, _ = store.mlflow_run("train", *TRAIN, "-P", "epochs=1", "-P", f"dataset_run={mix_id}")
    trained = store.client.get_run(train_id)
    assert "val/acc" in trained.data.metrics and trained.data.tags["synthmix.dataset_digest"]
    evaluate_id, _ = store.mlflow_run("evaluate", "-P", f"train_run={train_id}", "-P", "device=cpu")
    evaluated = store.client.get_run(evaluate_id)
    assert "test/acc" in evaluated.data.metrics and evaluated.data.tags["synthmix.train_run"] == train_id
    fresh = [synth_id, mix_id, train_id, evaluate_id]
    assert all("synthmix.points_to" not in store.client.get_run(i).data.tags for i in fresh)

    # the same synthesize command again: its run is a pointer to the first, with its metrics and a description
    again_id, output = store.mlflow_run("synthesize", *synthesize)
    assert again_id != synth_id and "reused (same config, code and inputs)" in output
    pointer = store.client.get_run(again_id)
    assert pointer.info.status == "FINISHED" and pointer.data.tags["synthmix.points_to"] == synth_id
    assert pointer.data.metrics == synthesized.data.metrics
    assert synth_id in pointer.data.tags["mlflow.note.content"]
    assert "synthesize" not in {r.data.tags.get("synthmix.stage") for r in store.runs() if r.info.run_id not in (synth_id, again_id)}

    # an option that takes a run id follows the pointer: the mix is the same mix, reused
    mix_again_id, output = store.mlflow_run("mix", "-P", f"data={tiny}", "-P", f"synthetic_run={again_id}", "-P", "ratio=0.5")
    assert store.client.get_run(mix_again_id).data.tags["synthmix.points_to"] == mix_id
    assert {r.info.experiment_id for r in store.runs()} == {"0"}
    assert store.runs(status="RUNNING") == []


def test_a_killed_mlflow_run_train_is_continued_by_the_same_command(store, slow_epochs, tmp_path):
    args = [*TRAIN, "-P", "epochs=3", "-P", "checkpoint_every=0", "-P", f"data={slow_epochs}"]
    log = tmp_path / "killed.log"
    process = store.start(store.mlflow_command("train", *args), log, cwd=REPO)
    killed = wait_for(lambda: checkpointed_train_run(store, ["0"]), process, log)
    kill(process)
    killed_id = killed.info.run_id
    assert store.client.get_run(killed_id).info.status == "RUNNING"  # nothing ended it: the process is gone

    again_id, output = store.mlflow_run("train", *args)
    continued = re.search(r"continuing from the checkpoint of epoch (\d)/3", output)
    assert continued, (output[-4000:], store.keys())
    epoch = int(continued.group(1))
    assert 1 <= epoch <= 2
    pointer = store.client.get_run(again_id)
    assert again_id != killed_id and pointer.data.tags["synthmix.points_to"] == killed_id and pointer.info.status == "FINISHED"
    holder = store.client.get_run(killed_id)
    assert holder.info.status == "FINISHED" and "model/MLmodel" in store.artifacts(killed_id, "model")
    assert store.steps(killed_id) == [0, 1, 2]  # one value per epoch: none repeated, none lost
    assert pointer.data.metrics["val/acc"] == holder.data.metrics["val/acc"]
    assert {r.info.run_id for r in store.runs()} == {killed_id, again_id} and store.runs(status="RUNNING") == []


@pytest.mark.parametrize("experiment", [None, "front-door"])
def test_mlflow_run_main_nests_its_steps_in_the_experiment_mlflow_used(store, tiny, experiment):
    options = ["--experiment-name", experiment] if experiment else []
    experiment_id = store.experiment(experiment, create=True) if experiment else "0"
    study_id, _ = store.mlflow_run("main", *params({**STUDY, "data": tiny}), *options)
    study = store.client.get_run(study_id)
    assert study.info.experiment_id == experiment_id and study.info.status == "FINISHED" and "synthmix.points_to" not in study.data.tags
    assert {"report.html", "results.csv", "runs.csv"} <= store.artifacts(study_id)
    assert study.data.metrics["study/cells_ok"] == 4 and any(k.startswith("study/test/acc/mean/") for k in study.data.metrics)
    steps = [r for r in store.runs() if r.data.tags.get("mlflow.parentRunId") == study_id]
    assert sorted(r.data.tags["synthmix.stage"] for r in steps) == ["evaluate"] * 4 + ["mix"] * 2 + ["synthesize"] + ["train"] * 4
    assert {r.info.experiment_id for r in steps} == {experiment_id} and {r.info.status for r in steps} == {"FINISHED"}
    assert {r.info.experiment_id for r in store.runs()} == {experiment_id}  # nothing landed anywhere else


def test_a_killed_study_is_continued_by_the_same_direct_command(store, tiny, tmp_path):
    args = ["main", *[word for key, value in {**STUDY, "data": tiny}.items() for word in (f"--{key.replace('_', '-')}", str(value))]]
    log = tmp_path / "killed.log"
    process = store.start([sys.executable, "-m", "pipelines", *args], log)

    def a_finished_training():
        found = store.client.get_experiment_by_name("synthmix")
        return found and store.runs([found.experiment_id], "train", "FINISHED")

    wait_for(a_finished_training, process, log, every=0.2)
    kill(process)
    synthmix = store.experiment("synthmix")
    [killed] = store.runs([synthmix], "main")
    assert killed.info.status == "RUNNING"

    rerun = store.pipelines(*args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    [study] = store.runs([synthmix], "main")  # the same parent, continued
    assert study.info.run_id == killed.info.run_id and study.info.status == "FINISHED"
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=study.info.run_id, artifact_path="runs.csv", dst_path=str(tmp_path / "table"), tracking_uri=store.uri))
    assert "reused" in set(table["status"])  # the synthesis and the finished training were not done again
    assert len(store.runs([synthmix], "synthesize")) == 1 and len(store.runs([synthmix], "train", "FINISHED")) == 4
    assert store.runs(status="RUNNING") == []


def test_a_run_claimed_by_a_process_killed_before_it_opened_the_run_is_ended_by_the_next_command(store, tmp_path):
    """A kill can land between creating a stage's run and its first heartbeat (the study above once left an
    evaluate run RUNNING that way); the run carries its creator's heartbeat from creation, so it is ended."""
    synthmix = store.experiment("synthmix", create=True)
    claim = ("import os, signal\nfrom tracking.stage import new_run\n"
             f"run = new_run({synthmix!r}, 'claimed-then-killed', {{'synthmix.stage': 'evaluate'}})\n"
             "print(run.info.run_id, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", claim], cwd=REPO, env=store.env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_id = killed.stdout.split()[0]
    assert store.client.get_run(run_id).info.status == "RUNNING"
    from tracking.runs import end_dead_runs

    assert end_dead_runs(synthmix) == [run_id]
    ended = store.client.get_run(run_id)
    assert ended.info.status == "FAILED" and "heartbeat" in ended.data.tags["synthmix.failed_by"]


def test_a_killed_direct_train_continues_in_the_same_run(store, slow_epochs, tmp_path):
    args = ["train", "--data", str(slow_epochs), "--model", "smallcnn", "--batch-size", "16", "--device", "cpu", "--epochs", "3", "--checkpoint-every", "0"]
    log = tmp_path / "killed.log"
    process = store.start([sys.executable, "-m", "pipelines", *args], log)

    def checkpointed():
        found = store.client.get_experiment_by_name("synthmix")
        return found and checkpointed_train_run(store, [found.experiment_id])

    killed = wait_for(checkpointed, process, log)
    kill(process)
    rerun = store.pipelines(*args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"train run continued: {killed.info.run_id}" in rerun.stdout, (rerun.stdout[-4000:], store.keys())
    assert re.search(r"continuing from the checkpoint of epoch [12]/3", rerun.stdout)
    assert rerun.stdout.strip().endswith(f"run {killed.info.run_id}")
    run = store.client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED" and store.steps(run.info.run_id) == [0, 1, 2]
    assert [r.info.run_id for r in store.runs()] == [killed.info.run_id] and store.runs(status="RUNNING") == []


def test_sigterm_ends_a_direct_train_killed_with_exit_143(store, slow_epochs, tmp_path):
    args = ["train", "--data", str(slow_epochs), "--model", "smallcnn", "--batch-size", "16", "--device", "cpu", "--epochs", "3"]
    log = tmp_path / "terminated.log"
    process = store.start([sys.executable, "-m", "pipelines", *args], log)

    def training():
        found = store.client.get_experiment_by_name("synthmix")
        return found and [r for r in store.runs([found.experiment_id], "train", "RUNNING") if store.client.get_metric_history(r.info.run_id, "val/acc")]

    [running] = wait_for(training, process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143, log.read_text()[-3000:]
    assert "stopped by SIGTERM" in log.read_text()
    assert store.client.get_run(running.info.run_id).info.status == "KILLED"


def test_two_sweep_workers_started_at_once_share_one_synthesis(store, tiny, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("ratio: 0.5\nkind: none\nlr: 0.003\n")  # every trial mixes in synthetic images
    args = [sys.executable, "-m", "pipelines", "sweep", "--data", str(tiny), "--space", str(space), "--model", "smallcnn", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--n-trials", "2", "--storage", f"sqlite:///{tmp_path / 'sweeps.db'}",
            "--study", f"at-once-{uuid.uuid4().hex[:8]}", "--generator", "vae", "--per-class", "8", "--pruner", "none"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [store.start(args, log) for log in logs]
    for worker, log in zip(workers, logs):
        assert worker.wait(timeout=600) == 0, log.read_text()[-4000:]
    [synthesis] = store.runs(stage="synthesize")
    assert synthesis.info.status == "FINISHED"
    assert {r.data.tags["synthmix.synthetic_run"] for r in store.runs(stage="sweep")} == {synthesis.info.run_id}
    assert len(store.runs(stage="sweep")) == 2 and store.runs(status="RUNNING") == []
