"""--seeds auto: the sequential decision rule simulated on known distributions (no training), and one tiny
study end to end: seeds added only where the answer is open, and a rerun that reuses everything."""
from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import runs_of
from imaging.errors import InputError
from tracking.statistics import (
    FIRST_SEEDS, look_confidence, look_decisions, mean_ci, next_round, sequential_decision, sequential_looks, sequential_targets,
)

TOLERANCE = 0.01  # 1 point, main's default
MAX_SEEDS = 10  # main's default --max-seeds
BASE = 0.97  # real-only test accuracy
SEED_SD = 0.004  # what a seed moves both cells by (the same mix sampling, initialisation and batch order)
CELL_SD = 0.005  # each cell's own noise per seed: a paired drop's sd is sqrt(2) * 0.005 = 0.71 points, as in the README's study
TARGET = ("drop", "none", 0.5)


def draw(rng, drop: float, seeds: int = MAX_SEEDS) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed test accuracies of the real-only cell and of a cell whose true drop is `drop`."""
    shared = rng.normal(0, SEED_SD, seeds)
    return BASE + shared + rng.normal(0, CELL_SD, seeds), BASE - drop + shared + rng.normal(0, CELL_SD, seeds)


def one_study(baseline: np.ndarray, cell: np.ndarray, max_seeds: int = MAX_SEEDS) -> tuple[str, int]:
    """What main does for one target: look at 3 seeds, then one more per look while open (the same two functions)."""
    seeds = {TARGET: FIRST_SEEDS}
    while True:
        count = seeds[TARGET]
        decisions = {TARGET: sequential_decision(baseline[:count] - cell[:count], TOLERANCE, max_seeds)}
        more = next_round(decisions, seeds, max_seeds)
        if not more:
            return decisions[TARGET].state, count
        seeds.update(more)


def naive_peeking(baseline: np.ndarray, cell: np.ndarray) -> bool:
    """Optional stopping without the correction: a plain 95% interval at every look; True if it ever says 'below'."""
    return any(mean_ci(baseline[:n] - cell[:n]).high < TOLERANCE for n in range(FIRST_SEEDS, MAX_SEEDS + 1))


def test_a_drop_equal_to_the_tolerance_is_called_below_it_in_at_most_5_percent_of_studies(capsys):
    rng = np.random.default_rng(20)
    studies = 4000
    draws = [draw(rng, TOLERANCE) for _ in range(studies)]
    outcomes = [one_study(*pair) for pair in draws]
    rate = sum(state == "below" for state, _ in outcomes) / studies
    error = math.sqrt(max(rate * (1 - rate), 1e-4) / studies)
    naive = sum(naive_peeking(*pair) for pair in draws) / studies
    fixed = sum(mean_ci(b - c).high < TOLERANCE for b, c in draws) / studies  # one look at 10 seeds, plain 95%
    with capsys.disabled():
        print(f"\n[adaptive] true drop = tolerance ({TOLERANCE * 100:g} point), {studies} simulated studies, --max-seeds {MAX_SEEDS} "
              f"(K = {sequential_looks(MAX_SEEDS)} looks at {look_confidence(MAX_SEEDS) * 100:.4g}% each): called 'below the tolerance' in "
              f"{rate:.2%} ± {error:.2%} (standard error); a fixed 10-seed design {fixed:.2%}; peeking with plain 95% intervals {naive:.2%}")
    assert rate <= 0.05 + 2 * error
    assert rate <= 0.025 + 3 * error  # Bonferroni's own bound for the one side: K looks x 0.05/K/2
    assert naive > rate  # what the correction is for


def test_a_cell_without_a_drop_is_decided_with_fewer_seeds_than_a_fixed_10_seed_design(capsys):
    rng = np.random.default_rng(21)
    studies = 2000
    outcomes = [one_study(*draw(rng, 0.0)) for _ in range(studies)]
    seeds = np.array([count for _, count in outcomes])
    decided = sum(state == "below" for state, _ in outcomes) / studies
    wrong = sum(state == "above" for state, _ in outcomes) / studies
    error = seeds.std(ddof=1) / math.sqrt(studies)
    with capsys.disabled():
        print(f"\n[adaptive] true drop 0, {studies} simulated studies: {seeds.mean():.2f} ± {error:.2f} seeds per cell on average "
              f"(a fixed design: 10); decided safe in {decided:.1%} (by 3, 5, 7 seeds: {np.mean(seeds <= 3):.1%}, "
              f"{np.mean(seeds <= 5):.1%}, {np.mean(seeds <= 7):.1%}), called costly in {wrong:.2%}")
    assert seeds.mean() + 3 * error < 10
    assert decided > 0.5 and wrong < 0.01


def test_the_rule_stops_at_the_first_costly_fraction_and_at_the_maximum():
    open_, safe, costly = (sequential_decision(values, TOLERANCE, MAX_SEEDS) for values in (
        [0.0, 0.03, -0.01], [0.001, 0.002, 0.0015, 0.001], [0.05, 0.051, 0.049, 0.05]))
    assert (open_.state, safe.state, costly.state) == ("open", "below", "above")
    assert costly.interval.low > TOLERANCE > safe.interval.high
    drop = lambda ratio: ("drop", "none", ratio)  # noqa: E731
    decisions = {drop(0.5): safe, drop(0.6): open_, drop(0.7): costly, drop(0.8): open_, ("gain", "salt", 0.0): open_}
    seeds = {target: 4 for target in decisions}
    # the open 60% and the open gain get a seed more; 80% is past the first costly fraction (70%), so the answer does not need it
    assert next_round(decisions, seeds, MAX_SEEDS) == {drop(0.6): 5, ("gain", "salt", 0.0): 5}
    assert next_round(decisions, {**seeds, drop(0.6): MAX_SEEDS, ("gain", "salt", 0.0): MAX_SEEDS}, MAX_SEEDS) == {}
    assert sequential_looks(10) == 8 and look_confidence(10) == pytest.approx(1 - 0.05 / 8)
    assert sequential_targets(["none", "salt"], [0, 0.5, 0.8], robust=True) == [drop(0.5), drop(0.8), ("gain", "salt", 0.0)]
    assert sequential_targets(["none", "salt"], [0, 0.5], robust=False) == [drop(0.5)]


def test_main_decides_from_the_results_frame_as_the_simulation_does_from_arrays():
    """look_decisions (what main calls on its rows) pairs by seed, keeps to each target's seeds and agrees with sequential_decision."""
    rng = np.random.default_rng(22)
    for _ in range(20):
        baseline, cell = draw(rng, rng.uniform(0, 0.02))
        gain = rng.normal(0.012, 0.006, MAX_SEEDS)
        rows = [{"ratio": 0.0, "augment": "none", "seed": s, "status": "ok", "test/acc": baseline[s], "robust/acc": 0.6} for s in range(MAX_SEEDS)]
        rows += [{"ratio": 0.5, "augment": "none", "seed": s, "status": "ok", "test/acc": cell[s], "robust/acc": 0.6} for s in range(6)]
        rows += [{"ratio": 0.0, "augment": "salt", "seed": s, "status": "ok", "test/acc": 0.9, "robust/acc": 0.6 + gain[s]} for s in range(4)]
        rows.append({"ratio": 0.5, "augment": "none", "seed": 6, "status": "failed"})
        seeds = {TARGET: 6, ("gain", "salt", 0.0): 4}
        decisions = look_decisions(pd.DataFrame(rows), seeds, TOLERANCE, MAX_SEEDS)
        expected = sequential_decision(baseline[:6] - cell[:6], TOLERANCE, MAX_SEEDS)
        assert decisions[TARGET].state == expected.state and decisions[TARGET].interval.high == pytest.approx(expected.interval.high)
        assert decisions[("gain", "salt", 0.0)].interval.mean == pytest.approx(gain[:4].mean())


