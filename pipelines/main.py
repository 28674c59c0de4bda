"""main: the whole study on one dataset, answered with 95% confidence intervals.

    python -m pipelines main --data mnist5k --ratios 0,0.5,0.6,0.7,0.8 --seeds 3

Synthesizes once (skipped when every ratio is 0), then for every synthetic
fraction x augmentation x seed: mix (ratio > 0) -> train -> evaluate on the
clean real test split and on the corruptions. Every step is a nested run under
the study's parent run, tagged with the study, ratio, augment and seed. A
finished step with the same parameters, inputs and code is reused, so a study
killed at any point and started again with the same command only does what is
missing; the same command on the same data continues the same parent run. A
step that fails is reported and the study goes on.

With --storage (an Optuna database URL), the cells are trials of an Optuna
grid study that every worker started with the same command shares: each
takes cells no other has taken, all under one parent run, and the worker that
finishes the last cell writes the report (a rerun finds every cell done and
writes it).

The study ends by registering its best model (on val/acc) as the champion of
--registered-model; see `register`.

The answer, on the parent run: per cell, mean and 95% Student-t interval over
seeds of test/acc, test/macro_f1, robust accuracy per corruption and mCE, and
the paired difference to the real-only cell (same augment and seed); a one-
sentence headline (the run's description); report.html (self-contained),
summary.csv / summary.md, figures/*.png, and study/... metrics for the UI's
chart view. Models are chosen on validation data; the test split is reported.
"""
from __future__ import annotations

import click

from pipelines import evaluate as evaluate_stage
from pipelines import mix as mix_stage
from pipelines import synthesize as synthesize_stage
from pipelines import train as train_stage
from pipelines._cli import DATA_KEYS, DEVICE, data_params, defaults, option, pick, stage_command

PARAMS = [
    *data_params(),
    *pick(synthesize_stage.PARAMS, "generator"),
    *pick(mix_stage.PARAMS, "synthetic_run", "synthetic_data"),
    option("ratios", "0,0.5,0.6,0.7,0.8", "Synthetic fractions of the training set to compare (comma-separated, 0 = real only, which every cell is compared with; 0.6 = synthetic:real 6:4)."),
    option("augments", "none", "Training arms, comma-separated: none, or kind:severity:probability (e.g. none,salt_pepper:3:0.5 adds a corruption-trained arm to every ratio); several corruptions in one arm are joined with +."),
    option("seeds", "3", "How many seeds (3 = seeds 0,1,2) or a list such as 0,1,2; a seed drives mix sampling, initialisation and batch order."),
    *pick(train_stage.PARAMS, "model", "pretrained", "epochs", "batch_size", "lr"),
    *pick(synthesize_stage.PARAMS, "per_class"),
    option("corruptions", "salt_pepper,gradient_noise,blend", "Corruptions of the real test split to evaluate on (comma-separated or 'all'); empty: clean test split only."),
    *pick(evaluate_stage.PARAMS, "severities", "table"),
    option("saliency", 4, "Grad-CAM panels of N correct and N incorrect test images (clean and per corruption), drawn for the first seed of each cell; 0 skips.", click.IntRange(0)),
    option("tolerance", 0.01, "Accuracy drop against real only that counts as no drop (0.01 = 1 point); the headline names the largest synthetic fraction whose drop is below it with 95% confidence.", click.FloatRange(0, 1)),
    option("study", "", "Name of the study (tag synthmix.study on every run); empty: <data>-<model>-<generator>."),
    DEVICE,
    *pick(train_stage.PARAMS, "checkpoint_every"),
    option("registered_model", "", "Model Registry name the study's best model (by val/acc) is registered under, with the alias champion; empty: <dataset>-classifier; none: do not register."),
    option("storage", "", "Optuna storage URL (e.g. postgresql://user@host/db) to split the cells over workers: every worker started with the same command takes cells no other has taken, and the one that finishes the last cell writes the report; empty: all cells here."),
]
DEFAULTS = defaults(PARAMS)
NOT_HASHED = ("device", "checkpoint_every", "registered_model", "storage")


