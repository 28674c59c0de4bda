"""Intervals, paired differences and the headline rule against hand-computed numbers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tracking.statistics import (
    MINUS,
    augment_effects,
    headline,
    headline_facts,
    mean_ci,
    study_metric_series,
    study_metrics,
    summarise,
    to_markdown,
)

T_975_DF1 = 12.706204736174707  # scipy.stats.t.ppf(0.975, 1), as printed in t tables
T_975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def test_mean_ci_matches_the_hand_computed_student_t_interval():
    interval = mean_ci([0.90, 0.92, 0.94])
    # mean 0.92; deviations -0.02, 0, 0.02 -> sd = sqrt((0.0004 + 0 + 0.0004) / 2) = 0.02
    # half-width = t(0.975, 2) * sd / sqrt(3) = 4.302652729911275 * 0.011547005 = 0.0496827...
    half_width = T_975_DF2 * 0.02 / math.sqrt(3)
    assert half_width == pytest.approx(0.04968275, abs=1e-8)
    assert interval.n == 3
    assert interval.mean == pytest.approx(0.92)
    # abs=1e-10: 0.90, 0.92 and 0.94 are not exact in binary, so the sd is 0.02 only to ~1e-12
    assert interval.low == pytest.approx(0.92 - half_width, abs=1e-10)
    assert interval.high == pytest.approx(0.92 + half_width, abs=1e-10)
    assert interval.half_width == pytest.approx(half_width, abs=1e-10)


def test_mean_ci_skips_missing_values_and_has_no_interval_below_two_values():
    assert mean_ci([0.90, math.nan, 0.94]).mean == pytest.approx(0.92)
    assert mean_ci([0.90, math.nan, 0.94]).n == 2
    single = mean_ci([0.7])
    assert (single.mean, single.n) == (0.7, 1)
    assert math.isnan(single.low) and math.isnan(single.high)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    # a wider confidence gives a wider interval
    assert mean_ci([0.90, 0.92, 0.94], confidence=0.99).half_width > mean_ci([0.90, 0.92, 0.94]).half_width


def run(ratio, augment, seed, status="ok", **metrics):
    return {"ratio": ratio, "augment": augment, "seed": seed, "status": status, **{name.replace("__", "/"): value for name, value in metrics.items()}}


@pytest.fixture
def paired_results() -> pd.DataFrame:
    rows = [
        run(0.0, "none", 0, test__acc=0.90, robust__acc=0.50),
        run(0.0, "none", 1, test__acc=0.92, robust__acc=0.52),
        run(0.0, "none", 2, test__acc=0.94, robust__acc=0.51),
        # seed 2 of the 50% cell failed: its number must not count, and the pairing uses seeds 0 and 1 only
        run(0.5, "none", 0, test__acc=0.89, robust__acc=0.49),
        run(0.5, "none", 1, test__acc=0.90, robust__acc=0.50),
        run(0.5, "none", 2, status="failed", test__acc=0.10, robust__acc=0.10),
        run(0.0, "salt_pepper:3:0.5", 0, test__acc=0.90, robust__acc=0.60),
        run(0.0, "salt_pepper:3:0.5", 1, test__acc=0.91, robust__acc=0.65),
        run(0.0, "salt_pepper:3:0.5", 2, test__acc=0.93, robust__acc=0.61),
    ]
    return pd.DataFrame(rows)


def test_summary_pairs_by_seed_ignores_failed_runs_and_counts_them(paired_results):
    summary = summarise(paired_results, ["test/acc", "robust/acc"])
    assert list(zip(summary["augment"], summary["ratio"])) == [("none", 0.0), ("none", 0.5), ("salt_pepper:3:0.5", 0.0)]
    cell = summary.iloc[1]
    assert (cell["n"], cell["failed"]) == (2, 1)
    assert cell["test/acc/mean"] == pytest.approx(0.895)  # (0.89 + 0.90) / 2, the failed 0.10 left out
    # per seed: 0.89 - 0.90 = -0.01, 0.90 - 0.92 = -0.02 -> mean -0.015, sd = sqrt(2 * 0.005^2 / 1) = 0.0070711,
    # half-width = t(0.975, 1) * 0.0070711 / sqrt(2) = 12.7062 * 0.005 = 0.063531
    assert cell["diff/test/acc/mean"] == pytest.approx(-0.015)
    assert cell["diff/test/acc/low"] == pytest.approx(-0.015 - T_975_DF1 * 0.005)
    assert cell["diff/test/acc/high"] == pytest.approx(-0.015 + T_975_DF1 * 0.005)
    assert cell["diff/test/acc/n"] == 2
    # unpaired, the means would differ by 0.895 - 0.92 = -0.025: pairing on seeds matters
    assert cell["test/acc/mean"] - summary.iloc[0]["test/acc/mean"] == pytest.approx(-0.025)

    baseline = summary.iloc[0]
    assert baseline["diff/test/acc/mean"] == 0.0 and baseline["diff/test/acc/n"] == 3
    assert math.isnan(baseline["diff/test/acc/low"]) and math.isnan(baseline["diff/test/acc/high"])


def test_augment_effects_are_paired_against_the_reference_arm(paired_results):
    effects = augment_effects(paired_results, metric="robust/acc")
    assert list(effects["augment"]) == ["salt_pepper:3:0.5"]
    effect = effects.iloc[0]
    # per seed: 0.60 - 0.50, 0.65 - 0.52, 0.61 - 0.51 = 0.10, 0.13, 0.10 -> mean 0.11, sd = sqrt(0.0006 / 2) = 0.017321,
    # half-width = 4.302653 * 0.017321 / sqrt(3) = 0.0430265
    assert effect["effect/robust/acc/mean"] == pytest.approx(0.11)
    assert effect["effect/robust/acc/high"] - effect["effect/robust/acc/mean"] == pytest.approx(T_975_DF2 * 0.01)
    assert effect["effect/robust/acc/n"] == 3


def test_summarise_names_a_missing_metric_column(paired_results):
    with pytest.raises(ValueError, match="robust/mce"):
        summarise(paired_results, ["test/acc", "robust/mce"])


def test_markdown_table_shows_mean_half_width_and_seeds(paired_results):
    table = to_markdown(summarise(paired_results, ["test/acc"]), ["test/acc"])
    lines = table.splitlines()
    assert lines[0] == "| augment | synthetic | seeds | test/acc (%) | Δ test/acc vs 0% (points) |"
    # 50%: 89.5 ± 12.706 * 0.00707 / sqrt(2) * 100 = 89.5 ± 6.4; difference -1.5 ± 6.4 points
    assert lines[3] == f"| none | 50% | 2 (1 failed) | 89.5 ± 6.4 (2) | {MINUS}1.5 ± 6.4 (2) |"
    assert lines[2].endswith("| ref |")
    assert "salt_pepper:3:0.5" in lines[4]


# ---------------------------------------------------------------- headline

BASELINE_BY_SEED = [0.90, 0.92, 0.94]


def results_with_drops(drops_by_ratio: dict[float, list[float]], effect_by_seed: list[float] | None = None) -> pd.DataFrame:
    """The real-only cell at BASELINE_BY_SEED, each other ratio lower by the given per-seed drops (fractions)."""
    rows = [run(0.0, "none", seed, test__acc=accuracy, robust__acc=0.5) for seed, accuracy in enumerate(BASELINE_BY_SEED)]
    for ratio, drops in drops_by_ratio.items():
        rows += [run(ratio, "none", seed, test__acc=BASELINE_BY_SEED[seed] - drop, robust__acc=0.5) for seed, drop in enumerate(drops)]
    if effect_by_seed is not None:
        rows += [run(0.0, "salt_pepper:3:0.5", seed, test__acc=BASELINE_BY_SEED[seed], robust__acc=0.5 + effect) for seed, effect in enumerate(effect_by_seed)]
    return pd.DataFrame(rows)


SMALL = [0.002, 0.004, 0.003]  # mean 0.3 points, sd 0.1 -> 95% CI 0.05 to 0.55 points: qualifies at 1 point
MEDIUM = [0.004, 0.006, 0.005]  # mean 0.5, 95% CI 0.25 to 0.75: qualifies
BIG = [0.02, 0.03, 0.025]  # mean 2.5, sd 0.5 -> half-width 4.3027 * 0.5 / sqrt(3) = 1.24: 95% CI 1.26 to 3.74, clearly above 1
LARGER = [0.04, 0.05, 0.045]
STRADDLING = [0.01, 0.02, 0.015]  # mean 1.5, 95% CI 0.26 to 2.74: neither below nor above 1


def test_headline_answers_the_largest_ratio_before_the_first_that_fails():
    summary = summarise(results_with_drops({0.5: SMALL, 0.6: MEDIUM, 0.7: BIG, 0.8: LARGER}), ["test/acc", "robust/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert facts["verdict"] == "up_to" and facts["max_ratio"] == 0.6
    assert [entry["qualifies"] for entry in facts["drops"]] == [True, True, False, False]
    assert facts["drop"]["mean"] == pytest.approx(0.005)
    assert facts["drop"]["high"] == pytest.approx(0.005 + T_975_DF2 * 0.001 / math.sqrt(3))
    assert headline(summary, 0.01) == (
        "Up to 60% synthetic images cost less than 1 point of test accuracy (drop 0.5 points, 95% CI 0.3 to 0.7, 3 seeds); "
        "at 70% the drop is 2.5 points (95% CI 1.3 to 3.7)."
    )


def test_headline_stops_at_the_first_failing_ratio_even_if_a_larger_one_passes():
    summary = summarise(results_with_drops({0.5: SMALL, 0.6: STRADDLING, 0.7: MEDIUM}), ["test/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert facts["max_ratio"] == 0.5
    assert facts["next_drop"]["ratio"] == 0.6
    assert headline(summary, 0.01).startswith("Up to 50% synthetic images cost less than 1 point of test accuracy (drop 0.3 points")


def test_headline_says_when_every_tested_ratio_qualifies():
    summary = summarise(results_with_drops({0.5: SMALL, 0.8: MEDIUM}), ["test/acc"])
    assert headline_facts(summary, 0.01)["max_ratio"] == 0.8
    assert headline(summary, 0.01).startswith("Up to 80% synthetic images (the largest fraction tested) cost less than 1 point")
    # a tighter tolerance moves the answer: the 80% interval reaches 0.75 points
    assert headline_facts(summary, 0.007)["max_ratio"] == 0.5


def test_headline_when_already_the_smallest_ratio_clearly_costs_more():
    summary = summarise(results_with_drops({0.5: BIG, 0.6: LARGER}), ["test/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert (facts["verdict"], facts["max_ratio"]) == ("already_costly", None)
    assert headline(summary, 0.01) == "Already 50% synthetic images cost more than 1 point of test accuracy (drop 2.5 points, 95% CI 1.3 to 3.7, 3 seeds)."


def test_headline_when_the_intervals_are_too_wide():
    summary = summarise(results_with_drops({0.5: [-0.02, 0.03, 0.005], 0.6: BIG}), ["test/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert (facts["verdict"], facts["max_ratio"]) == ("too_uncertain", None)
    sentence = headline(summary, 0.01)
    # mean 0.5 points, sd 2.5 -> half-width 4.3027 * 2.5 / sqrt(3) = 6.2 points
    assert "too wide to say" in sentence and f"95% CI {MINUS}5.7 to 6.7" in sentence and sentence.endswith("run more seeds.")


def test_headline_with_one_seed_asks_for_more_seeds():
    summary = summarise(results_with_drops({0.5: [0.001], 0.6: [0.002]}), ["test/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert (facts["verdict"], facts["max_ratio"]) == ("one_seed", None)
    sentence = headline(summary, 0.01)
    assert "no confidence interval" in sentence and "at least 2 seeds" in sentence


def test_headline_adds_the_robust_accuracy_an_augment_buys():
    summary = summarise(results_with_drops({0.5: SMALL}, effect_by_seed=[0.10, 0.13, 0.10]), ["test/acc", "robust/acc"])
    facts = headline_facts(summary, tolerance=0.01)
    assert [effect["augment"] for effect in facts["augment_effects"]] == ["salt_pepper:3:0.5"]
    assert facts["augment_effects"][0]["mean"] == pytest.approx(0.11)
    # 11.0 ± 4.30 points (see test_augment_effects_are_paired_against_the_reference_arm)
    assert headline(summary, 0.01).endswith(" Training with salt_pepper:3:0.5 changes robust accuracy by +11.0 points (95% CI 6.7 to 15.3, 3 seeds) at 0% synthetic.")


def test_headline_without_a_finished_baseline():
    results = results_with_drops({0.5: SMALL})
    results.loc[results["ratio"] == 0.0, "status"] = "failed"
    facts = headline_facts(summarise(results, ["test/acc"]), tolerance=0.01)
    assert (facts["verdict"], facts["max_ratio"]) == ("no_baseline", None)


# ---------------------------------------------------------------- MLflow metrics


def test_study_metrics_names_group_by_metric_statistic_and_arm(paired_results):
    metrics = study_metrics(summarise(paired_results, ["test/acc", "robust/acc"]))
    assert metrics["study/test/acc/mean/none/r0.5"] == pytest.approx(0.895)
    assert metrics["study/test/acc/low/none/r0"] == pytest.approx(0.92 - T_975_DF2 * 0.02 / math.sqrt(3))
    assert metrics["study/diff/test/acc/mean/none/r0.5"] == pytest.approx(-0.015)
    assert metrics["study/diff/test/acc/high/none/r0.5"] == pytest.approx(-0.015 + T_975_DF1 * 0.005)
    assert metrics["study/n/none/r0.5"] == 2
    # ':' is not allowed in MLflow metric names on Windows; the augment stays one name segment
    assert metrics["study/effect/robust/acc/mean/salt_pepper-3-0.5/r0"] == pytest.approx(0.11)
    assert "study/diff/test/acc/low/none/r0" not in metrics  # NaN (the baseline's own interval) is skipped
    assert not any(key.startswith("study/effect/") and "/none/" in key for key in metrics)
    assert all(not np.isnan(value) for value in metrics.values())
    from mlflow.utils.validation import _validate_metric_name

    for key in metrics:
        _validate_metric_name(key)


def test_study_metric_series_steps_are_synthetic_percent(paired_results):
    series = study_metric_series(summarise(paired_results, ["test/acc"]))
    means = {step: value for key, value, step in series if key == "study_curve/test/acc/mean/none"}
    assert means == {0: pytest.approx(0.92), 50: pytest.approx(0.895)}
