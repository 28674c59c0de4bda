"""Statistics of a study over seeds: intervals per cell, paired differences, the headline.

A study's `results` frame has one row per cell run: `ratio` (synthetic share of
the training set, 0 = real only), `augment` (training-time corruption, "none"
for plain training), `seed`, `status` ("ok" or "failed"), and one float column
per metric (NaN where missing). Failed rows are ignored; if one cell ran the
same seed twice, the runs are averaged so that a seed counts once.

Per cell (augment, ratio) and metric m, `summarise` gives
- `m/mean`, `m/low`, `m/high`, `m/n`: mean and 95% Student-t interval over
  seeds, `mean ± t(0.975, n-1) · sd / sqrt(n)`; with one seed low = high = NaN;
- `diff/m/...`: the paired difference to the real-only cell of the same
  augment (cell minus baseline, per seed, over the seeds both have);
- `effect/m/...`: the paired difference to the reference augment ("none") at
  the same ratio (this arm minus reference, per seed);
- `n` (seeds that finished) and `failed` (runs that failed).
The baseline row's `diff` (and the reference arm's `effect`) is 0 with a NaN
interval.

The headline rule (`headline_facts`, `headline`): for the reference augment, the
accuracy drop at a ratio is baseline minus cell, i.e. `-diff`; its 95% interval
is (-diff/high, -diff/low). A ratio *qualifies* when the upper end of the
drop's interval, -diff/low, is below the tolerance (0.01 = 1 percentage
point). The answer is the largest ratio r such that every tested ratio in
(0, r] qualifies: "up to r". A ratio with one seed has no interval and never
qualifies. When none qualifies the sentence says why, from the smallest ratio:
one seed (no interval: run at least 2, better 3+); the whole interval above
the tolerance (already that ratio costs more); or the interval straddles it
(too wide to say: run more seeds).

Sequential decisions (`--seeds auto`, the functions under "sequential"): a
*target* is what the headline states, ("drop", reference arm, ratio) for every
ratio above real only and ("gain", arm, real only) for each other arm's
robust-accuracy gain. Every cell starts with 3 seeds; after each round (a
look) `look_decisions` places each target's interval against the tolerance
(`sequential_decision`: "below", "above" or "open") and `next_round` gives one
more seed to the targets still open, below --max-seeds N and (a drop) not above
the smallest fraction already shown costly; the study stops when none is left.
A target is looked at once per round at 3, 4, ..., N seeds, so at most
K = N - 2 times, and each look's two-sided interval is at confidence
1 - 0.05/K (Bonferroni). The chance that any of a target's K intervals misses
its true value is then at most 5% whatever the correlation between looks, so
the interval at the look where the study stopped (a data-dependent time) is
still a 95% interval, and a false "below the tolerance" happens in at most
2.5% of studies. `summarise(..., confidence=look_confidence(N))` gives the
report's intervals on the same footing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

REFERENCE_AUGMENT = "none"
MINUS = "\u2212"  # typographic minus, used for every negative number in sentences and tables
CELL_KEYS = ["augment", "ratio"]
SEED_KEYS = ["augment", "ratio", "seed"]

METRIC_LABELS = {
    "test/acc": "test accuracy",
    "test/macro_f1": "test macro-F1",
    "val/acc": "validation accuracy",
    "robust/acc": "robust accuracy",
    "robust/mce": "mean corruption error",
}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values, confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean; NaN values are missing and skipped."""
    values = np.asarray(values, dtype=float).ravel()
    values = values[~np.isnan(values)]
    count = len(values)
    if count == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if count < 2:
        return Interval(mean, math.nan, math.nan, count)
    standard_error = values.std(ddof=1) / math.sqrt(count)
    half_width = float(stats.t.ppf((1 + confidence) / 2, count - 1) * standard_error)
    return Interval(mean, mean - half_width, mean + half_width, count)


# ---------------------------------------------------------------- summary