def parse_ratios(text: str) -> list[float]:
    from imaging.errors import InputError

    try:
        ratios = sorted({float(part) for part in str(text).split(",") if part.strip()})
    except ValueError as error:
        raise InputError(f"--ratios {text!r} is not a comma-separated list of fractions; write e.g. 0,0.5,0.6,0.7,0.8.") from error
    if not ratios or any(not 0 <= r < 1 for r in ratios):
        raise InputError(f"--ratios {text!r} must be fractions from 0 up to (not including) 1, e.g. 0,0.5,0.6,0.7,0.8.")
    if ratios[0] != 0:
        raise InputError(f"--ratios {text!r} lacks 0: the real-only cell is what every other ratio is compared with; add it, e.g. 0,{text}.")
    return ratios


def parse_augments(text: str) -> list[str]:
    """Each arm as train's --augment value ('' = none); '+' joins several corruptions in one arm."""
    from imaging.corruptions import parse_augment
    from imaging.errors import InputError

    arms = []
    for part in (p.strip() for p in str(text).split(",")):
        if part in ("", "none"):
            arms.append("")
        else:
            parse_augment(part.replace("+", ","))
            arms.append(part.replace("+", ","))
    arms = list(dict.fromkeys(arms))
    if not arms:
        raise InputError(f"--augments {text!r} names no arm; use none, or e.g. none,salt_pepper:3:0.5.")
    return arms


def parse_seeds(text: str) -> list[int]:
    from imaging.errors import InputError

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        numbers = [int(float(p)) for p in parts]
    except ValueError as error:
        raise InputError(f"--seeds {text!r} is neither a count nor a list of integers; write e.g. 3 or 0,1,2.") from error
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise InputError(f"--seeds {text!r} asks for no seed; give a count of at least 1 (3 or more for confidence intervals).")
        return list(range(numbers[0]))
    if len(set(numbers)) != len(numbers) or any(n < 0 for n in numbers):
        raise InputError(f"--seeds {text!r} must list distinct non-negative integers, e.g. 0,1,2.")
    return numbers


def arm_name(augment: str) -> str:
    return augment.replace(",", "+") or "none"


def main(params: dict) -> dict:
    from imaging.errors import InputError
    from pipelines._cli import optional
    from pipelines.evaluate import parse_corruptions, parse_severities
    from tracking.lineage import load_manifest
    from tracking.runs import find_runs, get_or_run, quiet_mlflow

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    ratios, augments, seeds = parse_ratios(params["ratios"]), parse_augments(params["augments"]), parse_seeds(params["seeds"])
    kinds, _ = parse_corruptions(params["corruptions"]), parse_severities(params["severities"])
    from models.classifiers import check_model_name

    check_model_name(params["model"])  # before any run, not inside the first cell
    synthetic_run, synthetic_data = optional(params["synthetic_run"]), optional(params["synthetic_data"])
    if synthetic_run and synthetic_data:
        raise InputError("both synthetic_run and synthetic_data given; pass one of them (or neither, to synthesize with --generator).")
    if any(r > 0 for r in ratios):
        if synthetic_run:
            from tracking.runs import get_run

            get_run(synthetic_run, "synthetic_run")
        elif synthetic_data:
            mix_stage.load_synthetic({**params, "synthetic_run": ""})  # a bad folder is refused before any run
    manifest, _ = load_manifest({key: params[key] for key in DATA_KEYS})
    source = synthetic_run or synthetic_data or params["generator"]
    study = params["study"] or f"{manifest.name}-{params['model']}-{source if not synthetic_run else 'run-' + synthetic_run[:8]}".replace("/", "_")
    key = {**{k: v for k, v in params.items() if k not in NOT_HASHED}, "dataset_digest": manifest.digest}
    plan = {"ratios": ratios, "augments": augments, "seeds": seeds, "kinds": kinds, "synthetic_run": synthetic_run, "synthetic_data": synthetic_data, "study": study,
            "storage": optional(params["storage"])}

    def resume(key_hash: str):
        # one parent per study: a rerun continues it (killed, failed or finished); its steps are reused
        earlier = find_runs("main", key_hash, ("RUNNING", "FAILED", "KILLED", "FINISHED"))
        return earlier[0] if earlier else None

    storage = plan["storage"]
    if storage:
        from tracking.connect import check_reachable

        check_reachable(storage, "Optuna storage", "start the database or fix --storage")
        _one_parent(storage, key, f"study-{study}", resume)
    result = get_or_run(
        "main", key, lambda: lambda run: _study(run, params, manifest, plan),
        run_name=f"study-{study}", params=params, tags={"synthmix.study": study}, reuse=False, resume=resume,
    )
    facts = result.extra
    if not facts.get("report"):  # a worker that did not finish the last cell
        click.echo(f"[synthmix] {facts['headline']}")
        return facts | {"run_id": result.run_id}
    click.echo(f"[synthmix] {facts['headline']}")
    click.echo(f"[synthmix] report: {facts['report']}")
    click.echo(f"[synthmix] study run: {facts['url']}")
    click.echo(f"[synthmix] its metrics as charts: {facts['urls']['charts']}")
    click.echo(f"[synthmix] its steps: {facts['urls']['table']}")
    if facts.get("champion"):
        click.echo(f"[synthmix] champion: {facts['champion']}")
    return facts | {"run_id": result.run_id}


