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

With --seeds auto, every cell starts with 3 seeds; after each round (a look) only
the cells whose answer is still open (the interval of the paired drop against
real only, or of a corruption-trained arm's robust-accuracy gain, straddles
--tolerance) get one seed more, until every fraction up to the first costly
one is decided or a cell has --max-seeds. Each look's interval is at
confidence 1 - 0.05/K over the K = max_seeds - 2 possible looks (Bonferroni),
so the reported 95% intervals stay valid however the study stopped. A rerun
replays the looks from the finished steps, so a study killed mid-round, or
rerun with a larger --max-seeds, goes on where it stopped.

With --storage (an Optuna database URL), the cells are trials of an Optuna
grid study that every worker started with the same command shares: each
takes cells no other has taken, all under one parent run, and the worker that
finishes the last cell writes the report (a rerun finds every cell done and
writes it). Under --seeds auto each round is such a grid; a worker waits for the
round's last cell (the next look needs it) and takes part in the next round;
the one that finishes the last look's last cell writes the report.

The study ends by registering its best model (on val/acc) as the champion of
--registered-model; see `register`.

The answer, on the parent run: per cell, mean and 95% Student-t interval over
seeds of test/acc, test/macro_f1, robust accuracy per corruption and mCE, and
the paired difference to the real-only cell (same augment and seed); a one-
sentence headline (the run's description); report.html (self-contained),
summary.csv / summary.md, figures/*.png, and study/... metrics for the UI's
chart view. Models are chosen on validation data; the test split is reported.

With --generator cyclegan (and --target-data) or --synthetic-run of a cyclegan
synthesis, the synthetic fractions are three arms instead of --ratios: source
(0: the real images only), both (0.5 with mix --mode add: every real image plus
its translation) and translated (1: every real image replaced by its
translation). Each cell's row and runs carry the arm (column `arm`, tag
synthmix.arm).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import click

from pipelines import evaluate as evaluate_stage
from pipelines import mix as mix_stage
from pipelines import synthesize as synthesize_stage
from pipelines import train as train_stage
from pipelines._cli import DEVICE, data_params, defaults, option, pick, stage_command

PARAMS = [
    *data_params(),
    *pick(synthesize_stage.PARAMS, "generator", "target_data"),
    *pick(mix_stage.PARAMS, "synthetic_run", "synthetic_data"),
    option("ratios", "0,0.5,0.6,0.7,0.8", "Synthetic fractions of the training set to compare (comma-separated, 0 = real only, which every cell is compared with; 0.6 = synthetic:real 6:4)."),
    option("augments", "none", "Training arms, comma-separated: none, or kind:severity:probability (e.g. none,salt_pepper:3:0.5 adds a corruption-trained arm to every ratio); several corruptions in one arm are joined with +."),
    option("seeds", "3", "How many seeds (3 = seeds 0,1,2), a list such as 0,1,2, or auto: start every cell with 3 seeds and, after each round (a look), "
           "add one seed only to the cells whose answer is still open (interval straddles --tolerance), until every fraction up to the first costly one "
           "is decided or --max-seeds is reached; each look's interval is at confidence 1 - 0.05/K over the K = max_seeds - 2 possible looks (Bonferroni: "
           "valid however the looks correlate, and simple to check), so the reported 95% CIs hold at whichever look the study stops. "
           "A seed drives mix sampling, initialisation and batch order."),
    option("max_seeds", 10, "With --seeds auto: the most seeds a cell gets (at least 3; default 10 seeds per cell, so at most 8 looks); "
           "raise it later to continue the same study (every look is then recomputed at the new K).", int),
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
NOT_HASHED = ("device", "checkpoint_every", "registered_model", "storage", "max_seeds")  # max_seeds: raising it continues the same study
# a cyclegan study's arms: synthetic fraction -> (arm, mix mode); 0.5 in mode add is every real image plus its translation
TRANSLATION_ARMS = {0.0: ("source", "replace"), 0.5: ("both", "add"), 1.0: ("translated", "replace")}


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


def parse_max_seeds(seeds: str, max_seeds, augments: list[str]) -> int:
    """0 for a fixed set of seeds; for --seeds auto, --max-seeds (at least the 3 seeds every cell starts with)."""
    from imaging.errors import InputError
    from tracking.statistics import FIRST_SEEDS

    if str(seeds).strip().lower() != "auto":
        return 0
    try:
        most = float(str(max_seeds).strip())  # MLproject passes numbers as written: 10 or 10.0
        if not most.is_integer():
            raise ValueError(max_seeds)
        most = int(most)
    except ValueError as error:
        raise InputError(f"--max-seeds {max_seeds!r} is not a whole number; give the most seeds per cell for --seeds auto, e.g. 10.") from error
    if most < FIRST_SEEDS:
        raise InputError(f"--max-seeds {most} is too few for --seeds auto: every cell starts with {FIRST_SEEDS} seeds; give at least {FIRST_SEEDS} (default 10).")
    if "" not in augments:
        raise InputError("--seeds auto decides the accuracy drop of plain training against real only, but --augments has no arm none; add it, e.g. none,salt_pepper:3:0.5.")
    return most


def arm_name(augment: str) -> str:
    return augment.replace(",", "+") or "none"


@dataclass
class Plan:
    """The study's grid and sources, parsed and checked before any run."""

    ratios: list
    augments: list
    seeds: list
    kinds: list
    synthetic_run: str | None
    synthetic_data: str | None
    storage: str | None
    study: str = ""
    champion: str = ""
    max_seeds: int = 0  # --seeds auto: the most seeds per cell (0: the fixed seeds above)
    arms: dict = field(default_factory=dict)  # a cyclegan study: ratio -> (arm, mix mode), TRANSLATION_ARMS; empty otherwise
    looks: list = field(default_factory=list)  # --seeds auto: one row per target and look (tracking.statistics.look_rows)

    @property
    def cells(self) -> list[tuple]:
        return [(seed, augment, ratio) for seed in self.seeds for augment in self.augments for ratio in self.ratios]


def _plan(params: dict, load_manifest) -> tuple[Plan, object]:
    """The plan and the real dataset (`load_manifest()`), every option checked before the dataset is scanned where it can be."""
    from imaging.corruptions import parse_kinds, parse_severities
    from models.classifiers import check_model_name
    from pipelines._cli import optional
    from tracking.lineage import check_synthetic

    translation = _is_translation(params)
    if translation and str(params["ratios"]) != DEFAULTS["ratios"]:
        from imaging.errors import InputError

        raise InputError("--ratios does not apply to a cyclegan study: its arms are source (0), both (0.5: all real images plus their translations) and translated (1); leave --ratios out.")
    ratios = list(TRANSLATION_ARMS) if translation else parse_ratios(params["ratios"])
    augments = parse_augments(params["augments"])
    max_seeds = parse_max_seeds(params["seeds"], params["max_seeds"], augments)
    seeds = list(range(3)) if max_seeds else parse_seeds(params["seeds"])  # auto: every cell starts with seeds 0, 1, 2
    kinds, _ = parse_kinds(params["corruptions"]), parse_severities(params["severities"])
    check_model_name(params["model"])  # before any run, not inside the first cell
    check_synthetic(params, needed=any(r > 0 for r in ratios))
    plan = Plan(ratios, augments, seeds, kinds, optional(params["synthetic_run"]), optional(params["synthetic_data"]), optional(params["storage"]), max_seeds=max_seeds,
                arms=dict(TRANSLATION_ARMS) if translation else {})
    manifest = load_manifest()  # scanned once the options are known to be good
    if not (plan.synthetic_run or plan.synthetic_data):
        _check_per_class(params["per_class"], manifest, ratios)
    source = plan.synthetic_run or plan.synthetic_data or params["generator"]
    plan.study = params["study"] or f"{manifest.name}-{params['model']}-{source if not plan.synthetic_run else 'run-' + plan.synthetic_run[:8]}".replace("/", "_")
    return plan, manifest


def _is_translation(params: dict) -> bool:
    """Whether the study's synthetic images are cyclegan translations (--generator cyclegan, or a cyclegan --synthetic-run);
    --target-data is checked here, before any run."""
    from pipelines._cli import optional
    from tracking.runs import get_run

    if optional(params["target_data"]) and (optional(params["synthetic_run"]) or optional(params["synthetic_data"])):
        from imaging.errors import InputError

        raise InputError("--target-data is for synthesizing with --generator cyclegan; with --synthetic-run or --synthetic-data, leave it out.")
    if optional(params["synthetic_run"]):
        return get_run(params["synthetic_run"], "synthetic_run").data.tags.get("synthmix.generator") == "cyclegan"
    if optional(params["synthetic_data"]):
        return False
    synthesize_stage.check_target_data({**synthesize_stage.DEFAULTS, **{k: params[k] for k in ("generator", "target_data", "skip_bad_images", "max_pixels")}})
    return params["generator"] == "cyclegan"


def _check_per_class(per_class: int, manifest, ratios: list[float]) -> None:
    """--per-class must cover the synthetic images the largest ratio needs in every class (before the long synthesis)."""
    if not per_class:
        return  # as many as the largest real class: every replace-mode mix fits
    from imaging.errors import InputError
    from imaging.mixing import allocate
    from imaging.manifest import real_only

    counts = real_only(manifest.split("train")).frame["label"].value_counts().to_dict()
    for ratio in sorted(r for r in ratios if r > 0):
        needed = max(synthetic for _, synthetic in allocate(counts, ratio).values())
        if needed > per_class:
            raise InputError(f"--per-class {per_class} is too few: ratio {ratio:g} needs {needed} synthetic images in a class; pass --per-class {needed} or more (or 0: as many as the largest real class).")


def main(params: dict) -> dict:
    from pipelines._cli import DATA_KEYS
    from tracking.connect import check_reachable, storage_lock
    from tracking.lineage import load_manifest
    from tracking.runs import find_runs, quiet_mlflow
    from tracking.stage import cache_key, get_or_run

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    plan, manifest = _plan(params, lambda: load_manifest({key: params[key] for key in DATA_KEYS})[0])
    if plan.storage:
        check_reachable(plan.storage, "Optuna storage", "start the database or fix --storage")
    key = cache_key("main", params, NOT_HASHED, dataset_digest=manifest.digest)
    result = get_or_run(
        "main", key, load=lambda: None, work=lambda run, _: _study(run, params, manifest, plan),
        run_name=f"study-{plan.study}", params=params, tags={"synthmix.study": plan.study}, reuse=False,
        # one parent per study: a rerun continues it (killed, failed or finished), workers of one --storage share it
        resume=lambda experiment_id, key_hash: next(iter(find_runs(experiment_id, "main", key_hash, ("RUNNING", "FAILED", "KILLED", "FINISHED"))), None),
        lock=storage_lock(plan.storage, key) if plan.storage else None,
    )
    facts = result.extra
    click.echo(f"[synthmix] {facts['headline']}")
    if facts.get("report"):  # a worker that did not finish the last cell has none
        click.echo(f"[synthmix] report: {facts['report']}")
        click.echo(f"[synthmix] study run: {facts['url']}")
        click.echo(f"[synthmix] its metrics as charts: {facts['urls']['charts']}")
        click.echo(f"[synthmix] its steps: {facts['urls']['table']}")
        if facts.get("champion"):
            click.echo(f"[synthmix] champion: {facts['champion']}")
    return facts | {"run_id": result.run_id}


class Steps:
    """Runs the study's steps as nested runs tagged with their cell; keeps one row per step (the report's run table) and the seconds per stage."""

    def __init__(self, study: str):
        self.study, self.rows, self.seconds = study, [], {}

    def __call__(self, stage: str, function, stage_params: dict, cell: dict, name: str):
        import time

        started = time.perf_counter()
        tags = {"synthmix.study": self.study, **{f"synthmix.{k}": str(v) for k, v in cell.items()}}
        try:
            result = function(stage_params, nested=True, reuse=True, run_name=name, tags=tags)
        except Exception as error:
            self.rows.append({**cell, "stage": stage, "run_id": "", "status": "failed", "error": f"{error.__class__.__name__}: {error}"})
            raise
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        self.rows.append({**cell, "stage": stage, "run_id": result.run_id, "status": "reused" if result.reused else "done", "error": ""})
        return result


def _study(run, params: dict, manifest, plan: Plan):
    """Every step of the study inside the parent run, then the answer."""
    import time

    import mlflow
    import pandas as pd

    from tracking.lineage import log_dataset
    from tracking.study import answer

    steps = Steps(plan.study)
    log_dataset(manifest, artifact=False)  # the real splits every cell is trained, validated and tested on
    synthesis, source = _synthesis(params, plan, steps)
    run_cell = lambda seed, augment, ratio: _cell(params, plan, steps, source, seed, augment, ratio)  # noqa: E731
    if plan.max_seeds:
        rows, elsewhere = _rounds(plan, params["tolerance"], run_cell)
    elif plan.storage:
        rows, left = _cells_on_workers(plan.storage, plan.study, plan.cells, run_cell)
        elsewhere = _left_to_others(len(plan.cells) - left, len(plan.cells)) if left else None
    else:
        rows, elsewhere = [run_cell(*cell) for cell in plan.cells], None
    if elsewhere:
        return elsewhere
    if plan.storage:
        steps.rows.extend(_steps_of(rows, steps.rows))
    started = time.perf_counter()
    trained = [row["train_run"] for row in rows if row["status"] == "ok"]
    plan.champion = _champion(run, params, trained) if trained else ""
    steps_table = pd.DataFrame(steps.rows)
    if "seed" in steps_table:  # the synthesis step has none: keep the others' seeds whole numbers
        steps_table["seed"] = steps_table["seed"].astype("Int64")
    facts = answer(run, params, pd.DataFrame(rows), steps_table, plan.__dict__ | {"cells": plan.cells}, synthesis, steps.seconds)
    steps.seconds["report"] = time.perf_counter() - started
    mlflow.log_metrics({f"perf/seconds/{stage}": value for stage, value in steps.seconds.items()})
    if facts["cells_ok"] == 0:
        raise RuntimeError(f"no cell of the study has a result ({facts['cells_failed']} failed); see the errors above and {facts['report']}")
    counts = {"study/cells_ok": facts["cells_ok"], "study/cells_failed": facts["cells_failed"]}
    mlflow.log_metrics(counts)
    return counts, facts


def _left_to_others(done: int, total: int) -> tuple[dict, dict]:
    """What a worker of a --storage study answers when another worker finishes the last cell: that one writes the report."""
    import mlflow

    mlflow.log_metric("study/cells_done", done)
    still = f"{total - done} still run on other workers" if done < total else "another worker finished the last one"
    note = (f"{done} of {total} cells done; {still}. The worker that finishes the last cell writes the report "
            "(or rerun this command when they are done).")
    return {"study/cells_done": done}, {"headline": note, "cells_ok": 0, "cells_failed": 0}


def _rounds(plan: Plan, tolerance: float, run_cell) -> tuple[list[dict], tuple | None]:
    """--seeds auto: the grid at 3 seeds, then, after each round (a look), one more seed for each target still
    open (tracking.statistics: look_decisions, next_round), up to --max-seeds. Every look is recomputed from the
    cells' results, so a rerun replays the same looks, reusing every finished step, and goes on where it stopped.
    (every cell's row, what to answer when another worker writes the report)."""
    import pandas as pd

    from tracking.statistics import FIRST_SEEDS, look_decisions, look_rows, next_round, sequential_looks, sequential_targets
    from tracking.study import with_robust_means

    targets = sequential_targets([arm_name(a) for a in plan.augments], plan.ratios, robust=bool(plan.kinds))
    seeds, rows, plan.looks, most = {target: FIRST_SEEDS for target in targets}, {}, [], sequential_looks(plan.max_seeds)
    ran = []  # the cells this process ran (or found finished) itself, round by round
    for look in range(1, most + 1):
        ran.append(0)
        counted = lambda *cell: ran.__setitem__(-1, ran[-1] + 1) or run_cell(*cell)  # noqa: E731
        done, waited = _round(plan, look, [cell for cell in _round_cells(plan, seeds) if cell not in rows], counted)
        rows.update(done)
        results = with_robust_means(pd.DataFrame(list(rows.values())), plan.kinds)
        decisions = look_decisions(results, seeds, tolerance, plan.max_seeds)
        plan.looks += look_rows(look, decisions, seeds)
        more = next_round(decisions, seeds, plan.max_seeds)
        states = ", ".join(f"{kind} {arm} {ratio * 100:g}%: {d.state} ({seeds[(kind, arm, ratio)]} seeds)" for (kind, arm, ratio), d in decisions.items())
        print(f"[synthmix] look {look} of at most {most}: {states}; " + (f"{len(more)} still open get a seed more" if more else "the study stops"), flush=True)
        if not more:
            break
        seeds = {**seeds, **more}
    # with --storage, the worker that finished the last look's last cell writes the report; one that waited for it, or that
    # took part in earlier rounds but found the last one done, does not (a rerun, which ran no cell, writes it)
    elsewhere = plan.storage and (waited or (sum(ran) and not ran[-1]))
    return list(rows.values()), (_left_to_others(len(rows), len(rows)) if elsewhere else None)


def _round_cells(plan: Plan, seeds: dict) -> list[tuple]:
    """The cells (seed, augment, ratio) a look needs: the first grid, and each target's cell and the one it is paired with at each of its seeds."""
    augment_of = {arm_name(augment): augment for augment in plan.augments}
    ratio_of = {round(float(ratio), 6): ratio for ratio in plan.ratios}
    wanted = set(plan.cells)
    for (kind, arm, ratio), count in seeds.items():
        cell = (augment_of[arm], ratio_of[ratio])
        partner = (augment_of[arm], ratio_of[0.0]) if kind == "drop" else ("", ratio_of[ratio])  # real only / the arm none
        wanted |= {(seed, *pair) for seed in range(count) for pair in (cell, partner)}
    order = {augment: index for index, augment in enumerate(plan.augments)}
    return sorted(wanted, key=lambda c: (c[0], order[c[1]], c[2]))


def _round(plan: Plan, look: int, cells: list[tuple], run_cell) -> tuple[dict, bool]:
    """A look's new cells, run here; with --storage, a grid that every worker shares (one Optuna study per distinct
    round), waiting for the cells other workers run, since the next look needs them all. (rows by cell, whether this worker waited)."""
    import hashlib
    import time

    if not plan.storage or not cells:
        return {cell: run_cell(*cell) for cell in cells}, False
    name, waited = f"{plan.study}-{hashlib.sha256(repr(cells).encode()).hexdigest()[:10]}", False
    while True:
        rows, left = _cells_on_workers(plan.storage, name, cells, run_cell)
        if not left:
            return dict(zip(cells, rows)), waited
        if not waited:
            print(f"[synthmix] look {look}: {left} cell(s) still run on other workers; waiting for them (the next look needs every cell)", flush=True)
        waited = True
        time.sleep(5)


def _synthesis(params: dict, plan: Plan, steps: Steps):
    """(the synthesis StageResult or None, the synthetic source every mix takes): synthesized once, or the run or folder given."""
    from pipelines._cli import passed_on
    from tracking.runs import get_run
    from tracking.stage import StageResult

    source = {"synthetic_run": plan.synthetic_run or "", "synthetic_data": plan.synthetic_data or ""}
    if plan.synthetic_run:
        found = get_run(plan.synthetic_run, "synthetic_run")
        source["synthetic_run"] = found.info.run_id
        return StageResult("synthesize", found.info.run_id, dict(found.data.metrics), reused=True), source
    if plan.synthetic_data or not any(r > 0 for r in plan.ratios):
        return None, source
    once = lambda stage_params, **options: synthesize_stage.synthesize_once(stage_params, plan.study, options["tags"], plan.storage)  # noqa: E731
    synthesis = steps("synthesize", once, passed_on(PARAMS, params, synthesize_stage.PARAMS, seed=0), {}, "")
    source["synthetic_run"] = synthesis.run_id
    return synthesis, source


def _cell(params: dict, plan: Plan, steps: Steps, source: dict, seed: int, augment: str, ratio: float) -> dict:
    """mix (ratio > 0) -> train -> evaluate for one cell; a failure is reported and the study goes on."""
    import traceback

    from pipelines._cli import DATA_KEYS, passed_on

    cell = {"ratio": ratio, "augment": arm_name(augment), "seed": seed}
    translation_arm, mode = plan.arms.get(ratio, ("", "replace"))
    if translation_arm:
        cell["arm"] = translation_arm  # a cyclegan study: source, both or translated
    label = f"r{ratio:g}-{arm_name(augment)}-s{seed}" if not translation_arm else f"{translation_arm}-{arm_name(augment)}-s{seed}"
    first = seed == plan.seeds[0]  # pictures (Grad-CAM panels, misclassified images) for the first seed of each cell
    try:
        data = {key: params[key] for key in DATA_KEYS}
        if ratio > 0:
            mixed = steps("mix", mix_stage.mix, {**data, **source, "ratio": ratio, "mode": mode, "seed": seed}, cell, f"{plan.study}-mix-{label}")
            data = {"dataset_run": mixed.run_id, "data": params["data"]}
        trained = steps("train", train_stage.train, passed_on(PARAMS, params, train_stage.PARAMS, **data, augment=augment, seed=seed), cell, f"{plan.study}-train-{label}")
        evaluated = steps("evaluate", evaluate_stage.evaluate, passed_on(
            PARAMS, params, evaluate_stage.PARAMS, train_run=trained.run_id, corruptions=",".join(plan.kinds), seed=seed,
            saliency=params["saliency"] if first else 0, misclassified=16 if first else 0), cell, f"{plan.study}-evaluate-{label}")
        return {**cell, "status": "ok", "train_run": trained.run_id, "evaluate_run": evaluated.run_id,
                **{k: v for k, v in trained.metrics.items() if k.startswith("val/")}, **evaluated.metrics}
    except Exception as error:
        print(f"[synthmix] step of cell {label} failed, the study goes on: {error.__class__.__name__}: {error}", flush=True)
        traceback.print_exc()
        return {**cell, "status": "failed", "error": f"{error.__class__.__name__}: {error}"}


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

    from tracking.connect import open_study, storage_lock

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


def _champion(run, params: dict, trained: list[str]) -> str:
    """Register the study's best model (on val/acc; --registered-model, empty: register's <dataset>-classifier) and say what became champion; a failure here loses no result."""
    from pipelines.register import register

    name = params["registered_model"].strip()
    if name.lower() in ("none", "skip"):
        return ""
    try:
        done = register({"parent_run": run.info.run_id, "registered_model": name, "metric": "val/acc"},
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
