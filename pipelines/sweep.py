"""sweep: an Optuna study over the synthetic ratio, a training-time corruption and its strength, and the learning rate, with pruning; many workers can share it.

    python -m pipelines sweep --n-trials 20                                   # one machine, sqlite:///sweeps.db
    python -m pipelines sweep --storage postgresql://host/db --study s1 --n-trials 60   # start it on every machine

The search space comes from --space, a YAML or JSON file (the default space is
below); every trial samples it, mixes synthetic and real images at its ratio
(mix, reused when the same mix exists), trains in-process with its corruption
as --augment and its learning rate, and reports the objective (--metric, per
epoch) to Optuna, whose pruner may stop it early. A trial is a nested MLflow
run under the worker's sweep run, tagged optuna.study, optuna.trial and
optuna.state (COMPLETE, PRUNED, FAIL); a pruned trial and its training end
KILLED with the tag synthmix.pruned and are never resumed. The train run below
each trial holds the model, so `register --parent-run <sweep run>` registers
the best trial's model.

Workers started with the same --study and --storage share one study: Optuna
hands out the trials, --n-trials is the study's total of finished (COMPLETE
or PRUNED) trials over all workers. With database storage every running trial
sends a heartbeat; a trial whose worker died becomes FAIL (and its MLflow runs
FAILED) once it has been silent for 3 heartbeats, and --retry-failed N runs
its parameters again. When a worker ends, its sweep run logs the study's best
trial and the optimisation history, parameter importances, parallel
coordinates and contour plots.

The default space, as a space file would write it:

    ratio: {low: 0.0, high: 0.9}
    kind: {choices: [none, salt_pepper, gradient_noise, blend, gaussian_noise, impulse_noise]}
    severity: {low: 1, high: 5}
    probability: {low: 0.1, high: 1.0}
    lr: {low: 0.0001, high: 0.01, log: true}

An entry is a fixed value, {low, high} (with log: true and step optional) or
{choices: [...]}. Parameters: ratio (synthetic fraction, 0 <= x < 1), kind
(none or a corruption family), severity (1..5), probability (0..1), lr (> 0),
weight_decay (>= 0), batch_size (>= 1).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click

from pipelines import mix as mix_stage
from pipelines import synthesize as synthesize_stage
from pipelines import train as train_stage
from pipelines._cli import DEVICE, data_params, defaults, option, optional, pick, stage_command

PARAMS = [
    *data_params(),
    *pick(synthesize_stage.PARAMS, "generator", "per_class"),
    *pick(mix_stage.PARAMS, "synthetic_run", "synthetic_data"),
    option("space", "", "Search space: a YAML or JSON file mapping ratio, kind, severity, probability, lr, weight_decay, batch_size to a value, "
           "{low, high, log, step} or {choices: [...]}; empty: ratio 0-0.9, kind in none/salt_pepper/gradient_noise/blend/gaussian_noise/impulse_noise, "
           "severity 1-5, probability 0.1-1, lr 1e-4-1e-2 (log)."),
    option("metric", "val/acc", "Objective, reported every epoch so the pruner can act: val/acc or val/loss of the trial's training, or val_robust/acc, "
           "its accuracy on the val split corrupted by --val-corruption.", click.Choice(["val/acc", "val/loss", "val_robust/acc"])),
    option("val_corruption", "salt_pepper:3", "kind:severity of the corrupted val split that --metric val_robust/acc scores (images up to 64 px)."),
    option("direction", "auto", "maximize or minimize the metric; auto: minimize val/loss, maximize val/acc.", click.Choice(["auto", "maximize", "minimize"])),
    option("sampler", "tpe", "Optuna sampler: tpe (seeded per trial number, so workers do not repeat each other) or random.", click.Choice(["tpe", "random"])),
    option("pruner", "median", "median (stop a trial below the median of earlier trials at the same epoch), hyperband, or none.", click.Choice(["median", "hyperband", "none"])),
    option("n_trials", 20, "Finished (COMPLETE or PRUNED) trials the study should have, over all workers; a worker stops when it has them.", click.IntRange(1)),
    option("storage", "", "Optuna storage: a database URL (postgresql://user@host/db for many workers); empty: sqlite:///sweeps.db in this folder."),
    option("study", "", "Optuna study name; workers with the same name and storage share the study; empty: sweep-<data>-<model>."),
    *pick(train_stage.PARAMS, "model", "epochs", "batch_size"),
    option("seed", 0, "Seed of the sampler (plus the trial number) and of every trial's mix and training.", int),
    option("heartbeat", 10, "Seconds between a running trial's heartbeats (database storage); a trial silent for 3 of them is failed by the next worker that looks.", click.IntRange(1)),
    option("retry_failed", 0, "How many times a trial that failed because its worker died is run again with the same parameters.", click.IntRange(0)),
    DEVICE,
]
DEFAULTS = defaults(PARAMS)
DEFAULT_STORAGE = "sqlite:///sweeps.db"

DEFAULT_SPACE = {
    "ratio": {"low": 0.0, "high": 0.9},
    "kind": {"choices": ["none", "salt_pepper", "gradient_noise", "blend", "gaussian_noise", "impulse_noise"]},
    "severity": {"low": 1, "high": 5},
    "probability": {"low": 0.1, "high": 1.0},
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
}
# parameter -> (kind of value, lowest allowed, highest allowed, is the highest itself allowed)
KNOWN = {
    "ratio": (float, 0.0, 1.0, False),
    "lr": (float, 0.0, math.inf, False),
    "weight_decay": (float, 0.0, math.inf, True),
    "probability": (float, 0.0, 1.0, True),
    "severity": (int, 1, 5, True),
    "batch_size": (int, 1, 1 << 20, True),
    "kind": (str, None, None, True),
}
AUGMENT_PARTS = ("severity", "probability")  # sampled only when kind is not none


@dataclass
class Space:
    entries: dict  # name -> fixed value, ("range", low, high, log, step) or ("choices", [...])
    source: str

    def suggest(self, trial) -> dict:
        values = {}
        for name in ("ratio", "lr", "weight_decay", "batch_size", "kind", "severity", "probability"):
            if name not in self.entries or (name in AUGMENT_PARTS and values.get("kind", "none") == "none"):
                continue
            entry = self.entries[name]
            if isinstance(entry, tuple) and entry[0] == "choices":
                values[name] = trial.suggest_categorical(name, entry[1])
            elif isinstance(entry, tuple):
                _, low, high, log, step = entry
                if KNOWN[name][0] is int:
                    values[name] = trial.suggest_int(name, int(low), int(high), log=log, step=int(step or 1))
                else:
                    values[name] = trial.suggest_float(name, low, high, log=log, step=step)
            else:
                values[name] = entry
        return values

    def may_use_synthetic(self) -> bool:
        entry = self.entries.get("ratio", 0.0)
        if isinstance(entry, tuple):
            return entry[2] > 0 if entry[0] == "range" else any(float(v) > 0 for v in entry[1])
        return float(entry) > 0


def load_space(path: str | None) -> Space:
    """The space file, checked entry by entry before any trial; InputError names the bad entry."""
    raw, source = _read_space(path) if path else (DEFAULT_SPACE, "the default space")
    return Space({name: _space_entry(name, entry, f"{source}: {name}") for name, entry in raw.items()}, source)


def _read_space(path: str) -> tuple[dict, str]:
    """(the space file's mapping, how to name it in errors)."""
    from imaging.errors import InputError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"--space {path}: no such file; give a YAML or JSON file like the default space in `python -m pipelines sweep --help`.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"--space {path} is not UTF-8 text (byte {error.start} is {error.object[error.start:error.start + 1]!r}); save it as a UTF-8 YAML or JSON file.") from None
    try:
        if file.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as error:
        raise InputError(f"--space {path} is not valid {'JSON' if file.suffix.lower() == '.json' else 'YAML'} ({str(error).splitlines()[0]}).") from None
    source = f"space file {path}"
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{source} must map parameter names to values, ranges or choices, e.g. lr: {{low: 0.0001, high: 0.01, log: true}}.")
    return raw, source


def _space_value(name: str, value, where: str, what: str = ""):
    """One value of parameter `name`, checked against KNOWN (a corruption family, or a number in range)."""
    from imaging.corruptions import KINDS
    from imaging.errors import InputError

    kind, lowest, highest, top_allowed = KNOWN[name]
    if kind is str:
        if value != "none" and value not in KINDS:
            raise InputError(f"{where}: unknown corruption family {value!r}; use none or one of {', '.join(KINDS)}.")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what}{value!r} is not a number.") from None
    if kind is int and number != int(number):
        raise InputError(f"{where}: {what}{value!r} is not a whole number.")
    if number < lowest or number > highest or (number == highest and not top_allowed):
        bound = f"from {lowest:g} {'to' if top_allowed else 'up to (not including)'} {highest:g}" if highest != math.inf else f"above {lowest:g}" if not top_allowed else f"from {lowest:g}"
        raise InputError(f"{where}: {what}{value!r} is out of range; it must be {bound}.")
    if name == "lr" and number <= 0:
        raise InputError(f"{where}: {what}{value!r} is out of range; a learning rate must be above 0.")
    return int(number) if kind is int else number