def _study(run, params: dict, manifest, plan: dict):
    """Every step of the study inside the parent run, then the answer."""
    import time
    import traceback

    import pandas as pd

    from pipelines.evaluate import evaluate
    from pipelines.mix import mix
    from pipelines.synthesize import synthesize
    from pipelines.train import train

    study, seeds, ratios, augments = plan["study"], plan["seeds"], plan["ratios"], plan["augments"]
    data = {key: params[key] for key in DATA_KEYS}
    seconds: dict[str, float] = {}
    steps: list[dict] = []  # one row per step, for the report's run table

    def step(stage: str, function, stage_params: dict, cell: dict, name: str):
        started = time.perf_counter()
        tags = {"synthmix.study": study, **{f"synthmix.{k}": str(v) for k, v in cell.items()}}
        try:
            result = function(stage_params, nested=True, reuse=True, run_name=name, tags=tags)
        except Exception as error:
            steps.append({**cell, "stage": stage, "run_id": "", "status": "failed", "error": f"{error.__class__.__name__}: {error}"})
            raise
        finally:
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        steps.append({**cell, "stage": stage, "run_id": result.run_id, "status": "reused" if result.reused else "done", "error": ""})
        return result

    from tracking.lineage import log_dataset

    log_dataset(manifest, artifact=False)  # the real splits every cell is trained, validated and tested on
    synthesis = None
    synthetic_source = {"synthetic_run": plan["synthetic_run"] or "", "synthetic_data": plan["synthetic_data"] or ""}
    if any(r > 0 for r in ratios) and not (plan["synthetic_run"] or plan["synthetic_data"]):
        import contextlib

        from tracking.connect import storage_lock

        # workers of one study synthesize once: the others wait for it and reuse it
        with storage_lock(plan["storage"], f"synthesize-{study}") if plan.get("storage") else contextlib.nullcontext():
            synthesis = step("synthesize", synthesize, {**data, "generator": params["generator"], "per_class": params["per_class"], "seed": 0, "device": params["device"]},
                             {}, f"{study}-synthesize-{params['generator']}")
        synthetic_source["synthetic_run"] = synthesis.run_id
    elif plan["synthetic_run"]:
        from tracking.runs import StageResult, get_run

        found = get_run(plan["synthetic_run"], "synthetic_run")
        synthesis = StageResult("synthesize", found.info.run_id, dict(found.data.metrics), reused=True)

    def run_cell(seed: int, augment: str, ratio: float) -> dict:
        cell = {"ratio": ratio, "augment": arm_name(augment), "seed": seed}
        label = f"r{ratio:g}-{arm_name(augment)}-s{seed}"
        try:
            training_data = dict(data)
            if ratio > 0:
                mixed = step("mix", mix, {**data, **synthetic_source, "ratio": ratio, "seed": seed}, cell, f"{study}-mix-{label}")
                training_data = {"dataset_run": mixed.run_id, "data": params["data"]}
            trained = step("train", train, {
                **training_data, "model": params["model"], "pretrained": params["pretrained"], "epochs": params["epochs"],
                "batch_size": params["batch_size"], "lr": params["lr"], "augment": augment, "seed": seed,
                "device": params["device"], "checkpoint_every": params["checkpoint_every"], "table": params["table"],
            }, cell, f"{study}-train-{label}")
            evaluated = step("evaluate", evaluate, {
                "train_run": trained.run_id, "corruptions": ",".join(plan["kinds"]), "severities": params["severities"],
                # pictures (Grad-CAM panels, misclassified images) for the first seed of each cell
                "saliency": params["saliency"] if seed == seeds[0] else 0, "misclassified": 16 if seed == seeds[0] else 0,
                "seed": seed, "device": params["device"], "table": params["table"],
            }, cell, f"{study}-evaluate-{label}")
            return {**cell, "status": "ok", "train_run": trained.run_id, "evaluate_run": evaluated.run_id,
                    **{k: v for k, v in trained.metrics.items() if k.startswith("val/")}, **evaluated.metrics}
        except Exception as error:
            print(f"[synthmix] step of cell {label} failed, the study goes on: {error.__class__.__name__}: {error}", flush=True)
            traceback.print_exc()
            return {**cell, "status": "failed", "error": f"{error.__class__.__name__}: {error}"}

    cells = [(seed, augment, ratio) for seed in seeds for augment in augments for ratio in ratios]
    if plan.get("storage"):
        rows, left = _cells_on_workers(plan["storage"], study, cells, run_cell)
        if left:
            import mlflow

            note = (f"{len(cells) - left} of {len(cells)} cells done; {left} still run on other workers. The worker that finishes "
                    "the last cell writes the report (or rerun this command when they are done).")
            mlflow.log_metric("study/cells_done", len(cells) - left)
            return {"study/cells_done": len(cells) - left}, {"headline": note, "cells_ok": 0, "cells_failed": 0}
        steps.extend(_steps_of(rows, steps))
    else:
        rows = [run_cell(*c) for c in cells]

    from tracking.study import answer

    started = time.perf_counter()
    trained = [row["train_run"] for row in rows if row["status"] == "ok"]
    plan = {**plan, "champion": _champion(run, params, manifest, trained) if trained else ""}
    steps_table = pd.DataFrame(steps)
    if "seed" in steps_table:  # the synthesis step has none: keep the others' seeds whole numbers
        steps_table["seed"] = steps_table["seed"].astype("Int64")
    facts = answer(run, params, pd.DataFrame(rows), steps_table, plan, synthesis, seconds)
    seconds["report"] = time.perf_counter() - started
    import mlflow

    mlflow.log_metrics({f"perf/seconds/{stage}": value for stage, value in seconds.items()})
    if facts["cells_ok"] == 0:
        raise RuntimeError(f"no cell of the study has a result ({facts['cells_failed']} failed); see the errors above and {facts['report']}")
    counts = {"study/cells_ok": facts["cells_ok"], "study/cells_failed": facts["cells_failed"]}
    mlflow.log_metrics(counts)
    return counts, facts


