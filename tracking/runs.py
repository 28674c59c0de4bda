"""Run helpers: starting a stage's run, logging its parameters once, finding a
run to reuse or resume, and telling the user where to look.

A stage's *config hash* covers the stage name, its resolved parameters, the
upstream run ids inside them and the code version (a hash of this repo's
Python sources), so a finished run is reused only when rerunning it would
compute the same thing.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("pipelines", "models", "imaging", "tracking")

TAG_STAGE = "synthmix.stage"
TAG_CONFIG = "synthmix.config_hash"
TAG_CODE = "synthmix.code_version"


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


def run_url(run) -> str:
    """The run's page: on the tracking server, or what to start to see it locally."""
    uri = mlflow.get_tracking_uri()
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"run `mlflow ui --backend-store-uri {uri}` and open http://127.0.0.1:5000/{page}"


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


@contextmanager
def stage_run(stage: str, run_name: str, params: dict, tags: dict | None = None, *, run_id: str | None = None, nested: bool = False, hashed: dict | None = None):
    """Start (or reopen `run_id`) a run for `stage`, tagged and with its parameters logged once.

    `hashed` is what the config hash covers (default: `params`); put upstream digests in it.
    """
    all_tags = {TAG_STAGE: stage, TAG_CONFIG: config_hash(stage, params if hashed is None else hashed), TAG_CODE: code_version(), **(tags or {})}
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
        yield run


def find_runs(stage: str, params: dict, statuses: tuple[str, ...]) -> list:
    """Runs of `stage` in the current experiment with the same config hash and one of `statuses`, newest first."""
    from mlflow.tracking.fluent import _get_experiment_id

    runs = mlflow.search_runs(
        experiment_ids=[_get_experiment_id()],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_CONFIG}` = '{config_hash(stage, params)}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [run for run in runs if run.info.status in statuses]


def reuse(stage: str, hashed: dict) -> dict | None:
    """A finished run of `stage` with this config, as a stage result, or None."""
    runs = find_runs(stage, hashed, ("FINISHED",))
    if not runs:
        return None
    announce(runs[0], "reused (same config, code and inputs)")
    return {"run_id": runs[0].info.run_id, "metrics": dict(runs[0].data.metrics), "reused": True}


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


def quiet_mlflow() -> None:
    """Keep MLflow's own INFO chatter out of the stage's output."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
