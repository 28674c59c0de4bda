"""Runs in the tracking store: which experiment a command logs to, finding a
stage's runs by config hash, following pointers, heartbeats that tell a live
run from one whose process died, and telling the user where to look.

A *pointer* is a run that holds no result of its own: the run `mlflow run`
made for a command whose result another run holds (a finished run reused, a
killed one continued). Its tag `synthmix.points_to` names that run, and every
option that takes a run id follows it (`get_run`).

A *heartbeat* is the tag `synthmix.heartbeat` = "<host> <pid> <unix time>",
rewritten every HEARTBEAT_S seconds by the process that runs the run. A
RUNNING run whose process is gone (same host) or whose heartbeat is older than
GRACE_S is dead: `end_dead_runs` ends it FAILED, as Optuna fails a stale trial.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("pipelines", "models", "imaging", "tracking")

TAG_STAGE = "synthmix.stage"
TAG_CONFIG = "synthmix.config_hash"
TAG_CODE = "synthmix.code_version"
TAG_PRUNED = "synthmix.pruned"
TAG_POINTER = "synthmix.points_to"  # on a pointer run: the run that holds its result
TAG_HEARTBEAT = "synthmix.heartbeat"
TAG_FAILED_BY = "synthmix.failed_by"
NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
EXPERIMENT = "synthmix"  # direct commands log here unless MLFLOW_EXPERIMENT_NAME / _ID say otherwise
# MLflow 3 shows an experiment as GenAI or as model training by this tag
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
HEARTBEAT_S = float(os.environ.get("SYNTHMIX_HEARTBEAT_S", "15"))  # seconds between a running run's heartbeats
GRACE_S = 3 * HEARTBEAT_S + 15  # a heartbeat older than this means the run's process is gone
EMPTY = ("", "''", '""')  # MLflow logs an empty string parameter as '' (mlflow/mlflow#6811)


@lru_cache(maxsize=1)
def code_version() -> str:
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- where runs go

_project_run: list = []  # the run `mlflow run` made for this process, taken once (MLFLOW_RUN_ID)


def take_project_run():
    """The run `mlflow run` made for this command (MLFLOW_RUN_ID), once per process; None for a direct command.

    The variable is removed, so no later `mlflow.start_run` (a nested step) mistakes it for its own.
    """
    if not _project_run:
        run_id = os.environ.pop("MLFLOW_RUN_ID", "")
        _project_run.append(MlflowClient().get_run(run_id) if run_id else None)
        return _project_run[0]
    return None


def command_experiment() -> str:
    """The experiment this command logs to: MLFLOW_EXPERIMENT_ID / _NAME (what `mlflow run` and users set),
    else one chosen with `mlflow.set_experiment`, else "synthmix"; shown by the UI as model training."""
    from mlflow.tracking.fluent import _active_experiment_id

    client = MlflowClient()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not experiment_id and os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        experiment_id = _ensure_experiment(client, os.environ["MLFLOW_EXPERIMENT_NAME"])
    experiment_id = experiment_id or _active_experiment_id or _ensure_experiment(client, EXPERIMENT)
    mlflow.set_experiment(experiment_id=experiment_id)
    mark_training_experiment(client, experiment_id)
    return experiment_id


def mark_training_experiment(client, experiment_id: str) -> None:
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception:  # workers starting at once race to insert the same tag; one of them wins
        if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            raise


def _ensure_experiment(client, name: str) -> str:
    """The id of experiment `name`, created when missing; workers started at once may both try, and one wins."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:  # not the race: a real failure
            raise
        return found.experiment_id


# ---------------------------------------------------------------- finding runs