def summarise(results: pd.DataFrame, metrics: list[str], baseline_ratio: float = 0.0, reference_augment: str = REFERENCE_AUGMENT, confidence: float = 0.95) -> pd.DataFrame:
    """The per-cell table (see the module docstring); every interval at `confidence` (0.95, or a sequential study's per-look confidence)."""
    metrics = list(metrics)
    per_seed, failed_counts = _per_seed(results, metrics)
    baseline_ratio = round(float(baseline_ratio), 6)
    cells = sorted(set(failed_counts.index) | set(per_seed.index.droplevel("seed")), key=lambda cell: _cell_order(cell, reference_augment))

    def seeds_of(augment, ratio) -> pd.DataFrame | None:
        if (augment, ratio) not in per_seed.index.droplevel("seed"):
            return None
        return per_seed.xs((augment, ratio), level=("augment", "ratio"))

    rows = []
    for augment, ratio in cells:
        cell = seeds_of(augment, ratio)
        row = {"augment": augment, "ratio": ratio, "n": 0 if cell is None else len(cell), "failed": int(failed_counts.get((augment, ratio), 0))}
        for metric in metrics:
            interval = mean_ci([] if cell is None else cell[metric], confidence)
            row.update(_columns(metric, interval))
        baseline = seeds_of(augment, baseline_ratio)
        reference = seeds_of(reference_augment, ratio)
        for metric in metrics:
            row.update(_columns(f"diff/{metric}", _paired(cell, baseline, metric, ratio == baseline_ratio, confidence)))
        for metric in metrics:
            row.update(_columns(f"effect/{metric}", _paired(cell, reference, metric, augment == reference_augment, confidence)))
        rows.append(row)

    columns = ["augment", "ratio", "n", "failed"] + [f"{prefix}{metric}/{stat}" for prefix in ("", "diff/", "effect/") for metric in metrics for stat in ("mean", "low", "high", "n")]
    summary = pd.DataFrame(rows, columns=columns)
    summary.attrs.update(baseline_ratio=baseline_ratio, reference_augment=reference_augment, metrics=metrics, confidence=confidence)
    return summary


def augment_effects(results: pd.DataFrame, metric: str = "robust/acc", reference: str = REFERENCE_AUGMENT) -> pd.DataFrame:
    """Per (augment other than reference, ratio): that arm minus the reference arm, paired by seed."""
    summary = summarise(results, [metric], reference_augment=reference)
    columns = ["augment", "ratio"] + [f"effect/{metric}/{stat}" for stat in ("mean", "low", "high", "n")]
    return summary.loc[summary["augment"] != reference, columns].reset_index(drop=True)


