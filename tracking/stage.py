"""The stage skeleton: one cache key, one get-or-run.

Every stage reads in the same order: its declared PARAMS; its inputs resolved
(tracking/lineage.py: real data, a synthetic source, an upstream run id that
may be a pointer); `cache_key` over its parameters less the unhashed ones, the
upstream run ids and dataset digests, and the code version; then `get_or_run`,
which

- returns a finished run with that key (the run `mlflow run` made becomes a
  pointer to it),
- else calls `load()` (heavy loading; bad input raises here, before any run of
  ours exists),
- continues the run `resume(experiment_id, key_hash)` returns (a killed
  train run with a checkpoint, a study's parent shared by workers) or opens
  one: the run `mlflow run` made (MLFLOW_RUN_ID) when there is one, a nested
  run under the active one, or a new run in the command's experiment,
- and runs `work(run, loaded)` inside it, with a heartbeat, ending it
  FINISHED, FAILED, or KILLED (SIGINT, SIGTERM, an Optuna prune).

A fresh result and a reused one are the same StageResult.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import mlflow
from mlflow.tracking import MlflowClient

from tracking.runs import (
    TAG_CODE, TAG_CONFIG, TAG_HEARTBEAT, TAG_PRUNED, TAG_STAGE, announce, beat_value, code_version, command_experiment, copy_metrics, end_dead_runs,
    find_runs, log_params_once, make_pointer, set_tags, start_heartbeat, stop_heartbeat, take_project_run,
)


def cache_key(stage: str, params: dict, not_hashed: tuple[str, ...] = (), **inputs) -> str:
    """The config hash: the stage, its parameters less `not_hashed`, its inputs (upstream run ids,
    dataset digests) and the code version, so a finished run is reused only when rerunning it
    would compute the same thing."""
    hashed = {k: v for k, v in params.items() if k not in not_hashed}
    payload = json.dumps({"stage": stage, "params": hashed, "inputs": inputs, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def is_pruned(error: BaseException) -> bool:
    """An Optuna pruning signal (or anything that says it stops a run on purpose)."""
    return type(error).__name__ == "TrialPruned" or getattr(error, "synthmix_pruned", False)


def new_run(experiment_id: str, run_name: str, tags: dict, parent_id: str | None = None):
    """Create a run (with MLflow's usual source and user tags) without activating it. It carries this
    process's heartbeat from the start, so a command killed before the run opens leaves no run that
    stays RUNNING: `end_dead_runs` ends it."""
    from mlflow.tracking.context import registry

    all_tags = {**registry.resolve_tags(tags), TAG_HEARTBEAT: beat_value()}
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    return MlflowClient().create_run(experiment_id, run_name=run_name, tags=all_tags)


@contextlib.contextmanager
def open_run(run_id: str, params: dict, tags: dict, *, nested: bool = False, verb: str = "started"):
    """Activate run `run_id` in this process with a heartbeat, its tags and its parameters logged once;
    it ends FINISHED, KILLED (interrupted, or pruned: tagged so nothing resumes it) or FAILED."""
    mlflow.start_run(run_id=run_id, nested=nested)
    start_heartbeat(run_id)
    status = "FINISHED"
    try:
        mlflow.set_tags(tags)
        log_params_once(run_id, params)
        run = MlflowClient().get_run(run_id)
        announce(run, verb)
        yield run
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) or is_pruned(error) else "FAILED"
        if is_pruned(error):
            mlflow.set_tag(TAG_PRUNED, "true")
        raise
    finally:
        stop_heartbeat(run_id)
        mlflow.end_run(status)


@contextlib.contextmanager
def nested_run(stage: str, run_name: str, params: dict, tags: dict, key_hash: str = ""):
    """A new run of `stage` under the active run (a sweep's trial), opened as every stage run is."""
    parent = mlflow.active_run()
    run = new_run(parent.info.experiment_id, run_name, {TAG_STAGE: stage}, parent.info.run_id)
    with open_run(run.info.run_id, params, {TAG_STAGE: stage, TAG_CONFIG: key_hash, TAG_CODE: code_version(), **tags}, nested=True) as opened:
        yield opened


def get_or_run(
    stage: str,
    key_hash: str,
    *,
    load: Callable[[], object],
    work: Callable[[object, object], object],
    run_name: str,
    params: dict,
    tags: dict | None = None,
    nested: bool = False,
    reuse: bool = True,
    resume: Callable[[str, str], object] | None = None,
    lock=None,
) -> StageResult:
    """The one way a stage runs (see the module docstring). `work(run, load())` returns the run's
    metrics, or (metrics, extra outputs). `lock`: a context manager that workers of one storage share,
    held while the run to continue is looked up or a new one claimed."""
    project = None if nested else take_project_run()
    parent = mlflow.active_run() if nested else None
    experiment_id = (parent or project).info.experiment_id if (parent or project) else command_experiment()
    if reuse:
        finished = find_runs(experiment_id, stage, key_hash, ("FINISHED",))
        if finished:
            announce(finished[0], "reused (same config, code and inputs)")
            if project is not None:
                _point(project.info.run_id, finished[0], "reused", "FINISHED")
            return StageResult(stage, finished[0].info.run_id, dict(finished[0].data.metrics), reused=True)
    loaded = load()
    all_tags = {TAG_STAGE: stage, TAG_CONFIG: key_hash, TAG_CODE: code_version(), **(tags or {})}
    with lock if lock is not None else contextlib.nullcontext():
        target = resume(experiment_id, key_hash) if resume is not None else None
        if not nested:
            end_dead_runs(experiment_id, keep=(target.info.run_id,) if target is not None else ())
        if target is None:  # claimed now, so a worker waiting for the lock finds it
            run_id = project.info.run_id if project is not None else new_run(experiment_id, run_name, all_tags, parent and parent.info.run_id).info.run_id
            set_tags(run_id, {**all_tags, "mlflow.runName": run_name, TAG_HEARTBEAT: beat_value()})
        else:
            run_id = target.info.run_id
    pointer = project.info.run_id if project is not None and project.info.run_id != run_id else None
    if pointer:
        make_pointer(pointer, target, "continued")
        start_heartbeat(pointer)
    try:
        with open_run(run_id, params, all_tags, nested=nested, verb="continued" if target is not None else "started") as run:
            outcome = work(run, loaded)
    except BaseException as error:
        if pointer:
            _end_pointer(pointer, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if pointer:
        copy_metrics(pointer, run_id)
        _end_pointer(pointer, "FINISHED")
    metrics, extra = (outcome, {}) if not isinstance(outcome, tuple) else outcome
    result = StageResult(stage, run_id, dict(metrics or {}), extra=dict(extra))
    if "manifest" in result.extra:
        result.__dict__["manifest"] = result.extra.pop("manifest")  # no need to download what is in memory
    return result


def _point(pointer_id: str, target, verb: str, status: str) -> None:
    make_pointer(pointer_id, target, verb)
    copy_metrics(pointer_id, target.info.run_id)
    MlflowClient().set_terminated(pointer_id, status)


def _end_pointer(pointer_id: str, status: str) -> None:
    stop_heartbeat(pointer_id)
    MlflowClient().set_terminated(pointer_id, status)


def unfinished(experiment_id: str, stage: str, key_hash: str, usable: Callable[[object], bool] = lambda run: True):
    """The newest run of `stage` with this key that did not finish and whose process is gone (or that
    was stopped), if `usable(run)`: the run a rerun of a killed command continues."""
    from tracking.runs import is_dead

    for run in find_runs(experiment_id, stage, key_hash, ("RUNNING", "FAILED", "KILLED")):
        if run.data.tags.get(TAG_PRUNED) == "true" or (run.info.status == "RUNNING" and not is_dead(run)):
            continue
        if usable(run):
            return run
    return None
