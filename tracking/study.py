"""The study's answer on its parent run: statistics over seeds, the headline as the run's
description, study/... metrics for the UI's chart view, figures, tables and report.html.

`results` has one row per cell (ratio, augment, seed) with its status and the
evaluate run's metrics; `steps` one row per step run, for the report's run table.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tracking.report import accuracy_figure, figure_png, looks_figure, robust_figure, write_report
from tracking.runs import TRAINING_VIEW, run_url, runs_table_url, ui_base
from tracking.statistics import (
    headline_facts, headline_from_facts, look_confidence, seed_metrics, sequential_facts, sequential_looks, sequential_outcomes,
    study_metric_series, study_metrics, summarise, to_markdown,
)

SAMPLE_GRIDS = 10  # synthetic sample grids (one per class) shown in the report


def with_robust_means(results: pd.DataFrame, kinds: list[str]) -> pd.DataFrame:
    """Add robust/acc/<kind> (mean over the severities) and robust/acc (mean over the kinds)."""
    results = results.copy()
    for kind in kinds:
        columns = [c for c in results.columns if c.startswith(f"robust/acc/{kind}/")]
        if columns:
            results[f"robust/acc/{kind}"] = results[columns].mean(axis=1)
    per_kind = [f"robust/acc/{kind}" for kind in kinds if f"robust/acc/{kind}" in results]
    if per_kind:
        results["robust/acc"] = results[per_kind].mean(axis=1)
    return results


def study_urls(run, study: str) -> dict[str, str]:
    """The study's pages in the MLflow UI: its parent run, its metrics as charts, and its steps as one flat table."""
    experiment = f"{ui_base()}#/experiments/{run.info.experiment_id}"
    steps = runs_table_url(run.info.experiment_id, f"tags.`synthmix.study` = '{study}'")
    return {"run": run_url(run), "charts": f"{experiment}/runs/{run.info.run_id}/model-metrics?{TRAINING_VIEW}", "table": steps}


def _confusion(rows: pd.DataFrame) -> list:
    """One confusion matrix per cell, summed over its seeds."""
    import numpy as np

    cells = []
    for (augment, ratio), group in rows.groupby(["augment", "ratio"], sort=True):
        total, classes = None, None
        for run_id in group["evaluate_run"]:
            data = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/confusion_matrix/test.json"))
            matrix = np.asarray(data["matrix"])
            total, classes = (matrix if total is None else total + matrix), data["classes"]
        cells.append((f"{ratio:.0%} synthetic · {augment} · {len(group)} seed(s)", total, classes))
    return cells


def _synthesis(synthesis) -> dict | None:
    if synthesis is None:
        return None
    run = MlflowClient().get_run(synthesis.run_id)
    samples = []
    try:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=synthesis.run_id, artifact_path="samples"))
        overview = folder / "all_classes.png"
        samples = [overview.read_bytes()] if overview.exists() else [path.read_bytes() for path in sorted(folder.glob("*.png"))[:SAMPLE_GRIDS]]
    except Exception:
        pass  # a synthesis run made elsewhere may have no sample grids
    return {
        "run_id": synthesis.run_id,
        "generator": run.data.tags.get("synthmix.generator", run.data.params.get("generator", "")),
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith("synth/")},
        "samples": samples,
    }


def _sequential(plan: dict, results: pd.DataFrame, tolerance: float, out: Path) -> dict | None:
    """--seeds auto: the looks (looks.csv, the figure of the intervals narrowing), each target's outcome and what the headline adds; None for fixed seeds."""
    if not plan.get("max_seeds"):
        return None
    most, looks = plan["max_seeds"], pd.DataFrame(plan["looks"], columns=["look", "kind", "augment", "ratio", "seeds", "n", "mean", "low", "high", "state"])
    looks.to_csv(out / "looks.csv", index=False)
    mlflow.log_metrics({"study/looks": float(looks["look"].max()) if len(looks) else 0.0, "study/max_seeds": float(most)})
    confidence, count = look_confidence(most), sequential_looks(most)
    note = (f"--seeds auto: every cell started with 3 seeds; after each round (a look) only the targets whose interval still straddled the "
            f"tolerance ({tolerance * 100:g} points) got one seed more, until every fraction up to the first costly one was decided or a cell had "
            f"{most} seeds (--max-seeds). Each look's two-sided Student-t interval is at {confidence * 100:.4g}% = 1 − 0.05/{count}, over the "
            f"{count} looks the study can take (Bonferroni), so all of a target's intervals hold together with 95% and the one at the look where "
            "it stopped is a 95% interval whatever the stopping did; a false 'below the tolerance' has at most 2.5% chance. Bonferroni is chosen "
            "because it holds whatever the correlation between looks (they share seeds) and needs no table or simulation to check. Every "
            "interval in this report is at that confidence. Raising --max-seeds continues this study, with every look recomputed at the new K.")
    figure = looks_figure(looks, tolerance)
    png = figure_png(figure)
    plt.close(figure)
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "looks.png").write_bytes(png)
    caption = "Each target's interval at every look (x: seeds per cell): seeds are added while it straddles the tolerance (dashed)"
    return {"facts": sequential_facts(results, looks, most), "outcomes": sequential_outcomes(looks, most), "note": note, "figure": png, "caption": caption}


