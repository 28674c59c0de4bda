"""Run helpers: the one get-or-run every stage goes through, starting a stage's
run with its parameters logged once, the experiment runs go to, and telling
the user where to look.

A stage's *config hash* covers the stage name, its key (the parameters that
change the result, upstream run ids and dataset digests) and the code version
(a hash of this repo's Python sources), so a finished run is reused only when
rerunning it would compute the same thing. The key is computed before anything
heavy is loaded; a reused result and a fresh one are the same StageResult.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("pipelines", "models", "imaging", "tracking")

TAG_STAGE = "synthmix.stage"
TAG_CONFIG = "synthmix.config_hash"
TAG_CODE = "synthmix.code_version"
EXPERIMENT = "synthmix"  # runs go here unless MLFLOW_EXPERIMENT_NAME / _ID (or `mlflow run --experiment-name`) say otherwise
# MLflow 3 shows an experiment as GenAI or as model training by this tag
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


@lru_cache(maxsize=1)
def code_version() -> str:
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def config_hash(stage: str, params: dict) -> str:
    payload = json.dumps({"stage": stage, "params": params, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def log_params_once(params: dict) -> None:
    """Log parameters; where `mlflow run` already logged one with another spelling, log ours as resolved.<name>."""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh, resolved = {}, {}
    for key, value in params.items():
        text = "" if value is None else str(value)
        if key not in existing:
            fresh[key] = text
        elif existing[key] != text:
            resolved[f"resolved.{key}"] = text
    if fresh:
        mlflow.log_params(fresh)
    if resolved:
        mlflow.log_params({k: v for k, v in resolved.items() if k not in existing})


def use_experiment() -> str:
    """Make runs go to a named experiment that the MLflow UI shows as model training; returns its id.

    An explicit choice (MLFLOW_EXPERIMENT_NAME or _ID, `mlflow run --experiment-name`,
    `mlflow.set_experiment`) wins; otherwise the experiment is "synthmix", not "Default".
    When `mlflow run` already opened a run in "Default", that run gets a note pointing at ours.
    """
    from mlflow.tracking.fluent import _get_experiment_id

    client = MlflowClient()
    if os.environ.get("MLFLOW_EXPERIMENT_NAME") and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        _ensure_experiment(client, os.environ["MLFLOW_EXPERIMENT_NAME"])
    if mlflow.active_run() is None and not os.environ.get("MLFLOW_EXPERIMENT_NAME") and _get_experiment_id() in (None, "0"):
        project_run = os.environ.pop("MLFLOW_RUN_ID", None)
        _ensure_experiment(client, EXPERIMENT)
        experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
        if project_run:
            note = f"synthmix logs to the experiment '{EXPERIMENT}' (id {experiment_id}); open it for this command's runs, or pass --experiment-name."
            client.set_tag(project_run, "mlflow.note.content", note)
            print(f"[synthmix] {note}", flush=True)
    experiment_id = _get_experiment_id()
    experiment = client.get_experiment(experiment_id)
    if experiment is not None and experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        try:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception:  # workers starting at once race to insert the same tag; one of them wins
            if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                raise
    return experiment_id


def _ensure_experiment(client, name: str) -> None:
    """Create experiment `name` unless it exists; workers started at once may both try, and one wins."""
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except Exception:
            if client.get_experiment_by_name(name) is None:  # not the race: a real failure
                raise


@contextmanager
def stage_run(stage: str, run_name: str, params: dict, tags: dict | None, *, key_hash: str, run_id: str | None = None, nested: bool = False):
    """Start (or reopen `run_id`) a run for `stage`, tagged with its config hash and with its parameters logged once."""
    use_experiment()
    all_tags = {TAG_STAGE: stage, TAG_CONFIG: key_hash, TAG_CODE: code_version(), **(tags or {})}
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if run_id and project_run and project_run != run_id and not nested:
        # `mlflow run` made a fresh run for us, but we continue another: point the fresh one at it
        client = MlflowClient()
        client.set_tag(project_run, "synthmix.resumed_into", run_id)
        os.environ.pop("MLFLOW_RUN_ID")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested) as run:
        if not run_id and mlflow.active_run().info.run_name != run_name and project_run == run.info.run_id:
            mlflow.set_tag("mlflow.runName", run_name)
        mlflow.set_tags(all_tags)
        log_params_once(params)
        run = MlflowClient().get_run(run.info.run_id)
        announce(run, "resumed" if run_id else "started")
        try:
            yield run
        except BaseException as error:
            if is_pruned(error):  # stopped on purpose: KILLED and tagged, so nothing resumes it as a crash
                mlflow.set_tag(TAG_PRUNED, "true")
                mlflow.end_run("KILLED")
            raise


TAG_PRUNED = "synthmix.pruned"


def is_pruned(error: BaseException) -> bool:
    """An Optuna pruning signal (or anything that says it stops a run on purpose)."""
    return type(error).__name__ == "TrialPruned" or getattr(error, "synthmix_pruned", False)


def find_runs(stage: str, key_hash: str, statuses: tuple[str, ...]) -> list:
    """Runs of `stage` in the current experiment with this config hash and one of `statuses`, newest first."""
    from mlflow.tracking.fluent import _get_experiment_id

    runs = mlflow.search_runs(
        experiment_ids=[_get_experiment_id()],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_CONFIG}` = '{key_hash}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [run for run in runs if run.info.status in statuses]


@dataclass
class StageResult:
    """What every stage returns, whether it ran now or a finished run was reused."""

    stage: str
    run_id: str
    metrics: dict[str, float]
    reused: bool = False
    extra: dict = field(default_factory=dict)  # in-memory outputs of a fresh run (e.g. the classifier spec)

    @cached_property
    def manifest(self):
        """The dataset the run logged under dataset/ (a mix, a corrupted copy, synthetic images)."""
        from tracking.lineage import run_manifest

        return run_manifest(self.run_id, f"{self.stage} run")


def get_or_run(
    stage: str,
    key: dict,
    prepare: Callable[[], Callable],
    *,
    run_name: str,
    params: dict,
    tags: dict | None = None,
    nested: bool = False,
    reuse: bool = True,
    resume: Callable[[str], object] | None = None,
) -> StageResult:
    """The one way a stage runs: a finished run with the same key is returned as it is. On a miss,
    `prepare()` loads what is heavy and checks it (bad input raises here, before any run exists)
    and returns `work`; `work(run)` runs inside a new run (or the run `resume(key_hash)` returns)
    and returns the run's metrics, or (metrics, extra outputs).

    `key` must be cheap to compute: parameters that change the result, upstream run ids and
    dataset digests. The code version is added here.
    """
    key_hash = config_hash(stage, key)
    if reuse:
        finished = find_runs(stage, key_hash, ("FINISHED",))
        if finished:
            announce(finished[0], "reused (same config, code and inputs)")
            return StageResult(stage, finished[0].info.run_id, dict(finished[0].data.metrics), reused=True)
    work = prepare()
    resumed = resume(key_hash) if resume is not None else None
    run_id = resumed.info.run_id if resumed is not None else None
    with stage_run(stage, run_name, params, tags, run_id=run_id, nested=nested, key_hash=key_hash) as run:
        outcome = work(run)
    metrics, extra = (outcome, {}) if not isinstance(outcome, tuple) else outcome
    result = StageResult(stage, run.info.run_id, dict(metrics or {}), extra=dict(extra))
    if "manifest" in result.extra:
        result.__dict__["manifest"] = result.extra.pop("manifest")  # no need to download what is in memory
    return result


def get_run(run_id: str, what: str = "run"):
    """The run, or an InputError that says it is not in this tracking store."""
    from imaging.errors import InputError

    if not run_id:
        raise InputError(f"no {what} id given; pass the id shown by the stage that made it (or in the MLflow UI).")
    try:
        return MlflowClient().get_run(run_id)
    except Exception as error:
        raise InputError(f"{what} {run_id!r} is not in the tracking store {mlflow.get_tracking_uri()}; check the id, or set MLFLOW_TRACKING_URI to the store that holds it.") from error


def run_params(run) -> dict[str, str]:
    """A run's parameters as the stage resolved them (resolved.<name> over what `mlflow run` logged)."""
    params = {k: v for k, v in run.data.params.items() if not k.startswith("resolved.")}
    params.update({k.removeprefix("resolved."): v for k, v in run.data.params.items() if k.startswith("resolved.")})
    return params


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


def quiet_mlflow() -> None:
    """Keep MLflow's own INFO chatter out of the stage's output."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