def _space_entry(name: str, entry, where: str):
    """A fixed value, ("range", low, high, log, step) or ("choices", [...]); InputError names what is wrong."""
    from imaging.errors import InputError

    if name not in KNOWN:
        raise InputError(f"{where}: unknown parameter; use {', '.join(KNOWN)}.")
    if isinstance(entry, list):
        raise InputError(f"{where}: a list must be written as {{choices: [...]}}.")
    if not isinstance(entry, dict):
        return _space_value(name, entry, where)
    unknown = set(entry) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; an entry is {{low, high, log, step}} or {{choices: [...]}}.")
    if "choices" in entry:
        if set(entry) != {"choices"} or not isinstance(entry["choices"], list) or not entry["choices"]:
            raise InputError(f"{where}: choices must be a non-empty list, alone in its entry.")
        return ("choices", [_space_value(name, value, where, "choice ") for value in entry["choices"]])
    if KNOWN[name][0] is str:
        raise InputError(f"{where}: a corruption family is chosen from a list; write {{choices: [none, salt_pepper, ...]}}.")
    if "low" not in entry or "high" not in entry:
        raise InputError(f"{where}: give both low and high (or choices).")
    low, high = _space_value(name, entry["low"], where, "low "), _space_value(name, entry["high"], where, "high ")
    if not low < high:
        raise InputError(f"{where}: low {entry['low']!r} must be below high {entry['high']!r}.")
    log, step = bool(entry.get("log", False)), entry.get("step")
    if log and low <= 0:
        raise InputError(f"{where}: a log range needs low above 0.")
    if step is not None and (log or float(step) <= 0):
        raise InputError(f"{where}: step must be above 0 and cannot go with log.")
    return ("range", low, high, log, step)


