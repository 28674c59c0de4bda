"""The study's figures and its one-file HTML report.

The report is opened from the MLflow artifact view (an iframe) and from disk, on
machines that may be offline: every image is embedded as a base64 PNG data URI,
the CSS is inline, and nothing (script, font, stylesheet, link) points
elsewhere. All text is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from tracking.statistics import (  # noqa: E402
    METRIC_LABELS,
    MINUS,
    REFERENCE_AUGMENT,
    difference_heading,
    format_cell,
    higher_is_better,
    is_share_metric,
    metric_heading,
    percent,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFERENCE_COLOUR = "#2b2b2b"
ARM_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"]
ARM_MARKERS = ["s", "^", "D", "v", "P", "X", "<", ">", "*"]
FAILED_STATUSES = {"failed", "error", "killed", "crashed"}

SYNTHESIS_METRIC_HELP = {
    "synth/cas": "classification accuracy score: real-test accuracy of a classifier trained on synthetic images only (higher: more useful images)",
    "synth/fid": "Fréchet distance between features of synthetic and real images (lower: closer to the real ones)",
    "synth/detectability": "score of a real-vs-synthetic detector on these images (0.5: chance, the detector cannot tell them apart)",
}


# ---------------------------------------------------------------- figures


def arm_styles(augments) -> dict[str, dict]:
    """One colour and marker per augment arm, the same in every figure; the reference arm is dark with circles."""
    styles, others = {}, [augment for augment in dict.fromkeys(augments) if augment != REFERENCE_AUGMENT]
    if REFERENCE_AUGMENT in set(augments):
        styles[REFERENCE_AUGMENT] = {"color": REFERENCE_COLOUR, "marker": "o"}
    for index, augment in enumerate(others):
        styles[augment] = {"color": ARM_COLOURS[index % len(ARM_COLOURS)], "marker": ARM_MARKERS[index % len(ARM_MARKERS)]}
    return styles


def _arm_label(augment: str) -> str:
    return "plain training (none)" if augment == REFERENCE_AUGMENT else f"trained with {augment}"


def _draw_arms(ax, summary: pd.DataFrame, metric: str, styles: dict) -> None:
    """One line per augment arm over synthetic share (%), with its 95% CI as a band."""
    scale = 100 if is_share_metric(metric) else 1
    for augment, style in styles.items():
        arm = summary[summary["augment"] == augment].sort_values("ratio")
        arm = arm[arm[f"{metric}/n"] > 0]
        if arm.empty:
            continue
        x = arm["ratio"].to_numpy(float) * 100
        low, high = arm[f"{metric}/low"].to_numpy(float) * scale, arm[f"{metric}/high"].to_numpy(float) * scale
        if scale == 100:  # an interval of a share cannot leave 0..100%, however few the seeds
            low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
        ax.fill_between(x, low, high, color=style["color"], alpha=0.14, linewidth=0)
        ax.plot(x, arm[f"{metric}/mean"].to_numpy(float) * scale, color=style["color"], marker=style["marker"], markersize=6, linewidth=2, label=_arm_label(augment))
    ratios = sorted(summary["ratio"].unique())
    ax.set_xticks([ratio * 100 for ratio in ratios])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
    ax.grid(True, color="#e3e3e3", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _seed_phrase(summary: pd.DataFrame, metric: str) -> str:
    counts = summary.loc[summary[f"{metric}/n"] > 0, f"{metric}/n"]
    if counts.empty:
        return "no finished runs"
    low, high = int(counts.min()), int(counts.max())
    seeds = f"{low} seeds" if low == high else f"{low}–{high} seeds"
    return f"mean of {seeds} per point, band: 95% CI" if high > 1 else "one seed per point, no CI"


def accuracy_figure(summary: pd.DataFrame, metric: str = "test/acc", tolerance: float | None = None) -> Figure:
    """Metric vs synthetic share, a line and CI band per augment arm; with `tolerance`, a dashed line at the real-only mean minus it."""
    label = METRIC_LABELS.get(metric, metric)
    share = is_share_metric(metric)
    styles = arm_styles(summary["augment"])
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    _draw_arms(ax, summary, metric, styles)
    baseline_ratio = float(summary.attrs.get("baseline_ratio", 0.0))
    reference_baseline = summary[(summary["augment"] == REFERENCE_AUGMENT) & np.isclose(summary["ratio"], baseline_ratio)]
    if tolerance is not None and not reference_baseline.empty and not math.isnan(reference_baseline[f"{metric}/mean"].iloc[0]):
        scale = 100 if share else 1
        level = (reference_baseline[f"{metric}/mean"].iloc[0] - tolerance) * scale
        ax.axhline(level, color="#888888", linestyle="--", linewidth=1, zorder=0)
        ax.annotate(f"real-only − {tolerance * scale:g}" + (f" point{'' if math.isclose(tolerance * scale, 1) else 's'}" if share else ""), xy=(1, level), xycoords=("axes fraction", "data"), xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#666666")
    ax.set_xlabel("synthetic images in the training set")
    ax.set_ylabel(f"{label} (%)" if share else label)
    ax.set_title(f"{label[0].upper() + label[1:]} vs share of synthetic training images\n", fontsize=12, loc="left")
    ax.text(0, 1.02, _seed_phrase(summary, metric), transform=ax.transAxes, fontsize=9, color="#555555")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=9, loc="best")
    fig.tight_layout()
    return fig


def robust_figure(summary: pd.DataFrame, corruptions: list[str], include_mean: bool = True) -> Figure:
    """A panel per corruption (accuracy on the corrupted test set, averaged over severities) and one for the mean over corruptions; a line per augment arm."""
    metrics = [corruption if corruption.startswith("robust/") else f"robust/acc/{corruption}" for corruption in corruptions]
    titles = [metric.removeprefix("robust/acc/") for metric in metrics]
    if include_mean and "robust/acc/mean" in summary.columns:
        metrics.append("robust/acc")
        titles.append("mean over corruptions")
    if not metrics:
        raise ValueError("robust_figure needs at least one corruption, e.g. ['salt_pepper']")
    columns = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / columns)
    styles = arm_styles(summary["augment"])
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 0.6, 3.3 * rows + 1.0), sharey=True, squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric, title in zip(axes.flat, metrics, titles):
        if f"{metric}/mean" not in summary.columns or summary[f"{metric}/n"].sum() == 0:
            ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes, color="#888888")
        else:
            _draw_arms(ax, summary, metric, styles)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("synthetic images")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy on corrupted test images (%)", fontsize=9)
    handles, labels = next(((ax.get_legend_handles_labels()) for ax in axes.flat if ax.get_legend_handles_labels()[0]), ([], []))
    fig.suptitle("Robust accuracy vs share of synthetic training images", x=0.01, ha="left", fontsize=12)
    if handles:
        fig.legend(handles, labels, loc="upper right", ncol=min(len(labels), 3), frameon=False, fontsize=9)
    measured = next((metric for metric in metrics if f"{metric}/n" in summary.columns), None)
    if measured:
        fig.text(0.01, 0.01, _seed_phrase(summary, measured) + "; each corruption averaged over its severities", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


DECISION_COLOURS = {"open": "#8a8a8a", "good": "#2e7d32", "bad": "#c62828"}


def _target_title(kind: str, augment: str, ratio: float) -> str:
    return f"drop at {percent(ratio)} synthetic" if kind == "drop" else f"robust gain of {augment}\nat {percent(ratio)} synthetic"


def _decision_colour(kind: str, state: str) -> str:
    if state == "open":
        return DECISION_COLOURS["open"]
    return DECISION_COLOURS["good" if (kind, state) in (("drop", "below"), ("gain", "above")) else "bad"]


def looks_figure(looks: pd.DataFrame, tolerance: float) -> Figure:
    """A panel per target of --seeds auto: its interval (points) at each look against the seeds it had, narrowing while
    seeds are added; the tolerance dashed; grey while open, green once decided safe (a gain: above), red once decided costly."""
    from matplotlib.lines import Line2D

    targets = list(dict.fromkeys(zip(looks["kind"], looks["augment"], looks["ratio"])))
    if not targets:
        raise ValueError("looks_figure needs at least one look of one target")
    columns = min(len(targets), 4)
    rows = math.ceil(len(targets) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.5 * columns + 0.6, 3.1 * rows + 1.2), squeeze=False)
    for ax in axes.flat[len(targets):]:
        ax.set_visible(False)
    for ax, (kind, augment, ratio) in zip(axes.flat, targets):
        history = looks[(looks["kind"] == kind) & (looks["augment"] == augment) & (looks["ratio"] == ratio)].drop_duplicates("seeds")
        for _, point in history.iterrows():  # a decided target gets no more seeds: one point per seed count
            mean, low, high = (float(point[k]) * 100 for k in ("mean", "low", "high"))
            error = [[mean - low], [high - mean]] if not math.isnan(low) else None
            ax.errorbar([point["seeds"]], [mean], yerr=error, fmt="o", color=_decision_colour(kind, point["state"]), capsize=4, linewidth=2, markersize=6)
        ax.axhline(tolerance * 100, color="#444444", linestyle="--", linewidth=1)
        ax.axhline(0, color="#cccccc", linewidth=0.8, zorder=0)
        ax.set_xticks(sorted(history["seeds"].unique()))
        ax.set_xlim(history["seeds"].min() - 0.6, history["seeds"].max() + 0.6)
        later = history.iloc[1:] if len(history) > 1 else history  # the first look's interval can be very wide: scale to the later ones
        ends = pd.concat([later["low"], later["high"]]).dropna().to_numpy(float) * 100
        if len(ends):
            low, high = min(ends.min(), 0.0, tolerance * 100), max(ends.max(), tolerance * 100)
            ax.set_ylim(low - 0.15 * (high - low + 0.5), high + 0.15 * (high - low + 0.5))
        ax.set_title(_target_title(kind, augment, ratio), fontsize=10)
        ax.set_xlabel("seeds per cell (a look each)", fontsize=9)
        ax.grid(True, axis="y", color="#e3e3e3", linewidth=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("points (95% CI over all looks)", fontsize=9)
    handles = [Line2D([], [], color=colour, marker="o", linewidth=2, label=label) for colour, label in (
        (DECISION_COLOURS["open"], "open: straddles the tolerance"), (DECISION_COLOURS["good"], "decided: drop below / gain above"),
        (DECISION_COLOURS["bad"], "decided: drop above / gain below"), ("#444444", f"tolerance ({tolerance * 100:g} point{'' if math.isclose(tolerance * 100, 1) else 's'})"))]
    handles[-1].set_linestyle("--")
    handles[-1].set_marker("")
    fig.suptitle("Intervals over the looks: a seed is added while the answer is open", x=0.01, ha="left", fontsize=12)
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.1 if rows == 1 else 0.06, 1, 0.95))
    return fig


def compact_confusion_figure(matrix: np.ndarray, classes: list[str], label: str) -> Figure:
    """A small confusion matrix for side-by-side comparison: colour is the row's share, counts written when there are few classes."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    count = len(classes)
    size = min(6.0, max(2.4, 0.24 * count + 1.0))  # inches; about 3.4 for 10 classes, shown ~260 px wide
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if count <= 20:
        ax.set_xticks(range(count), classes, fontsize=7, rotation=90 if max(map(len, classes)) > 2 else 0)
        ax.set_yticks(range(count), classes, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if count <= 10:
        for row in range(count):
            for column in range(count):
                if matrix[row, column]:
                    ax.text(column, row, str(int(matrix[row, column])), ha="center", va="center", fontsize=7, color="white" if shares[row, column] > 0.5 else "#222222")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{label}\naccuracy {accuracy * 100:.1f}% of {int(matrix.sum())}", fontsize=9)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    fig.tight_layout()
    return fig


def figure_png(figure: Figure | bytes, dpi: int = 110) -> bytes:
    if isinstance(figure, (bytes, bytearray)):
        if not bytes(figure).startswith(PNG_SIGNATURE):
            raise ValueError("an image for the report is bytes but not a PNG; pass a matplotlib Figure or PNG bytes")
        return bytes(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------- HTML

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d1f23; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 8px 0 16px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d9dce1; }
.headline { font-size: 19px; line-height: 1.45; background: #fff; border-left: 6px solid #2b6cb0; padding: 16px 20px; margin: 0 0 12px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.notes { color: #444; font-size: 14px; }
figure { margin: 14px 0; background: #fff; padding: 10px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 13px; color: #555; margin-top: 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.grid figure { margin: 0; flex: 0 1 265px; }
.samples figure { flex: 0 1 auto; }
.samples img { image-rendering: pixelated; }
.scroll { overflow-x: auto; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid #eceef1; text-align: right; white-space: nowrap; }
th { background: #eef1f5; position: sticky; top: 0; font-weight: 600; white-space: normal; min-width: 4em; vertical-align: bottom; }
td.text, th.text { text-align: left; }
td.reference { color: #999; }
td.better { background: #e6f4ea; }
td.worse { background: #fbe9e7; }
tr.failed td { background: #fdecea; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; font-weight: 600; }
.badge.failed { background: #c62828; color: #fff; }
.badge.ok { background: #e3f1e5; color: #1b5e20; }
td.error { white-space: pre-wrap; text-align: left; color: #8e1b1b; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; min-width: 260px; }
code, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.legend { font-size: 13px; color: #555; margin: 6px 0; }
"""


def _escape(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    encoded = base64.b64encode(png).decode("ascii")
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f'<img{class_attribute} alt="{_escape(alt)}" src="data:image/png;base64,{encoded}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{_escape(caption)}</figcaption></figure>"


def _difference_class(row: pd.Series, prefix: str, metric: str) -> str:
    """'better' or 'worse' when the whole 95% CI of the difference is on one side of zero."""
    low, high = row[f"{prefix}/low"], row[f"{prefix}/high"]
    if pd.isna(low) or pd.isna(high) or (low <= 0 <= high):
        return ""
    above_zero = low > 0
    return "better" if above_zero == higher_is_better(metric) else "worse"


def _cells_table(summary: pd.DataFrame, metrics: list[str], prefix: str, heading) -> str:
    baseline_ratio = float(summary.attrs.get("baseline_ratio", 0.0))
    head = ['<th class="text">augment</th>', "<th>synthetic</th>", "<th>seeds</th>"]
    for metric in metrics:
        head.append(f"<th>{_escape(metric_heading(metric))}</th>")
        if prefix:
            head.append(f"<th>{_escape(heading(metric, baseline_ratio))}</th>")
    body = []
    for _, row in summary.iterrows():
        is_reference = (row["augment"] == summary.attrs.get("reference_augment", REFERENCE_AUGMENT)) if prefix == "effect" else math.isclose(row["ratio"], baseline_ratio)
        if prefix == "effect" and is_reference:
            continue
        seeds = f"{row['n']}" + (f' <span class="badge failed">{row["failed"]} failed</span>' if row["failed"] else "")
        cells = [f'<td class="text">{_escape(row["augment"])}</td>', f"<td>{_escape(percent(row['ratio']))}</td>", f"<td>{seeds}</td>"]
        for metric in metrics:
            cells.append(f'<td title="{_escape(_ci_title(row, metric, metric))}">{_escape(format_cell(row, metric, metric))}</td>')
            if prefix:
                if is_reference:
                    cells.append('<td class="reference">ref</td>')
                else:
                    column = f"{prefix}/{metric}"
                    cells.append(f'<td class="{_difference_class(row, column, metric)}" title="{_escape(_ci_title(row, column, metric))}">{_escape(format_cell(row, column, metric))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _ci_title(row: pd.Series, column: str, metric: str) -> str:
    low, high = row[f"{column}/low"], row[f"{column}/high"]
    if pd.isna(low):
        return "no 95% CI (fewer than 2 seeds)"
    if is_share_metric(metric):
        unit = " points" if column.startswith(("diff/", "effect/")) else "%"
        return f"95% CI {_signed(low * 100, 2)} to {_signed(high * 100, 2)}{unit}"
    return f"95% CI {_signed(low, 4)} to {_signed(high, 4)}"


def _signed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", MINUS)


def _runs_table(runs: pd.DataFrame) -> str:
    if runs is None or runs.empty:
        return "<p>No runs recorded.</p>"
    status_column = next((column for column in runs.columns if str(column).lower() == "status"), None)
    head = "".join(f'<th class="text">{_escape(column)}</th>' for column in runs.columns)
    body = []
    for _, row in runs.iterrows():
        failed = status_column is not None and str(row[status_column]).lower() in FAILED_STATUSES
        cells = []
        for column in runs.columns:
            value = row[column]
            text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            name = str(column).lower()
            if column == status_column:
                badge = "failed" if failed else "ok"
                cells.append(f'<td class="text"><span class="badge {badge}">{"✗ " if failed else ""}{_escape(text)}</span></td>')
            elif name == "error":
                cells.append(f'<td class="error">{_escape(text)}</td>')
            elif "run" in name and "id" in name:
                cells.append(f'<td class="text mono">{_escape(text)}</td>')
            else:
                cells.append(f'<td class="text">{_escape(text)}</td>')
        body.append(f'<tr class="{"failed" if failed else ""}">' + "".join(cells) + "</tr>")
    failures = sum(1 for row in body if row.startswith('<tr class="failed"'))
    summary_line = f"<p>{len(body)} steps, {failures} failed.</p>" if failures else f"<p>{len(body)} steps, all finished.</p>"
    return summary_line + f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _synthesis_section(synthesis: dict | None) -> str:
    if not synthesis:
        return "<p>No synthesis run in this study (real images only, or synthetic images from a given dataset run).</p>"
    parts = []
    facts = [(key, value) for key, value in synthesis.items() if key not in ("metrics", "samples")]
    if facts:
        parts.append("<p>" + "; ".join(f"{_escape(key.replace('_', ' '))}: <code>{_escape(value)}</code>" for key, value in facts) + "</p>")
    metrics = synthesis.get("metrics") or {}
    if metrics:
        rows = []
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
            rows.append(f'<tr><td class="text"><code>{_escape(key)}</code></td><td>{_escape(shown)}</td><td class="text">{_escape(SYNTHESIS_METRIC_HELP.get(key, ""))}</td></tr>')
        parts.append('<div class="scroll"><table><thead><tr><th class="text">metric</th><th>value</th><th class="text">meaning</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
    samples = synthesis.get("samples") or []
    if samples:
        images = "".join(f"<figure>{_img(figure_png(sample), f'synthetic sample {index + 1}', 'samples')}</figure>" for index, sample in enumerate(samples))
        parts.append(f'<div class="grid samples">{images}</div>')
    return "".join(parts)


def _confusion_section(confusion: list) -> str:
    if not confusion:
        return "<p>No confusion matrices.</p>"
    tiles = []
    for label, matrix, classes in confusion:
        figure = compact_confusion_figure(matrix, list(classes), str(label))
        try:
            tiles.append(f"<figure>{_img(figure_png(figure, dpi=100), f'confusion matrix, {label}')}</figure>")
        finally:
            plt.close(figure)
    return '<p class="legend">Rows: true class, columns: predicted; colour: share of the true class; counts summed over seeds.</p>' + f'<div class="grid">{"".join(tiles)}</div>'


def _sequential_section(sequential: dict) -> str:
    """--seeds auto: how the seeds were added, each target's seeds and the look that decided it, and the figure of the looks."""
    texts = ("what", "seeds", "decided at look", "interval at the last look (points)", "decision")
    head = "".join((f'<th class="text">{_escape(text)}</th>' if text in ("what", "decision") else f"<th>{_escape(text)}</th>") for text in texts)
    body = []
    for _, row in sequential["outcomes"].iterrows():
        interval = "n/a" if pd.isna(row["low"]) else f"{_signed(row['mean'] * 100, 2)} ({_signed(row['low'] * 100, 2)} to {_signed(row['high'] * 100, 2)})"
        decided = str(row["decided_at"]) if row["decided_at"] else "—"
        colour = {DECISION_COLOURS["good"]: "better", DECISION_COLOURS["bad"]: "worse"}.get(_decision_colour(row["kind"], row["state"]), "")
        body.append(f'<tr><td class="text">{_escape(_target_title(row["kind"], row["augment"], row["ratio"]).replace(chr(10), " "))}</td><td>{row["seeds"]}</td>'
                    f'<td>{decided}</td><td>{_escape(interval)}</td><td class="text {colour}">{_escape(row["outcome"])}</td></tr>')
    table = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    return f'<p class="legend">{_escape(sequential["note"])}</p>' + table + _figure(sequential["figure"], sequential["caption"])


def _interval_legend(summary: pd.DataFrame) -> str:
    confidence = float(summary.attrs.get("confidence", 0.95))
    if math.isclose(confidence, 0.95):
        return "mean ± half-width of the 95% Student-t interval over seeds (number of seeds)"
    return (f"mean ± half-width of the Student-t interval over seeds (number of seeds), at {confidence * 100:.4g}% per look, so that it holds "
            "with 95% over all the study's looks (Bonferroni; see Sequential decisions)")


def write_report(
    path,
    *,
    title: str,
    headline: str,
    summary: pd.DataFrame,
    metrics: list[str],
    figures: dict,
    confusion: list,
    synthesis: dict | None,
    runs: pd.DataFrame,
    notes: list[str] = (),
    sequential: dict | None = None,
) -> Path:
    """One self-contained HTML file; `figures` maps a caption to a Figure or PNG bytes, shown in that order."""
    sections = [f"<h1>{_escape(title)}</h1>", f'<p class="headline">{_escape(headline)}</p>']
    if notes:
        sections.append('<ul class="notes">' + "".join(f"<li>{_escape(note)}</li>" for note in notes) + "</ul>")
    if figures:
        sections.append("<h2>Accuracy</h2>" + "".join(_figure(figure_png(figure), caption) for caption, figure in figures.items()))
    sections.append(
        f"<h2>Cells</h2><p class=\"legend\">{_escape(_interval_legend(summary))}; "
        "Δ: paired difference to the real-only cell of the same arm, per seed. Green / red: the whole interval is better / worse. Hover a value for its interval.</p>"
        + _cells_table(summary, metrics, "diff", difference_heading)
    )
    reference_augment = summary.attrs.get("reference_augment", REFERENCE_AUGMENT)
    if (summary["augment"] != reference_augment).any():
        sections.append(
            f"<h2>Training-time corruption vs {_escape(reference_augment)}</h2><p class=\"legend\">Each arm minus the {_escape(reference_augment)} arm at the same synthetic share and seed.</p>"
            + _cells_table(summary, metrics, "effect", lambda metric, _: f"Δ {metric} vs {reference_augment}" + (" (points)" if is_share_metric(metric) else ""))
        )
    if sequential:
        sections.append("<h2>Sequential decisions</h2>" + _sequential_section(sequential))
    sections.append("<h2>Confusion matrices</h2>" + _confusion_section(confusion))
    sections.append("<h2>Synthetic images</h2>" + _synthesis_section(synthesis))
    sections.append("<h2>Runs</h2>" + _runs_table(runs))
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{''.join(sections)}</main></body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