def _per_seed(results: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Finished runs averaged per (augment, ratio, seed), and the count of failed runs per cell."""
    missing = [column for column in SEED_KEYS + metrics if column not in results.columns]
    if missing:
        available = [column for column in results.columns if column not in SEED_KEYS + ["status"]]
        raise ValueError(f"results has no column {', '.join(map(repr, missing))}; its metric columns are {available}")
    frame = results[SEED_KEYS + metrics].copy()
    frame["ratio"] = frame["ratio"].astype(float).round(6)  # 0.6 and 0.6000000001 are one cell
    frame["augment"] = frame["augment"].astype(str)
    frame[metrics] = frame[metrics].apply(pd.to_numeric, errors="coerce")
    status = results["status"].astype(str).str.lower() if "status" in results.columns else pd.Series("ok", index=results.index)
    finished = frame[status == "ok"]
    failed_counts = frame[status != "ok"].groupby(CELL_KEYS).size()
    per_seed = finished.groupby(SEED_KEYS)[metrics].mean()
    return per_seed, failed_counts


def _paired(cell: pd.DataFrame | None, other: pd.DataFrame | None, metric: str, same_cell: bool, confidence: float = 0.95) -> Interval:
    if cell is None:
        return Interval(math.nan, math.nan, math.nan, 0)
    if same_cell:
        return Interval(0.0, math.nan, math.nan, int(cell[metric].notna().sum()))
    if other is None:
        return Interval(math.nan, math.nan, math.nan, 0)
    differences = cell[metric] - other[metric]  # aligned on seed; a seed missing on either side gives NaN, skipped
    return mean_ci(differences, confidence)


def _columns(prefix: str, interval: Interval) -> dict:
    return {f"{prefix}/mean": interval.mean, f"{prefix}/low": interval.low, f"{prefix}/high": interval.high, f"{prefix}/n": interval.n}


def _cell_order(cell: tuple[str, float], reference_augment: str):
    augment, ratio = cell
    return (augment != reference_augment, augment, ratio)


def _interval_of(row: pd.Series, prefix: str) -> Interval:
    return Interval(float(row[f"{prefix}/mean"]), float(row[f"{prefix}/low"]), float(row[f"{prefix}/high"]), int(row[f"{prefix}/n"]))


# ---------------------------------------------------------------- headline


def headline_facts(summary: pd.DataFrame, tolerance: float, metric: str = "test/acc", reference_augment: str = REFERENCE_AUGMENT, robust_metric: str = "robust/acc") -> dict:
    """The numbers behind `headline`, in metric units (fractions, not points).

    verdict: "up_to" (max_ratio is the answer), "one_seed", "already_costly",
    "too_uncertain", "no_baseline" or "no_fractions"; `drop` describes the ratio the
    sentence quotes (the answer, or else the smallest tested ratio), `next_drop`
    the first tested ratio above the answer, which did not qualify.
    """
    if f"diff/{metric}/mean" not in summary.columns:
        raise ValueError(f"the summary has no metric {metric!r}; summarise the results with it first")
    baseline_ratio = float(summary.attrs.get("baseline_ratio", 0.0))
    arm = summary[summary["augment"] == reference_augment].sort_values("ratio")
    baseline = arm[np.isclose(arm["ratio"], baseline_ratio)]
    tested = arm[arm["ratio"] > baseline_ratio + 1e-9]

    drops = []
    for _, row in tested.iterrows():
        difference = _interval_of(row, f"diff/{metric}")
        # drop = baseline - cell, so its interval is the difference's, mirrored
        drop = Interval(-difference.mean, -difference.high, -difference.low, difference.n)
        drops.append({"ratio": float(row["ratio"]), "mean": drop.mean, "low": drop.low, "high": drop.high, "n": drop.n, "failed": int(row.get("failed", 0) or 0), "qualifies": bool(drop.high < tolerance)})

    max_ratio, drop, next_drop = None, None, None
    for entry in drops:
        if not entry["qualifies"]:
            next_drop = entry
            break
        max_ratio, drop = entry["ratio"], entry

    if baseline.empty or int(baseline["n"].iloc[0]) == 0:
        verdict = "no_baseline"
    elif not drops:
        verdict = "no_fractions"
    elif max_ratio is not None:
        verdict = "up_to"
    else:
        drop = drops[0]
        if drop["n"] < 2:
            verdict = "one_seed"
        elif drop["low"] > tolerance:
            verdict = "already_costly"
        else:
            verdict = "too_uncertain"
    if verdict in ("no_baseline", "no_fractions"):
        max_ratio, drop, next_drop = None, None, None

    effects = []
    if f"effect/{robust_metric}/mean" in summary.columns:
        at_baseline = summary[(summary["augment"] != reference_augment) & np.isclose(summary["ratio"], baseline_ratio)]
        for _, row in at_baseline.iterrows():
            effect = _interval_of(row, f"effect/{robust_metric}")
            if effect.n > 0:
                effects.append({"augment": row["augment"], "ratio": baseline_ratio, "metric": robust_metric, "mean": effect.mean, "low": effect.low, "high": effect.high, "n": effect.n})

    return {
        "verdict": verdict,
        "max_ratio": max_ratio,
        "largest_tested_ratio": drops[-1]["ratio"] if drops else None,
        "tolerance": tolerance,
        "metric": metric,
        "reference_augment": reference_augment,
        "baseline_ratio": baseline_ratio,
        "drop": drop,
        "next_drop": next_drop,
        "drops": drops,
        "augment_effects": effects,
    }


def headline(summary: pd.DataFrame, tolerance: float, metric: str = "test/acc", reference_augment: str = REFERENCE_AUGMENT, robust_metric: str = "robust/acc") -> str:
    return headline_from_facts(headline_facts(summary, tolerance, metric, reference_augment, robust_metric))


def headline_from_facts(facts: dict) -> str:
    metric_label = METRIC_LABELS.get(facts["metric"], facts["metric"])
    tolerance = _points_phrase(facts["tolerance"])
    drop, verdict = facts["drop"], facts["verdict"]
    if verdict == "no_baseline":
        sentence = f"No real-only ({percent(facts['baseline_ratio'])} synthetic) run finished, so there is no baseline to measure the {metric_label} drop against."
    elif verdict == "no_fractions":
        sentence = "No cell with synthetic images finished (none was asked for, or all failed), so no synthetic fraction can be compared with real-only training; add ratios above 0 or see the failed steps."
    elif verdict == "up_to":
        largest = " (the largest fraction tested)" if facts["max_ratio"] == facts["largest_tested_ratio"] else ""
        sentence = f"Up to {percent(facts['max_ratio'])} synthetic images{largest} cost less than {tolerance} of {metric_label} ({_drop_phrase(drop)})"
        following = facts["next_drop"]
        if following is not None:
            sentence += f"; at {percent(following['ratio'])} {_drop_phrase(following, clause=True)}"
        sentence += "."
    elif verdict == "one_seed" and drop.get("failed") and not drop["n"]:
        sentence = (
            f"At {percent(drop['ratio'])} synthetic no seed finished ({drop['failed']} failed: see the failed steps), so the {metric_label} drop there "
            f"cannot be measured and it cannot be said how much synthetic data stays within {tolerance} of it."
        )
    elif verdict == "one_seed" and drop.get("failed"):
        sentence = (
            f"At {percent(drop['ratio'])} synthetic only {drop['n']} seed finished ({drop['failed']} failed: see the failed steps), so there is no confidence interval "
            f"and it cannot be said how much synthetic data stays within {tolerance} of {metric_label} (the drop is {signed_points(drop['mean'], plus=False)} points)."
        )
    elif verdict == "one_seed":
        sentence = (
            f"With one seed per cell there is no confidence interval, so it cannot be said how much synthetic data stays within {tolerance} of {metric_label} "
            f"(at {percent(drop['ratio'])} the drop is {signed_points(drop['mean'], plus=False)} points); run at least 2 seeds, better 3 or more."
        )
    elif verdict == "already_costly":
        sentence = f"Already {percent(drop['ratio'])} synthetic images cost more than {tolerance} of {metric_label} ({_drop_phrase(drop)})."
    else:
        more = "raise --max-seeds to continue this study" if facts.get("sequential") else "run more seeds"
        sentence = f"No tested synthetic fraction is shown to cost less than {tolerance} of {metric_label}: the confidence intervals are too wide to say (at {percent(drop['ratio'])}: {_drop_phrase(drop)}); {more}."

    clauses = [sentence]
    for effect in facts["augment_effects"]:
        robust_label = METRIC_LABELS.get(effect["metric"], effect["metric"])
        if effect["n"] >= 2:
            detail = f"95% CI {signed_points(effect['low'], plus=False)} to {signed_points(effect['high'], plus=False)}, {effect['n']} seeds"
        else:
            detail = "one seed, no CI"
        clauses.append(f"Training with {effect['augment']} changes {robust_label} by {signed_points(effect['mean'])} points ({detail}) at {percent(effect['ratio'])} synthetic.")
    if facts.get("sequential"):
        clauses.append(_seeds_sentence(facts["sequential"]))
    return " ".join(clauses)


def _drop_phrase(drop: dict, clause: bool = False) -> str:
    """The drop with its interval, as a parenthesis ("drop 0.4 points, 95% CI ...") or as a clause ("the drop is ...")."""
    if drop["n"] == 0:
        return "no run finished" if clause else "no finished runs"
    points = f"{signed_points(drop['mean'], plus=False)} points"
    if drop["n"] < 2 or math.isnan(drop["low"]):
        return f"the drop is {points} from one seed, without a CI" if clause else f"drop {points} from one seed, no CI"
    interval = f"95% CI {signed_points(drop['low'], plus=False)} to {signed_points(drop['high'], plus=False)}"
    return f"the drop is {points} ({interval})" if clause else f"drop {points}, {interval}, {drop['n']} seeds"


# ---------------------------------------------------------------- sequential (--seeds auto)

FIRST_SEEDS = 3  # seeds every cell starts with under --seeds auto
ALPHA = 0.05  # the chance that any interval of a target, over all its looks together, misses its true value
STATES = {  # a target's decision, as the report and headline say it
    ("drop", "below"): "safe: drop below the tolerance",
    ("drop", "above"): "costly: drop above the tolerance",
    ("gain", "above"): "gains more than the tolerance",
    ("gain", "below"): "gains less than the tolerance",
}


def sequential_looks(max_seeds: int) -> int:
    """K: the looks a study with at most `max_seeds` seeds per cell can take, one after each round (at 3, 4, ..., max_seeds seeds)."""
    return max(1, int(max_seeds) - FIRST_SEEDS + 1)


def look_confidence(max_seeds: int, alpha: float = ALPHA) -> float:
    """Each look's two-sided confidence: 1 - alpha / K (Bonferroni over the K possible looks)."""
    return 1 - alpha / sequential_looks(max_seeds)


@dataclass(frozen=True)
class Decision:
    """Where a target's interval lies against the tolerance: "below" (its upper end is below), "above"
    (its lower end is above) or "open" (it straddles the tolerance, or there is no interval yet)."""

    state: str
    interval: Interval


def sequential_decision(values, tolerance: float, max_seeds: int, alpha: float = ALPHA) -> Decision:
    """The decision rule of --seeds auto at one look: the Student-t interval of the per-seed `values` (drops or
    gains, paired by seed) at confidence 1 - alpha/K, placed against `tolerance`."""
    interval = mean_ci(values, look_confidence(max_seeds, alpha))
    if interval.n >= 2 and interval.high < tolerance:
        return Decision("below", interval)
    if interval.n >= 2 and interval.low > tolerance:
        return Decision("above", interval)
    return Decision("open", interval)


def next_round(decisions: dict, seeds: dict, max_seeds: int) -> dict:
    """Seeds per target at the next look: one more for each target still open with fewer than `max_seeds`,
    except a drop above the smallest fraction of its arm already shown costly (the answer stops there).
    {} ends the study. One seed at a time: every seed is a training per open cell, and the study stops at
    the first look that decides; the price is more looks, K = max_seeds - 2, in the Bonferroni split."""
    costly: dict[str, float] = {}
    for (kind, arm, ratio), decision in decisions.items():
        if kind == "drop" and decision.state == "above":
            costly[arm] = min(ratio, costly.get(arm, math.inf))
    return {
        target: seeds[target] + 1 for target, decision in decisions.items()
        if decision.state == "open" and seeds[target] < max_seeds and not (target[0] == "drop" and target[2] > costly.get(target[1], math.inf))
    }


def sequential_targets(arms, ratios, robust: bool, baseline_ratio: float = 0.0, reference: str = REFERENCE_AUGMENT) -> list[tuple]:
    """What --seeds auto decides, as the headline states it: the reference arm's drop at every ratio above real only,
    and (robust accuracy measured) each other arm's robust-accuracy gain at real only."""
    drops = [("drop", reference, round(float(ratio), 6)) for ratio in sorted(ratios) if ratio > baseline_ratio + 1e-9]
    gains = [("gain", arm, round(float(baseline_ratio), 6)) for arm in arms if arm != reference] if robust else []
    return drops + gains


def look_decisions(results: pd.DataFrame, seeds: dict, tolerance: float, max_seeds: int, metric: str = "test/acc",
                   robust_metric: str = "robust/acc", baseline_ratio: float = 0.0) -> dict:
    """Each target's decision from its first seeds[target] seeds (0 .. n-1), paired by seed: a drop is the
    real-only cell minus the cell (on `metric`), a gain the arm minus the reference arm (on `robust_metric`)."""
    per_seed, _ = _per_seed(results, [m for m in (metric, robust_metric) if m in results.columns])
    decisions = {}
    for target, count in seeds.items():
        kind, arm, ratio = target
        if kind == "drop":
            first, second, column = (arm, round(baseline_ratio, 6)), (arm, ratio), metric
        else:
            first, second, column = (arm, ratio), (REFERENCE_AUGMENT, ratio), robust_metric
        values = _seed_values(per_seed, first, column, count) - _seed_values(per_seed, second, column, count)
        decisions[target] = sequential_decision(values, tolerance, max_seeds)
    return decisions


def _seed_values(per_seed: pd.DataFrame, cell: tuple, column: str, count: int) -> pd.Series:
    if column not in per_seed.columns or cell not in per_seed.index.droplevel("seed"):
        return pd.Series(dtype=float)
    values = per_seed.xs(cell, level=("augment", "ratio"))[column]
    return values[values.index < count]


def look_rows(look: int, decisions: dict, seeds: dict) -> list[dict]:
    """One row per target at this look (the report's history of the intervals narrowing)."""
    return [{"look": look, "kind": kind, "augment": arm, "ratio": ratio, "seeds": seeds[(kind, arm, ratio)], "n": d.interval.n,
             "mean": d.interval.mean, "low": d.interval.low, "high": d.interval.high, "state": d.state}
            for (kind, arm, ratio), d in decisions.items()]


def sequential_outcomes(looks: pd.DataFrame, max_seeds: int) -> pd.DataFrame:
    """Per target: the seeds it took, the look that decided it (0: none did), its last interval and why it stopped."""
    rows = []
    for (kind, arm, ratio), history in looks.groupby(["kind", "augment", "ratio"], sort=False):
        last, decided = history.iloc[-1], history[history["state"] != "open"]
        if len(decided):
            outcome = STATES[(kind, last["state"])]
        elif last["seeds"] >= max_seeds:
            outcome = f"open at the maximum of {max_seeds} seeds"
        else:
            outcome = "not needed: above the first fraction shown costly"
        rows.append({"kind": kind, "augment": arm, "ratio": ratio, "seeds": int(last["seeds"]), "n": int(last["n"]),
                     "decided_at": int(decided["look"].iloc[0]) if len(decided) else 0, "mean": last["mean"], "low": last["low"],
                     "high": last["high"], "state": last["state"], "outcome": outcome})
    return pd.DataFrame(rows, columns=["kind", "augment", "ratio", "seeds", "n", "decided_at", "mean", "low", "high", "state", "outcome"])


def seed_counts(results: pd.DataFrame) -> dict[tuple[str, float], int]:
    """Seeds each cell (augment, ratio) was run with, finished or failed."""
    if results.empty:
        return {}
    frame = results.assign(ratio=results["ratio"].astype(float).round(6), augment=results["augment"].astype(str))
    return {cell: int(count) for cell, count in frame.groupby(CELL_KEYS)["seed"].nunique().items()}


def sequential_facts(results: pd.DataFrame, looks: pd.DataFrame, max_seeds: int, reference: str = REFERENCE_AUGMENT) -> dict:
    """What the headline adds under --seeds auto: the seeds per cell and the looks taken of the K possible."""
    counts = seed_counts(results)
    order = sorted(counts, key=lambda cell: _cell_order(cell, reference))
    return {"max_seeds": int(max_seeds), "looks": sequential_looks(max_seeds), "looks_taken": int(looks["look"].max()) if len(looks) else 0,
            "confidence": look_confidence(max_seeds), "seeds": [{"augment": a, "ratio": r, "seeds": counts[(a, r)]} for a, r in order],
            "reference_augment": reference}


def _seeds_sentence(sequential: dict) -> str:
    """'Seeds per cell (...): 0% 6, 50% 4; with salt_pepper:3:0.5: 0% 5, 50% 3.'"""
    arms: dict[str, list[str]] = {}
    for cell in sequential["seeds"]:
        arms.setdefault(cell["augment"], []).append(f"{percent(cell['ratio'])} {cell['seeds']}")
    parts = [", ".join(cells) if arm == sequential["reference_augment"] else f"with {arm}: {', '.join(cells)}" for arm, cells in arms.items()]
    confidence = f"{sequential['confidence'] * 100:.4g}%"
    return (f"Seeds per cell, added only where the answer was still open (at most {sequential['max_seeds']}; each look's interval at {confidence}, "
            f"so the 95% CIs hold over all {sequential['looks']} possible looks, Bonferroni): {'; '.join(parts)}.")


# ---------------------------------------------------------------- formatting


def percent(ratio: float) -> str:
    return f"{ratio * 100:.4g}%"


def signed_points(share: float, plus: bool = True) -> str:
    """A difference of shares in percentage points, one decimal: 0.123 -> '+12.3'."""
    if share is None or math.isnan(share):
        return "n/a"
    text = f"{abs(share) * 100:.1f}"
    if text.strip("0.") == "":
        return text  # no sign on zero
    if share < 0:
        return MINUS + text
    return "+" + text if plus else text


def _points_phrase(tolerance: float) -> str:
    points = tolerance * 100
    return f"{points:.4g} point" + ("" if math.isclose(points, 1) else "s")


def is_share_metric(metric: str) -> bool:
    """Accuracies and F1 scores are shares in [0, 1], shown in percent and differenced in points."""
    parts = metric.split("/")
    return "acc" in parts or any(part.endswith("f1") for part in parts) or metric.endswith("/cas")


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in ("mce", "loss", "fid", "error"))