def augment_spec(values: dict) -> str:
    kind = values.get("kind", "none")
    return "" if kind == "none" else f"{kind}:{values.get('severity', 3)}:{values.get('probability', 0.5):.3g}"


def trial_seeded_sampler(kind: str, seed: int):
    """TPE or random sampling seeded with (seed + trial number): reproducible for one worker, and two
    workers started at once with one seed do not draw the same parameters (one seeded sampler per
    worker would). It keeps no state of its own; TPE reads the study's history."""
    import optuna

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self._inner = self._make(0)

        @staticmethod
        def _make(number: int):
            return optuna.samplers.RandomSampler(seed=seed + number) if kind == "random" else optuna.samplers.TPESampler(seed=seed + number)

        def before_trial(self, study, trial):
            self._inner = self._make(trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

    return TrialSeeded()


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def sweep(params: dict, *, nested: bool = False, run_name: str | None = None, reuse: bool = False, tags: dict | None = None):
    """Run trials of the shared study until it has n_trials finished ones; returns a StageResult of this worker's sweep run."""
    import optuna

    from imaging.corruptions import parse_val_corruption
    from models.classifiers import check_model_name
    from tracking.connect import check_reachable, shown
    from tracking.lineage import check_synthetic, load_manifest
    from tracking.runs import quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = {**DEFAULTS, **params}
    space = load_space(optional(params["space"]))
    check_model_name(params["model"])  # before any trial
    if params["metric"] == "val_robust/acc":
        parse_val_corruption(params["val_corruption"])
    check_synthetic(params, needed=space.may_use_synthetic())
    storage_url = optional(params["storage"]) or DEFAULT_STORAGE
    check_reachable(storage_url, "Optuna storage", "start the database or fix --storage")
    manifest, _ = load_manifest(params)
    name = optional(params["study"]) or f"sweep-{manifest.name}-{params['model']}".replace("/", "_")
    key = cache_key("sweep", params, worker=f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}")  # every worker its own sweep run
    result = get_or_run("sweep", key, load=lambda: _open(params, storage_url, name), work=lambda run, study: _work(run, params, space, study, name, storage_url),
                        run_name=run_name or f"{name}-worker", params={**params, "study": name, "storage": shown(storage_url)},
                        tags={"synthmix.sweep": name, "optuna.study": name, **(tags or {})}, nested=nested, reuse=False)
    _report(result, params, name)
    return result


def _open(params: dict, storage_url: str, name: str):
    """The shared Optuna study with this worker's sampler, pruner and heartbeat."""
    import optuna

    from tracking.connect import open_study

    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
              "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=params["epochs"]),
              "none": optuna.pruners.NopPruner()}[params["pruner"]]
    direction = params["direction"] if params["direction"] != "auto" else ("minimize" if params["metric"] == "val/loss" else "maximize")
    return open_study(storage_url, name, direction=direction, sampler=trial_seeded_sampler(params["sampler"], params["seed"]),
                      pruner=pruner, heartbeat=params["heartbeat"], on_stale=_stale_callback(params["retry_failed"]))