def _one_parent(storage: str, key: dict, run_name: str, resume) -> None:
    """Workers started together would each open a parent run: the first (under a lock in the
    storage's database) opens it, and the others find and continue it."""
    from mlflow.tracking import MlflowClient

    from tracking.connect import storage_lock
    from tracking.runs import TAG_CODE, TAG_CONFIG, TAG_STAGE, code_version, config_hash, use_experiment

    key_hash = config_hash("main", key)
    with storage_lock(storage, key_hash):
        if resume(key_hash) is None:
            experiment_id = use_experiment()
            MlflowClient().create_run(experiment_id, run_name=run_name, tags={TAG_STAGE: "main", TAG_CONFIG: key_hash, TAG_CODE: code_version()})


def _cells_on_workers(storage: str, study: str, cells: list, run_cell) -> tuple[list[dict], int]:
    """Run the cells no other worker has taken, as trials of an Optuna study shared by every worker;
    (every finished cell's row, cells not finished).

    The study is the queue: under a lock, each worker enqueues the cells that are neither done,
    running nor queued (a cell whose worker died, FAIL by heartbeat, is free again), then runs
    whichever queued trial Optuna hands it.
    """
    import json

    import optuna
    from optuna.trial import TrialState

    from pipelines.sweep import open_study
    from tracking.connect import storage_lock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = list(range(len(cells)))
    shared = open_study(storage, f"main-{study}", direction="maximize", sampler=optuna.samplers.GridSampler({"cell": grid}, seed=0), heartbeat=30)

    def cells_in(*states, exclude: int | None = None) -> set[int]:
        found = set()
        for t in shared.get_trials(deepcopy=False, states=states):
            cell = t.params.get("cell", t.system_attrs.get("fixed_params", {}).get("cell"))
            if cell is not None and t.number != exclude:
                found.add(cell)
        return found

    def objective(trial):
        index = trial.suggest_categorical("cell", grid)
        if index in cells_in(TrialState.COMPLETE, TrialState.RUNNING, exclude=trial.number):  # another worker has it
            trial.set_user_attr("synthmix.surplus", "cell already taken")
            raise optuna.TrialPruned("cell already taken")
        row = run_cell(*cells[index])
        trial.set_user_attr("row", json.dumps(row, default=str))
        return float(row.get("val/acc", 0.0) or 0.0)

    while True:
        optuna.storages.fail_stale_trials(shared)  # a dead worker's running cell becomes FAIL, so free again
        with storage_lock(storage, f"main-{study}-queue"):
            busy = cells_in(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
            for index in grid:
                if index not in busy:
                    shared.enqueue_trial({"cell": index})
            waiting = len(shared.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if not waiting:
            break
        shared.optimize(objective, n_trials=1, catch=(Exception,))
    done = {}
    for trial in shared.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "row" in trial.user_attrs:
            done.setdefault(trial.params["cell"], json.loads(trial.user_attrs["row"]))
    return [done[i] for i in sorted(done)], len(cells) - len(done)


def _steps_of(rows: list[dict], steps: list[dict]) -> list[dict]:
    """Run-table rows for the cells other workers ran (this worker's own steps are already listed)."""
    listed = {s["run_id"] for s in steps}
    extra = []
    for row in rows:
        for stage, key in (("train", "train_run"), ("evaluate", "evaluate_run")):
            if row.get(key) and row[key] not in listed:
                extra.append({k: row[k] for k in ("ratio", "augment", "seed")} | {"stage": stage, "run_id": row[key], "status": "other worker", "error": ""})
    return extra


def _champion(run, params: dict, manifest, trained: list[str]) -> str:
    """Register the study's best model (on val/acc) and say what became champion; a failure here loses no result."""
    from pipelines.register import model_name, register

    name = params["registered_model"].strip()
    if name.lower() in ("none", "skip"):
        return ""
    try:
        done = register({"parent_run": run.info.run_id, "registered_model": name or model_name(manifest.name), "metric": "val/acc"},
                        runs=trained, echo=lambda text: None)
    except Exception as error:
        print(f"[synthmix] the study's best model was not registered: {error.__class__.__name__}: {error}", flush=True)
        return f"not registered ({error.__class__.__name__}: {error})"
    import mlflow

    mlflow.set_tag("synthmix.registered", f"models:/{done.name}/{done.version}")
    if done.moved or done.previous == done.version:
        mlflow.set_tag("synthmix.champion", done.uri)
    return done.message


command = stage_command("main", __doc__, PARAMS, lambda **params: main(params))