def format_interval(mean: float, low: float, high: float, n: int, share: bool = False, signed: bool = False) -> str:
    """'mean ± half-width (n)'; shares in percent (differences in points) with one decimal, other metrics with three."""
    if mean is None or math.isnan(mean):
        return "n/a"
    scale, digits = (100, 1) if share else (1, 3)

    def number(value: float) -> str:
        text = f"{abs(value) * scale:.{digits}f}"
        sign = MINUS if value < 0 and text.strip("0.") else ("+" if signed and text.strip("0.") else "")
        return sign + text

    if math.isnan(low) or math.isnan(high):
        return f"{number(mean)} ({n})"
    return f"{number(mean)} ± {abs(high - low) / 2 * scale:.{digits}f} ({n})"


def format_cell(row: pd.Series, prefix: str, metric: str) -> str:
    return format_interval(row[f"{prefix}/mean"], row[f"{prefix}/low"], row[f"{prefix}/high"], int(row[f"{prefix}/n"]), share=is_share_metric(metric), signed=prefix.startswith(("diff/", "effect/")))


def metric_heading(metric: str) -> str:
    return f"{metric} (%)" if is_share_metric(metric) else metric


def difference_heading(metric: str, baseline_ratio: float = 0.0) -> str:
    unit = " (points)" if is_share_metric(metric) else ""
    return f"Δ {metric} vs {percent(baseline_ratio)}{unit}"