def _report(result, params: dict, name: str) -> None:
    from mlflow.tracking import MlflowClient

    from tracking.runs import runs_table_url

    best = result.extra.get("best")
    if best:
        click.echo(f"[synthmix] study {name}: {result.extra['finished']} finished trials; best trial {best['number']}: {params['metric']} {best['value']:.4f} with {best['params']}")
    experiment_id = MlflowClient().get_run(result.run_id).info.experiment_id
    trials = "tags.`optuna.study` = '" + name + "' AND tags.`synthmix.stage` = 'trial'"
    click.echo(f"[synthmix] its trials in the MLflow UI: {runs_table_url(experiment_id, trials)}")


def _stale_callback(retries: int):
    """For a trial whose worker died: its trial run is tagged FAIL, and the dead worker's MLflow runs (its sweep run,
    the trial's nested runs) are ended FAILED by their own stale heartbeats; optionally the trial is retried."""

    def callback(study, trial):
        import mlflow
        from mlflow.tracking import MlflowClient

        from tracking.runs import end_dead_runs

        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                MlflowClient().set_tag(run_id, "optuna.state", "FAIL")
            except Exception as error:  # the run may be gone; the trial's state is what counts
                print(f"[synthmix] could not tag run {run_id} of trial {trial.number}: {error}", flush=True)
        if mlflow.active_run() is not None:
            end_dead_runs(mlflow.active_run().info.experiment_id)
        print(f"[synthmix] trial {trial.number} failed: its worker stopped sending heartbeats", flush=True)
        if retries:
            import optuna

            optuna.storages.RetryFailedTrialCallback(max_retry=retries)(study, trial)

    return callback


class _Surplus(Exception):
    """The study already has its n_trials (finished or running) before this trial."""


def _work(run, params: dict, space: Space, study, name: str, storage_url: str):
    """Inside this worker's sweep run: synthesize once (shared by the workers), then trials until the study has n_trials."""
    import mlflow

    from pipelines._cli import DATA_KEYS, passed_on

    source = {"synthetic_run": optional(params["synthetic_run"]) or "", "synthetic_data": optional(params["synthetic_data"]) or ""}
    if space.may_use_synthetic() and not any(source.values()):
        made = synthesize_stage.synthesize_once(passed_on(PARAMS, params, synthesize_stage.PARAMS, seed=0), name, {"synthmix.sweep": name}, storage_url)
        source["synthetic_run"] = made.run_id
    elif source["synthetic_run"]:
        source["synthetic_run"] = _followed(source["synthetic_run"])
    mlflow.set_tag("synthmix.synthetic_run", source["synthetic_run"])
    mine = {"trials": 0, "surplus": 0, "failed_in_a_row": 0}
    data = {key: params[key] for key in DATA_KEYS}
    objective = lambda trial: _trial(trial, params, space, study, name, data, source, mine)  # noqa: E731
    if finished_count(study) < params["n_trials"]:
        print(f"[synthmix] study {name}: {finished_count(study)} of {params['n_trials']} trials finished; joining", flush=True)
        study.optimize(objective, callbacks=[_enough(params, mine)], catch=(Exception,), gc_after_trial=True)
    return _summary(run, study, params, mine)


def _followed(run_id: str) -> str:
    from tracking.runs import get_run

    return get_run(run_id, "synthetic_run").info.run_id


