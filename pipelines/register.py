"""register: put the best classifier of a study (or an experiment) in the MLflow Model Registry and point the alias `champion` at it.

    python -m pipelines register --parent-run <study run id>
    python -m pipelines register --experiment synthmix --data mnist5k

The candidates are the train runs below --parent-run (at any depth: a study's
steps, a sweep's trials) or in --experiment. They are ranked by --metric, a
validation metric (val/acc by default): the test split stays for reporting,
and choosing on it would overstate the result. Runs that did not finish, that
lack the metric or a logged model, and runs of other stages are left out and
counted. Ties go to the lower val/loss, then to the run that finished first.

The winner's model becomes a version of --registered-model (once: registering
the same run again finds its version), tagged with its train run, study,
ratio, augment, seed, the metric and its test/acc. The alias moves to it only
when it beats the alias's current version on the same metric and the same
validation data; a model that does not is registered without moving the
alias. The output says which happened and why.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import click

from pipelines._cli import option, optional, stage_command

PARAMS = [
    option("parent_run", "", "Study (or sweep) run whose train runs compete, at any depth below it (a detect run: its detector); empty: the train runs of --experiment."),
    option("experiment", "", "Experiment (name or id) whose train runs compete when --parent-run is empty; empty: the current one (synthmix, or MLFLOW_EXPERIMENT_NAME)."),
    option("data", "", "Only train runs on this dataset (as their data parameter says, e.g. mnist5k or a folder); empty: all."),
    option("metric", "val/acc", "Validation metric that chooses the model; any metric the train runs log (e.g. val/loss)."),
    option("direction", "auto", "auto: lower is better for metrics named like loss, error or mce, higher for the rest.", click.Choice(["auto", "maximize", "minimize"])),
    option("registered_model", "", "Name in the Model Registry; empty: <dataset>-classifier (or -detector for a detect run's model), after the winner's dataset (e.g. mnist5k-classifier)."),
    option("alias", "champion", "Alias that points at the best version of the registered model."),
    option("force", False, "true: move the alias to the winner even when its version was chosen on another metric or other validation data.", bool),
]
DEFAULTS = {p.name: p.default for p in PARAMS}
TAG = "synthmix."  # prefix of the tags a registered version carries


@dataclass
class Candidate:
    run: object
    value: float
    val_loss: float
    model_id: str
    val_digest: str
    dataset: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def cell(self) -> str:
        """ratio, augment, seed as the study tagged them (empty for a train run of its own)."""
        tags = self.run.data.tags
        parts = [f"{k} {tags[TAG + k]}" for k in ("ratio", "augment", "seed") if TAG + k in tags]
        return ", ".join(parts)


@dataclass
class Choice:
    best: Candidate
    ranked: list[Candidate]
    ignored: dict[str, int]  # reason -> number of train runs left out
    ties: int  # other runs with the same metric value as the winner
    others: int = 0  # runs of other stages below the parent run (or in the experiment)


@dataclass
class Registered:
    """What `register` did."""

    name: str
    version: str
    alias: str
    run_id: str
    metric: str
    value: float
    moved: bool
    message: str
    uri: str
    candidates: int
    previous: str | None = None
    ignored: dict = field(default_factory=dict)


def lower_is_better(metric: str, direction: str) -> bool:
    if direction != "auto":
        return direction == "minimize"
    return any(word in metric.lower() for word in ("loss", "error", "mce", "err"))


def model_name(dataset: str, task: str = "classifier") -> str:
    """The default registered model name: <dataset>-classifier (or -detector), with only letters, digits, . _ -"""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset.rstrip("/").split("/")[-1]).strip("-.") or "synthmix"
    return f"{base}-{task}"


def _descendants(client, parent) -> list:
    """Every run below `parent` (children, their children, ...), from one search of its experiment."""
    runs = client.search_runs([parent.info.experiment_id], max_results=50000)
    children: dict[str, list] = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    found, frontier = [], [parent.info.run_id]
    while frontier:
        below = [run for run_id in frontier for run in children.get(run_id, [])]
        found += below
        frontier = [run.info.run_id for run in below]
    return found


def _experiment_runs(client, experiment: str | None) -> tuple[list, str]:
    from imaging.errors import InputError
    from tracking.runs import command_experiment

    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None and experiment.isdigit():
            try:
                found = client.get_experiment(experiment)
            except Exception:
                found = None
        if found is None:
            raise InputError(f"--experiment {experiment!r} is not an experiment in {client.tracking_uri}; give a name or id the MLflow UI lists.")
        experiment_id, what = found.experiment_id, f"experiment {found.name!r}"
    else:
        experiment_id = command_experiment()
        what = f"experiment {client.get_experiment(experiment_id).name!r}"
    return client.search_runs([experiment_id], "tags.`synthmix.stage` = 'train'", max_results=50000), what


def _candidate(run, metric: str) -> Candidate | str:
    """The run as a candidate, or why it is left out."""
    if run.info.status != "FINISHED":
        return f"not finished ({run.info.status.lower()})"
    value = run.data.metrics.get(metric)
    if value is None or math.isnan(value):
        return f"with no {metric}"
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        return "with no logged model"
    val = [d.dataset for d in run.inputs.dataset_inputs if any(t.key == "mlflow.data.context" and t.value == "val" for t in d.tags)] if run.inputs else []
    dataset = run.data.params.get("data") or (val[0].name.removesuffix("-val") if val else "")
    return Candidate(run, float(value), float(run.data.metrics.get("val/loss", math.inf)), outputs[-1].model_id, val[0].digest if val else "", dataset)


def choose(runs: list, metric: str = "val/acc", direction: str = "auto", data: str | None = None, where: str = "these runs") -> Choice:
    """The best finished train run of `runs` by `metric`; InputError when none qualifies."""
    from imaging.errors import InputError

    ignored: dict[str, int] = {}
    candidates, others = [], 0
    for run in runs:
        if run.data.tags.get("synthmix.stage") != "train":
            others += 1
            continue
        if data and run.data.params.get("data") != data:
            ignored[f"on other data than {data}"] = ignored.get(f"on other data than {data}", 0) + 1
            continue
        found = _candidate(run, metric)
        if isinstance(found, str):
            ignored[found] = ignored.get(found, 0) + 1
        else:
            candidates.append(found)
    if not candidates:
        left_out = _left_out(ignored) or "there are none"
        raise InputError(f"no finished train run with {metric} and a logged model in {where} ({left_out}); run train or main first, or pick another --metric.")
    validation = {c.val_digest for c in candidates}
    if len(validation) > 1:
        sets = sorted({f"{c.dataset} (val digest {c.val_digest})" for c in candidates})
        raise InputError(f"the train runs in {where} were validated on {len(validation)} different validation sets ({', '.join(sets)}), "
                         "so their metrics do not compare; pass --data or --parent-run to pick one study.")
    sign = 1.0 if lower_is_better(metric, direction) else -1.0
    ranked = sorted(candidates, key=lambda c: (sign * c.value, c.val_loss, c.run.info.end_time or 0, c.run_id))
    best = ranked[0]
    ties = sum(1 for c in ranked[1:] if c.value == best.value)
    return Choice(best, ranked, ignored, ties, others)


def _test_accuracy(client, candidate: Candidate) -> float | None:
    """test/acc of the newest finished evaluate run of this model."""
    runs = client.search_runs([candidate.run.info.experiment_id],
                              f"params.train_run = '{candidate.run_id}' AND tags.`synthmix.stage` = 'evaluate' AND attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.metrics.get("test/acc") if runs else None


def _left_out(ignored: dict[str, int]) -> str:
    return ", ".join(f"{n} train run{'s' if n != 1 else ''} {reason}" for reason, n in ignored.items())


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _decide(holder, version: str, best: Candidate, metric: str, alias: str, lower: bool, force: bool) -> tuple[bool, str]:
    """(move the alias to `version`?, why) against the version that holds it now (None: none does)."""
    if holder is None:
        return True, f"no version held '{alias}' before"
    if str(holder.version) == version:
        return False, f"version {version} already holds '{alias}'"
    held = holder.tags
    held_metric, held_value = held.get(f"{TAG}metric"), held.get(f"{TAG}metric_value")
    if held_metric is None or held_value is None:
        basis = "it was not registered by synthmix (no recorded metric)"
    elif held_metric != metric:
        basis = f"it was chosen on {held_metric}, not {metric}"
    elif held.get(f"{TAG}val_digest") != best.val_digest:
        basis = f"it was chosen on other validation data (digest {held.get(TAG + 'val_digest')}, not {best.val_digest})"
    else:
        old = float(held_value)
        if (best.value < old) if lower else (best.value > old):
            return True, f"it beats version {holder.version} ({metric} {_fmt(old)})"
        return False, f"version {holder.version} keeps '{alias}' ({metric} {_fmt(old)} is not beaten)"
    if force:
        return True, f"--force moved '{alias}' from version {holder.version}, although {basis}"
    return False, f"version {holder.version} keeps '{alias}' because {basis}; pass --force true to move it"


def _study_steps(client, parent) -> list:
    """The runs a study's runs.csv names: steps it reused from another study are not below its run."""
    import pandas as pd

    try:
        import mlflow

        steps = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="runs.csv"))
    except Exception:
        return []  # not a study run, or one that has not finished a first pass
    ids = [i for i in steps.get("run_id", pd.Series(dtype=str)).dropna().astype(str) if i]
    return [client.get_run(i) for i in dict.fromkeys(ids)]