def test_seeds_auto_needs_at_least_3_seeds_and_the_none_arm(tiny_folder, experiment):
    from pipelines.main import main

    with pytest.raises(InputError, match=r"--max-seeds 2 is too few for --seeds auto: every cell starts with 3 seeds; give at least 3"):
        main({"data": str(tiny_folder), "seeds": "auto", "max_seeds": 2})
    with pytest.raises(InputError, match=r"--augments has no arm none"):
        main({"data": str(tiny_folder), "seeds": "auto", "augments": "salt_pepper:3:0.5"})
    assert runs_of(experiment) == []


SMALL = {
    "model": "smallcnn", "epochs": 1, "batch_size": 16, "lr": 3e-3, "device": "cpu", "per_class": 16, "ratios": "0,0.5",
    "augments": "none,salt_pepper:3:0.5", "corruptions": "salt_pepper", "severities": "1", "saliency": 0,
    "seeds": "auto", "max_seeds": 4, "tolerance": 0.0,  # a tolerance of 0: the tiny study's ties stay open, so a second look is likely
}


def test_seeds_auto_adds_seeds_only_where_open_and_a_rerun_reuses_every_step(tiny_folder, experiment, monkeypatch):
    from pipelines import main as main_stage

    params = {**SMALL, "data": str(tiny_folder), "registered_model": "none"}
    trainings, train = [], main_stage.train_stage.train

    def stopped_at_the_fifth(*args, **kwargs):  # Ctrl-C in the middle of the first round
        trainings.append(1)
        if len(trainings) == 5:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(main_stage.train_stage, "train", stopped_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        main_of(params)
    [killed] = runs_of(experiment, "main")
    assert killed.info.status == "KILLED" and len(runs_of(experiment, "train")) == 4
    monkeypatch.setattr(main_stage.train_stage, "train", train)

    first = main_of(params)  # the same command continues the killed study, reusing its four trainings
    assert first["run_id"] == killed.info.run_id
    parent = MlflowClient().get_run(first["run_id"])
    download = lambda name: mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path=name)  # noqa: E731
    looks = pd.read_csv(download("looks.csv"))
    results = pd.read_csv(download("results.csv"))
    assert set(looks["look"]) <= {1, 2} and set(looks["kind"] + " " + looks["augment"]) == {"drop none", "gain salt_pepper:3:0.5"}
    last = looks[looks["look"] == looks["look"].max()].set_index("kind")
    # a target open at look 1 got its 4th seed, a decided one kept 3; real only (none) takes the most any target paired with it took
    at_first = looks[looks["look"] == 1].set_index("kind")["state"]
    expected = {kind: 3 if at_first[kind] != "open" else 4 for kind in ("drop", "gain")}
    assert dict(last["seeds"]) == expected
    seeds = {key.removeprefix("study/seeds/"): value for key, value in parent.data.metrics.items() if key.startswith("study/seeds/")}
    assert seeds == {"none/r0": max(expected.values()), "none/r0.5": expected["drop"],
                     "salt_pepper-3-0.5/r0": expected["gain"], "salt_pepper-3-0.5/r0.5": 3}
    assert len(results) == sum(seeds.values()) and len(runs_of(experiment, "train")) == len(results)
    assert parent.data.metrics["study/max_seeds"] == 4 and parent.data.metrics["study/looks"] == looks["look"].max()
    assert "Seeds per cell" in first["headline"] and "over all 2 possible looks" in first["headline"]
    html = open(download("report.html"), encoding="utf-8").read()
    assert "Sequential decisions" in html and "Bonferroni" in html and "figures/looks.png" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "figures")}

    # the same command again continues the same parent and reuses every step, round after round
    again = main_of(params)
    assert again["run_id"] == first["run_id"] and again["headline"] == first["headline"]
    assert len(runs_of(experiment, "main")) == 1 and len(runs_of(experiment, "train")) == len(results)
    steps = pd.read_csv(download("runs.csv"))
    assert set(steps["status"]) == {"reused"}

    # a larger --max-seeds continues the same study: same parent, every earlier step reused, the looks recomputed at the new K
    more = main_of({**params, "max_seeds": 5})
    assert more["run_id"] == first["run_id"] and len(runs_of(experiment, "main")) == 1
    assert MlflowClient().get_run(more["run_id"]).data.metrics["study/max_seeds"] == 5 and "over all 3 possible looks" in more["headline"]
    steps = pd.read_csv(download("runs.csv"))
    assert set(steps[steps["run_id"].isin(results["train_run"])]["status"]) == {"reused"}