def _seeds_note(plan: dict) -> str:
    if plan.get("max_seeds"):
        return f"seeds: --seeds auto, {len(plan['seeds'])} per cell at first, one more per look where the answer was still open, at most {plan['max_seeds']} (see Sequential decisions)."
    return f"seeds {', '.join(map(str, plan['seeds']))}."


def answer(run, params: dict, results: pd.DataFrame, steps: pd.DataFrame, plan: dict, synthesis, seconds: dict) -> dict:
    """Statistics, headline, metrics, figures and report of a finished set of cells, logged on `run`."""
    results = with_robust_means(results, plan["kinds"])
    candidates = ["test/acc", "test/macro_f1", *[f"robust/acc/{k}" for k in plan["kinds"]], "robust/acc", "robust/mce", "val/acc"]
    metrics = [m for m in candidates if m in results]
    ok = results[results["status"] == "ok"] if "status" in results else results.iloc[0:0]
    cells_ok, cells_failed = len(ok), int((results["status"] != "ok").sum()) if len(results) else 0
    facts = {"cells_ok": cells_ok, "cells_failed": cells_failed}
    client = MlflowClient()
    urls = study_urls(run, plan["study"])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        results.to_csv(out / "results.csv", index=False)
        steps.to_csv(out / "runs.csv", index=False)
        figures, summary = {}, None
        sequential = _sequential(plan, results, params["tolerance"], out)
        if cells_ok:
            summary = summarise(results, metrics, confidence=look_confidence(plan["max_seeds"]) if sequential else 0.95)
            if "arm" in results:  # a cyclegan study: each synthetic fraction is an arm (source, both, translated)
                arms = dict(zip(results["ratio"].astype(float).round(6), results["arm"]))
                summary.insert(2, "arm", summary["ratio"].astype(float).round(6).map(arms))
            facts["answer"] = headline_facts(summary, params["tolerance"]) | ({"sequential": sequential["facts"]} if sequential else {})
            sentence = headline_from_facts(facts["answer"])
            summary.to_csv(out / "summary.csv", index=False)
            (out / "summary.md").write_text(f"{sentence}\n\n{to_markdown(summary, metrics)}\n")
            mlflow.log_metrics(study_metrics(summary) | seed_metrics(results))
            now = int(time.time() * 1000)  # the curves in one batch: a write per point would cost seconds
            client.log_batch(run.info.run_id, metrics=[Metric(key, value, now, step) for key, value, step in study_metric_series(summary)])
            # each figure drawn once: the PNG goes into the report and under figures/
            drawn = {"accuracy": ("Test accuracy against the synthetic share of the training set (95% CI over seeds)", accuracy_figure(summary, tolerance=params["tolerance"]))}
            if plan["kinds"]:
                drawn["robustness"] = ("Robust accuracy per corruption (mean over severities) against the synthetic share", robust_figure(summary, plan["kinds"]))
            (out / "figures").mkdir(exist_ok=True)
            for name, (caption, figure) in drawn.items():
                figures[caption] = figure_png(figure)
                (out / "figures" / f"{name}.png").write_bytes(figures[caption])
                plt.close(figure)
        else:
            sentence = f"No cell of the study finished ({cells_failed} failed), so there is no answer; the runs table says why."
        facts["headline"] = sentence
        client.set_tag(run.info.run_id, "mlflow.note.content", sentence)  # the run's description in the UI
        notes = [
            f"Study {plan['study']}: {params['model']}, {params['epochs']} epoch(s), batch {params['batch_size']}, lr {params['lr']}; "
            f"synthetic fractions {', '.join(f'{r:.0%}' for r in plan['ratios'])}; arms {', '.join(a.replace(',', '+') or 'none' for a in plan['augments'])}; "
            + _seeds_note(plan),
            f"Data {params['data']}: models are chosen on validation data; every number here is on the real test split. "
            f"Robust accuracy: corruptions {', '.join(plan['kinds']) or 'none'} at severities {params['severities']}.",
            f"Study run {run.info.run_id}; its steps in the MLflow UI: {urls['table']}",
            *([f"Registry: {plan['champion']}"] if plan.get("champion") else []),
        ]
        html = write_report(
            out / "report.html", title=f"synthmix study: {plan['study']}", headline=sentence,
            summary=summary if summary is not None else pd.DataFrame(columns=["augment", "ratio", "n"]), metrics=metrics if summary is not None else [],
            figures=figures, confusion=_confusion(ok) if cells_ok else [], synthesis=_synthesis(synthesis), runs=steps, notes=notes,
            sequential=sequential,
        )
        mlflow.log_artifacts(str(out))
    artifact_uri = run.info.artifact_uri.rstrip("/") + "/" + html.name
    facts["report"] = artifact_uri.removeprefix("file://")
    facts["url"] = urls["run"]
    facts["urls"] = urls
    facts["champion"] = plan.get("champion", "")
    return facts