def register(params: dict, *, runs: list[str] | None = None, echo=click.echo) -> Registered:
    """Choose, register and (when better) move the alias; see the module docstring.

    `runs`: run ids that compete besides those below --parent-run (the study passes its cells'
    train runs, some of which it may have reused from another study).
    """
    from mlflow import MlflowClient

    from imaging.errors import InputError
    from tracking.runs import quiet_mlflow

    quiet_mlflow()
    params = {**DEFAULTS, **params}
    metric, alias = params["metric"].strip(), params["alias"].strip()
    if not metric:
        raise InputError("--metric is empty; name a validation metric the train runs log, e.g. val/acc.")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or alias.lower() == "latest" or re.fullmatch(r"v\d+", alias.lower()):
        raise InputError(f"--alias {alias!r} is not a usable alias: letters, digits, _ and -, not starting with a digit, and not 'latest' or v<number>.")
    client = MlflowClient()
    found, where = _competing(client, params)
    found += [client.get_run(run_id) for run_id in runs or []]
    choice = choose(list({run.info.run_id: run for run in found}.values()), metric, params["direction"], optional(params["data"]), where)
    best = choice.best
    task = "detector" if best.run.data.tags.get("synthmix.task") == "detector" else "classifier"
    name = optional(params["registered_model"]) or model_name(best.dataset, task)
    test_acc = _test_accuracy(client, best)
    version, existing = _version_of(client, name, best, metric, alias, task, test_acc)
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except Exception:
        holder = None
    pool = f"best {metric} of {len(choice.ranked)} finished train run{'s' if len(choice.ranked) != 1 else ''}"
    if choice.ties:
        pool += f", tied with {choice.ties} (broken by lower val/loss, then the earlier run)"
    test_text = f"; test/acc {_fmt(test_acc)}" if test_acc is not None else ""
    what = f"train run {best.run_id[:8]}{' (' + best.cell + ')' if best.cell else ''}: {metric} {_fmt(best.value)}, {pool}{test_text}"
    previous = str(holder.version) if holder is not None else None
    moved, reason = _decide(holder, version, best, metric, alias, lower_is_better(metric, params["direction"]), params["force"])
    if moved:
        client.set_registered_model_alias(name, alias, version)
    client.update_model_version(name, version, description=f"{what}. {'Holds' if moved or previous == version else 'Does not hold'} '{alias}': {reason}.")
    uri = f"models:/{name}@{alias}"
    if moved or previous == version:
        message = f"{uri} is version {version}, {what}; {reason}."
    else:
        message = f"{'registered' if not existing else 'found'} {name} version {version}, {what}; {reason}."
    if choice.ignored:
        message += f" Left out: {_left_out(choice.ignored)}."
    echo(f"[synthmix] {message}")
    return Registered(name, version, alias, best.run_id, metric, best.value, moved, message, uri, len(choice.ranked), previous, choice.ignored)