def main_of(params: dict) -> dict:
    from pipelines.main import main

    return main(params)


def test_with_storage_each_round_is_a_grid_of_its_own_that_a_rerun_finds_done(tmp_path):
    from pipelines.main import Plan, _round

    plan = Plan([0.0, 0.5], [""], [0, 1, 2], [], None, None, f"sqlite:///{tmp_path / 'rounds.db'}", study="s", max_seeds=5)
    ran = []

    def run_cell(seed, augment, ratio):
        ran.append((seed, augment, ratio))
        return {"ratio": ratio, "augment": "none", "seed": seed, "status": "ok", "val/acc": 0.5}

    first, second = [(0, "", 0.0), (0, "", 0.5)], [(3, "", 0.0), (3, "", 0.5)]
    rows, waited = _round(plan, 1, first, run_cell)
    assert list(rows) == first and not waited and ran == first
    rows, _ = _round(plan, 2, second, run_cell)  # another round: its own Optuna study, so cell indices never mix
    assert [(r["seed"], r["ratio"]) for r in rows.values()] == [(3, 0.0), (3, 0.5)] and ran == first + second
    ran.clear()
    assert list(_round(plan, 1, first, run_cell)[0]) == first and ran == []  # a rerun finds the round done


@pytest.mark.postgres
def test_two_workers_share_every_round_through_postgresql(tmp_path, pg_databases):
    from conftest import study_workers

    backend, outputs = study_workers(tmp_path, pg_databases, "rounds", "--seeds", "auto", "--max-seeds", "4", "--tolerance", "0", "--corruptions", "")
    client = MlflowClient(tracking_uri=backend)
    runs = client.search_runs([client.get_experiment_by_name("rounds").experiment_id], max_results=1000)
    trained = sorted((r.data.tags["synthmix.ratio"], r.data.tags["synthmix.seed"]) for r in runs if r.data.tags["synthmix.stage"] == "train")
    assert len(trained) == len(set(trained)) and len(trained) in (6, 8)  # 3 seeds per cell, and a 4th where the drop stayed open; none twice
    [parent] = [r for r in runs if r.data.tags["synthmix.stage"] == "main"]
    assert parent.data.metrics["study/seeds/none/r0.5"] == len(trained) / 2
    assert sum("look 1 of at most 2" in out for out in outputs) == 2  # both took part in the rounds
    assert sum("writes the report" in out for out in outputs) <= 1 and sum("report: " in out for out in outputs) >= 1