def to_markdown(summary: pd.DataFrame, metrics: list[str]) -> str:
    """Cells × metrics as 'mean ± half-width of the 95% CI (seeds)', each metric followed by its paired difference to the real-only cell."""
    baseline_ratio = float(summary.attrs.get("baseline_ratio", 0.0))
    header = ["augment", "synthetic", "seeds"]
    for metric in metrics:
        header += [metric_heading(metric), difference_heading(metric, baseline_ratio)]
    lines = ["| " + " | ".join(_markdown_escape(text) for text in header) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(header) - 2)) + "|"]
    for _, row in summary.iterrows():
        seeds = f"{row['n']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        cells = [row["augment"], percent(row["ratio"]), seeds]
        is_baseline = math.isclose(row["ratio"], baseline_ratio)
        for metric in metrics:
            cells += [format_cell(row, metric, metric), "ref" if is_baseline else format_cell(row, f"diff/{metric}", metric)]
        lines.append("| " + " | ".join(_markdown_escape(str(text)) for text in cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


# ---------------------------------------------------------------- MLflow metrics


def metric_name_part(text: str, keep_slashes: bool = False) -> str:
    """MLflow metric names allow letters, digits, _ - . / and space (':' only off Windows); anything else becomes '-'.

    An augment such as 'salt_pepper:3:0.5' is one name segment, so its slashes go too.
    """
    allowed = r"[^\w.\- /]" if keep_slashes else r"[^\w.\- ]"
    return re.sub(allowed, "-", str(text))


def ratio_key(ratio: float) -> str:
    return f"r{ratio:.6g}"


def study_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Parent-run metrics, one value per (metric, statistic, augment, ratio).

    `study/<metric>/<stat>/<augment>/r<ratio>`, `study/diff/<metric>/...`
    (vs real-only, paired), `study/effect/<metric>/...` (vs the reference
    augment, paired; other augments only), `study/n/<augment>/r<ratio>`; stat is
    mean, low or high. The MLflow chart view makes a section of everything
    before the last '/', so each section is one (metric, stat, augment) with a
    chart per ratio, in ratio order. NaN values are left out.
    """
    metrics = summary.attrs.get("metrics") or _metrics_in(summary)
    reference_augment = summary.attrs.get("reference_augment", REFERENCE_AUGMENT)
    values: dict[str, float] = {}
    for _, row in summary.iterrows():
        where = f"{metric_name_part(row['augment'])}/{ratio_key(row['ratio'])}"
        values[f"study/n/{where}"] = float(row["n"])
        for metric in metrics:
            prefixes = ["", "diff/"] + (["effect/"] if row["augment"] != reference_augment else [])
            for prefix in prefixes:
                for stat in ("mean", "low", "high"):
                    value = row[f"{prefix}{metric}/{stat}"]
                    if not pd.isna(value):
                        values[f"study/{prefix}{metric_name_part(metric, keep_slashes=True)}/{stat}/{where}"] = float(value)
    return values


def seed_metrics(results: pd.DataFrame) -> dict[str, float]:
    """`study/seeds/<augment>/r<ratio>`: the seeds each cell was run with (finished or failed; --seeds auto gives cells different counts)."""
    return {f"study/seeds/{metric_name_part(augment)}/{ratio_key(ratio)}": float(count) for (augment, ratio), count in seed_counts(results).items()}


def study_metric_series(summary: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(key, value, step) with step = synthetic share in percent, so the MLflow chart view draws metric-vs-ratio lines.

    Keys `study_curve/<metric>/<stat>/<augment>` and `study_curve/diff/<metric>/...`:
    a section per (metric, stat), a line chart per augment.
    """
    metrics = summary.attrs.get("metrics") or _metrics_in(summary)
    series = []
    for _, row in summary.iterrows():
        step = int(round(row["ratio"] * 100))
        for metric in metrics:
            for prefix in ("", "diff/"):
                for stat in ("mean", "low", "high"):
                    value = row[f"{prefix}{metric}/{stat}"]
                    if not pd.isna(value):
                        series.append((f"study_curve/{prefix}{metric_name_part(metric, keep_slashes=True)}/{stat}/{metric_name_part(row['augment'])}", float(value), step))
    return series


def _metrics_in(summary: pd.DataFrame) -> list[str]:
    return [column[: -len("/mean")] for column in summary.columns if column.endswith("/mean") and not column.startswith(("diff/", "effect/"))]


def corruption_errors(errors: dict[str, dict[int, float]], clean_error: float, baseline: dict | None) -> dict[str, float]:
    """CE per kind, mCE and relative mCE (Hendrycks & Dietterich 2019).

    errors[kind][severity] is the top-1 error. With a baseline (same structure
    plus its clean error) each kind's summed error is divided by the
    baseline's; without one the unnormalised forms are the mean errors.
    """
    out: dict[str, float] = {}
    ce, relative = [], []
    for kind, by_severity in errors.items():
        severities = sorted(by_severity)
        total = sum(by_severity[s] for s in severities)
        excess = sum(by_severity[s] - clean_error for s in severities)
        if baseline is not None:
            base = baseline["errors"][kind]
            base_total = sum(base[s] for s in severities)
            base_excess = sum(base[s] - baseline["clean_error"] for s in severities)
            ce_kind = total / max(base_total, 1e-12)
            relative_kind = excess / base_excess if abs(base_excess) > 1e-12 else float("nan")
        else:
            ce_kind = total / len(severities)
            relative_kind = excess / len(severities)
        out[f"robust/ce/{kind}"] = ce_kind
        out[f"robust/relative_ce/{kind}"] = relative_kind
        ce.append(ce_kind)
        relative.append(relative_kind)
    if ce:
        out["robust/mce"] = sum(ce) / len(ce)
        finite = [r for r in relative if r == r]
        out["robust/relative_mce"] = sum(finite) / len(finite) if finite else float("nan")
    return out