def find_runs(experiment_id: str, stage: str, key_hash: str, statuses: tuple[str, ...]) -> list:
    """Runs of `stage` in the experiment with this config hash and one of `statuses`, newest first."""
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_CONFIG}` = '{key_hash}'",
        order_by=["attributes.start_time DESC"], max_results=1000,
    )
    return [run for run in runs if run.info.status in statuses]


def get_run(run_id: str, what: str = "run"):
    """The run that holds the result of `run_id` (a pointer is followed), or an InputError that says it is not in this store."""
    from imaging.errors import InputError

    run_id = (run_id or "").strip()
    if run_id in EMPTY:
        raise InputError(f"no {what} id given; pass the id shown by the stage that made it (or in the MLflow UI).")
    client = MlflowClient()
    for _ in range(10):  # a pointer names a run that holds a result; a chain is short
        try:
            run = client.get_run(run_id)
        except Exception as error:
            raise InputError(f"{what} {run_id!r} is not in the tracking store {mlflow.get_tracking_uri()}; check the id, or set MLFLOW_TRACKING_URI to the store that holds it.") from error
        if not run.data.tags.get(TAG_POINTER):
            return run
        run_id = run.data.tags[TAG_POINTER]
    raise InputError(f"{what} {run_id!r} is a chain of pointer runs that does not end; pass the id of the run that holds the result.")


def run_params(run) -> dict[str, str]:
    """A run's parameters as the stage resolved them (resolved.<name> over what `mlflow run` logged; '' read as empty)."""
    params = {k: v for k, v in run.data.params.items() if not k.startswith("resolved.")}
    params.update({k.removeprefix("resolved."): v for k, v in run.data.params.items() if k.startswith("resolved.")})
    return {k: "" if v in EMPTY else v for k, v in params.items()}


def log_params_once(run_id: str, params: dict) -> None:
    """Log parameters; where `mlflow run` already logged one with another spelling, log ours as resolved.<name>."""
    run = MlflowClient().get_run(run_id)
    logged, existing = run.data.params, run_params(run)
    fresh = {}
    for key, value in params.items():
        text = "" if value is None else str(value)
        if key not in existing:
            fresh[key] = text
        elif existing[key] != text and f"resolved.{key}" not in logged:
            fresh[f"resolved.{key}"] = text
    if fresh:
        mlflow.log_params(fresh, run_id=run_id)


def set_tags(run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def has_artifact(run_id: str, path: str) -> bool:
    folder, _, name = path.rpartition("/")
    try:
        return any(f.path == path for f in MlflowClient().list_artifacts(run_id, folder or None))
    except Exception:
        return False


def delete_artifacts(run_id: str, path: str) -> None:
    """Remove a run's artifact folder where the artifact store allows it (local, mlflow-artifacts, S3, ...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri).delete_artifacts(path)
    except Exception as error:  # a store without deletion keeps the file; nothing else depends on it
        print(f"[synthmix] could not delete {path}/ of run {run_id} ({error.__class__.__name__}); it stays", flush=True)


# ---------------------------------------------------------------- pointers

def make_pointer(pointer_id: str, target, verb: str) -> None:
    """Turn `pointer_id` (the run `mlflow run` made) into a pointer to `target`: tag, description, name."""
    stage = target.data.tags.get(TAG_STAGE, "run")
    page = f"#/experiments/{target.info.experiment_id}/runs/{target.info.run_id}?{TRAINING_VIEW}"  # relative: works on any UI's address
    set_tags(pointer_id, {
        TAG_POINTER: target.info.run_id, "mlflow.runName": f"{target.info.run_name} ({verb})",
        NOTE: f"This command {verb} the {stage} run [{target.info.run_name}]({page}) ({target.info.run_id}), which holds the "
              f"artifacts and metrics. Any synthmix option that takes a run id accepts this run's id too.",
    })
    print(f"[synthmix] the run `mlflow run` made ({pointer_id}) points at the {stage} run {target.info.run_id}, which holds the result", flush=True)


def copy_metrics(pointer_id: str, target_id: str) -> None:
    """The target's final metrics on the pointer, so its row in the UI is not empty."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in MlflowClient().get_run(target_id).data.metrics.items()]
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
        MlflowClient().log_batch(pointer_id, metrics=metrics[start:start + 1000])


# ---------------------------------------------------------------- heartbeats

_beating: set[str] = set()
_beat_lock = threading.Lock()
_beat_thread: list[threading.Thread] = []


def beat_value() -> str:
    """The heartbeat tag's value for this process now (tag a run with it when it is claimed)."""
    return f"{socket.gethostname()} {os.getpid()} {time.time():.0f}"


def start_heartbeat(run_id: str) -> None:
    """Mark `run_id` as run by this process now and every HEARTBEAT_S seconds until `stop_heartbeat`."""
    MlflowClient().set_tag(run_id, TAG_HEARTBEAT, beat_value())
    with _beat_lock:
        _beating.add(run_id)
        if not _beat_thread:
            thread = threading.Thread(target=_beat_loop, name="synthmix-heartbeat", daemon=True)
            _beat_thread.append(thread)
            thread.start()


def stop_heartbeat(run_id: str) -> None:
    with _beat_lock:
        _beating.discard(run_id)


def _beat_loop() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _beat_lock:
            run_ids = list(_beating)
        for run_id in run_ids:
            try:
                MlflowClient().set_tag(run_id, TAG_HEARTBEAT, beat_value())
            except Exception:  # a busy store misses one beat; the grace period covers it
                pass


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def is_dead(run) -> bool:
    """A RUNNING run whose process is gone (same host) or silent for GRACE_S seconds."""
    if run.info.status != "RUNNING":
        return False
    beat = run.data.tags.get(TAG_HEARTBEAT, "").split()
    if len(beat) != 3:  # never beat: an old run, or one whose command died before it started working
        return time.time() - (run.info.start_time or 0) / 1000 > GRACE_S
    host, pid, when = beat[0], int(beat[1]), float(beat[2])
    if host == socket.gethostname() and pid != os.getpid() and _process_gone(pid):
        return True
    return time.time() - when > GRACE_S


def end_dead_runs(experiment_id: str, keep: tuple[str, ...] = ()) -> list[str]:
    """End FAILED every RUNNING synthmix run of the experiment whose process died (but those in `keep`); their ids."""
    client = MlflowClient()
    running = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' AND tags.`{TAG_HEARTBEAT}` LIKE '%'", max_results=1000)
    ended = []
    for run in running:
        if run.info.run_id in keep or run.info.run_id in _beating or not is_dead(run):
            continue
        client.set_tag(run.info.run_id, TAG_FAILED_BY, "heartbeat: its process stopped (killed, or its machine went away)")
        client.set_terminated(run.info.run_id, "FAILED")
        ended.append(run.info.run_id)
    if ended:
        print(f"[synthmix] ended {len(ended)} run(s) whose process had died as FAILED: {', '.join(ended)}", flush=True)
    return ended


# ---------------------------------------------------------------- where to look

# MLflow 3 opens an experiment on its GenAI pages unless the URL asks for model training
# (the experiment tag alone does not change what a fresh browser shows, checked in 3.17.2)
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base() -> str:
    """Where the MLflow UI for the current tracking store is (or what to start to see it)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + "/"
    return "http://127.0.0.1:5000/"


def run_url(run) -> str:
    """The run's page: on the tracking server, or what to start to see it locally."""
    page = f"{ui_base()}#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{TRAINING_VIEW}"
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return page
    return f"run `mlflow ui --backend-store-uri {uri}` and open {page}"


def runs_table_url(experiment_id: str, search_filter: str) -> str:
    """The UI's runs table filtered by `search_filter`, sorted by name: nested runs listed flat, not folded under their parent."""
    from urllib.parse import quote

    return (f"{ui_base()}#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&searchFilter=" + quote(search_filter, safe="")
            + "&orderByKey=" + quote("tags.`mlflow.runName`", safe="") + "&orderByAsc=true")


def announce(run, verb: str = "started") -> None:
    print(f"[synthmix] {run.data.tags.get(TAG_STAGE, 'run')} run {verb}: {run.info.run_id} ({run.info.run_name})", flush=True)
    print(f"[synthmix]   view: {run_url(run)}", flush=True)


def quiet_mlflow() -> None:
    """Keep MLflow's own INFO chatter out of the stage's output."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