def _competing(client, params: dict) -> tuple[list, str]:
    """(the runs that compete, where they were found): below --parent-run (a pointer followed; a detect run: its detector), or in --experiment."""
    from tracking.runs import get_run

    if not optional(params["parent_run"]):
        return _experiment_runs(client, optional(params["experiment"]))
    parent = get_run(params["parent_run"], "parent_run")
    detector = parent.data.tags.get("synthmix.detector_train_run")
    if detector:  # a detect run: its own detector, not the per-generator ones of its transfer runs
        return [client.get_run(detector)], f"the detector of {parent.info.run_name} ({parent.info.run_id})"
    return _descendants(client, parent) + _study_steps(client, parent), f"the runs below {parent.info.run_name} ({parent.info.run_id})"


def _version_of(client, name: str, best: Candidate, metric: str, alias: str, task: str, test_acc: float | None) -> tuple[str, bool]:
    """(the version of `name` holding the winner's model, whether it existed before): registered once, its tags saying what it was chosen on."""
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description=f"synthmix {task}s of {best.dataset}; the alias '{alias}' points at the best on {metric}.")
    existing = client.search_model_versions(f"name = '{name}' AND run_id = '{best.run_id}'")
    tags = {
        f"{TAG}train_run": best.run_id, f"{TAG}metric": metric, f"{TAG}metric_value": repr(best.value),
        f"{TAG}val_digest": best.val_digest, f"{TAG}dataset": best.dataset,
        **{f"{TAG}{k}": best.run.data.tags[TAG + k] for k in ("study", "ratio", "augment", "seed", "model") if TAG + k in best.run.data.tags},
        **({"test/acc": _fmt(test_acc)} if test_acc is not None else {}), metric: _fmt(best.value),
    }
    if not existing:
        return str(client.create_model_version(name, f"models:/{best.model_id}", run_id=best.run_id, tags=tags, model_id=best.model_id).version), False
    version = str(existing[0].version)
    for key, value in tags.items():  # what it was chosen on this time, which a later comparison reads
        client.set_model_version_tag(name, version, key, value)
    return version, True


def run_command(**params):
    """The command: under `mlflow run`, the run MLflow made records what was registered."""
    import os

    project = os.environ.get("MLFLOW_RUN_ID")
    if project:  # the experiment of "the current one" is the project run's
        from mlflow.tracking import MlflowClient

        os.environ["MLFLOW_EXPERIMENT_ID"] = MlflowClient().get_run(project).info.experiment_id
    done = register(params)
    if project:
        from tracking.runs import NOTE, TAG_STAGE, set_tags

        set_tags(project, {TAG_STAGE: "register", "synthmix.registered": f"models:/{done.name}/{done.version}", "synthmix.train_run": done.run_id,
                           "mlflow.runName": f"register-{done.name}-v{done.version}", NOTE: done.message})
        MlflowClient().log_metric(project, done.metric, done.value)


command = stage_command("register", __doc__, PARAMS, run_command)