def _trial(trial, params: dict, space: Space, study, name: str, data: dict, source: dict, mine: dict) -> float:
    """One trial as a nested run: mix at its ratio (reused when the same mix exists), train in-process, report per epoch for pruning."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from pipelines._cli import passed_on
    from tracking.stage import cache_key, is_pruned, nested_run

    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    if sum(1 for t in live if t.number < trial.number) >= params["n_trials"]:
        trial.set_user_attr("synthmix.surplus", "the study had its n_trials before this trial started")
        raise _Surplus()
    values = space.suggest(trial)
    augment = augment_spec(values)
    trial_tags = {"synthmix.sweep": name, "optuna.study": name, "optuna.trial": str(trial.number), "optuna.state": "RUNNING",
                  "synthmix.ratio": str(values.get("ratio", 0.0)), "synthmix.augment": augment or "none"}
    with nested_run("trial", f"{name}-trial-{trial.number:03d}", {**values, "augment": augment, "trial": trial.number}, trial_tags,
                    cache_key("trial", values, study=name, trial=trial.number)) as trial_run:
        trial.set_user_attr("mlflow_run_id", trial_run.info.run_id)
        mine["trials"] += 1
        try:
            training = dict(data)
            if values.get("ratio", 0.0) > 0:
                mixed = mix_stage.mix({**data, **source, "ratio": values["ratio"], "seed": params["seed"]}, nested=True, reuse=True,
                                      run_name=f"{name}-mix-r{values['ratio']:.3f}", tags={"synthmix.sweep": name})
                training = {"dataset_run": mixed.run_id, "data": params["data"]}

            def report(epoch: int, metrics: dict):
                trial.report(metrics[params["metric"]], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} with {params['metric']} {metrics[params['metric']]:.4f}")

            chosen = {k: values[k] for k in ("batch_size", "lr", "weight_decay") if k in values}
            trained = train_stage.train(passed_on(PARAMS, params, train_stage.PARAMS, **training, **chosen, augment=augment, seed=params["seed"],
                                                  val_corruption=params["val_corruption"] if params["metric"] == "val_robust/acc" else ""),
                                        nested=True, reuse=True, on_epoch=report, run_name=f"{name}-train-{trial.number:03d}",
                                        tags={"synthmix.sweep": name, "optuna.trial": str(trial.number)})
        except BaseException as error:
            mlflow.set_tag("optuna.state", "PRUNED" if is_pruned(error) else "FAIL")
            raise
        value = trained.metrics[params["metric"]]
        trial.set_user_attr("train_run_id", trained.run_id)
        mlflow.log_metric(params["metric"], value)
        mlflow.set_tag("optuna.state", "COMPLETE")
        return value


def _enough(params: dict, mine: dict):
    """Optuna callback: stop this worker when the study has n_trials, or after 3 failed trials in a row."""
    from optuna.trial import TrialState

    def callback(study, trial):
        failed = trial.state == TrialState.FAIL and not trial.user_attrs.get("synthmix.surplus")
        mine["failed_in_a_row"] = mine["failed_in_a_row"] + 1 if failed else 0
        if mine["failed_in_a_row"] >= 3:  # something is wrong with every trial; its traceback is above
            print("[synthmix] 3 trials in a row failed on this worker; it stops (the study keeps its trials)", flush=True)
            study.stop()
        elif trial.user_attrs.get("synthmix.surplus"):
            mine["surplus"] += 1
            if finished_count(study) >= params["n_trials"]:
                study.stop()
            else:  # trials of other workers are still running (or a dead one's not yet failed): look again later
                time.sleep(params["heartbeat"])
        elif finished_count(study) >= params["n_trials"]:
            study.stop()

    return callback


def _summary(run, study, params: dict, mine: dict):
    """The study's best trial and Optuna's plots on this worker's sweep run."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(1 for t in trials if t.state == state) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    mlflow.log_metrics({f"sweep/trials_{k}": v for k, v in counts.items()} | {"sweep/trials_this_worker": mine["trials"]})
    facts = {"finished": counts["complete"] + counts["pruned"], "best": None}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        facts["best"] = {"number": best.number, "value": best.value, "params": best.params, "train_run": best.user_attrs.get("train_run_id", "")}
        mlflow.log_metric(f"best/{params['metric']}", best.value)
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        mlflow.set_tags({"synthmix.best_trial": str(best.number), "synthmix.best_train_run": facts["best"]["train_run"]})
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        plots = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history}
        if len(completed) >= 2 and len({k for t in completed for k in t.params}) >= 1:
            plots["param_importances"] = optuna.visualization.matplotlib.plot_param_importances
            plots["parallel_coordinate"] = optuna.visualization.matplotlib.plot_parallel_coordinate
            plots["contour"] = optuna.visualization.matplotlib.plot_contour
        for plot, draw in plots.items():
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                    axes = draw(study)
                grid = getattr(axes, "shape", (1, 1))
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
                figure.set_size_inches(max(10, 3.2 * grid[-1]), max(6, 2.8 * grid[0]))  # a contour grid gets room per pair
                figure.savefig(out / f"{plot}.png", dpi=100, bbox_inches="tight")
                plt.close(figure)
            except Exception as error:  # a plot Optuna cannot draw for this history (e.g. contour of one parameter)
                print(f"[synthmix] no {plot} plot: {error.__class__.__name__}: {error}", flush=True)
        mlflow.log_artifacts(str(out), "optuna")
    return {"sweep/finished_trials": facts["finished"]}, facts


def run_command(**params):
    sweep(params)


command = stage_command("sweep", __doc__, PARAMS, run_command)
