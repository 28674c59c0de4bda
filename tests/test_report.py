"""The study report is one offline HTML file with every number, figure and failed step in it."""
from __future__ import annotations

import base64
import html
import io
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tracking.report import accuracy_figure, robust_figure, write_report
from tracking.statistics import MINUS, format_cell, headline, summarise

CORRUPTIONS = ["salt_pepper", "gradient_noise", "blend"]
METRICS = ["test/acc", "robust/acc", *[f"robust/acc/{kind}" for kind in CORRUPTIONS], "robust/mce"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def study_results(augments=("none", "salt_pepper:3:0.5")) -> pd.DataFrame:
    rows = []
    for augment_index, augment in enumerate(augments):
        for ratio in (0.0, 0.5, 0.8):
            for seed, test_accuracy in enumerate((0.90, 0.92)):
                robust = {f"robust/acc/{kind}": 0.5 + 0.1 * augment_index - 0.1 * ratio + 0.01 * seed + 0.02 * position for position, kind in enumerate(CORRUPTIONS)}
                rows.append({"ratio": ratio, "augment": augment, "seed": seed, "status": "ok", "test/acc": test_accuracy - 0.05 * ratio, **robust, "robust/acc": float(np.mean(list(robust.values()))), "robust/mce": 1.0 + 0.1 * ratio + 0.01 * seed})
    rows.append({"ratio": 0.8, "augment": "none", "seed": 2, "status": "failed"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return summarise(study_results(), METRICS)


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=40)
    plt.close(figure)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def report(summary, tmp_path_factory):
    runs = pd.DataFrame(
        [
            {"ratio": 0.0, "augment": "none", "seed": 0, "stage": "train", "run_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "status": "ok", "error": ""},
            {"ratio": 0.8, "augment": "none", "seed": 2, "stage": "train", "run_id": "deadbeefdeadbeefdeadbeefdeadbeef", "status": "failed", "error": "CUDA out of memory <script>alert(1)</script>"},
        ]
    )
    classes = ["0", "1", "2"]
    confusion = [(f"{augment} · {ratio:.0%}", np.array([[9, 1, 0], [0, 8, 2], [1, 0, 9]]), classes) for augment in ("none", "salt_pepper:3:0.5") for ratio in (0.0, 0.5, 0.8)]
    sample_grid = png_bytes(plt.figure(figsize=(2, 2)))
    text = headline(summary, tolerance=0.01)
    path = write_report(
        tmp_path_factory.mktemp("report") / "study.html",
        title="Study <mnist5k> & resnet18",
        headline=text,
        summary=summary,
        metrics=METRICS,
        figures={"accuracy": accuracy_figure(summary, tolerance=0.01), "robust accuracy": png_bytes(robust_figure(summary, CORRUPTIONS))},
        confusion=confusion,
        synthesis={"run_id": "5a5a5a5a", "generator": "vae", "metrics": {"synth/cas": 0.812, "synth/fid": 23.4, "synth/detectability": 0.62}, "samples": [sample_grid]},
        runs=runs,
        notes=["1 of 13 runs failed"],
    )
    return {"html": path.read_text(encoding="utf-8"), "headline": text}


def test_report_references_nothing_outside_itself(report):
    document = report["html"]
    for forbidden in ("http://", "https://", "<script", "@import", "url(", "<link"):
        assert forbidden not in document.lower(), forbidden
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*//""", document)
    # the error text of the failed step is escaped, not executed
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document


def test_every_image_is_an_embedded_png(report):
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", report["html"])
    # 2 figures + 6 confusion matrices + 1 sample grid
    assert len(sources) == len(re.findall(r"<img\b", report["html"])) == 9
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)


def test_report_shows_the_headline_and_every_cells_numbers(report, summary):
    document = report["html"]
    assert f'<p class="headline">{html.escape(report["headline"])}</p>' in document
    assert "Study &lt;mnist5k&gt; &amp; resnet18" in document
    # hand-computed: the 0% cells' test accuracy is the mean of 0.90 and 0.92, ± 12.706 * 0.01414 / sqrt(2) = 12.7 points
    assert "91.0 ± 12.7 (2)" in document
    # the 80% cell is 0.04 lower on every seed: the paired difference is exactly -4.0 points with a zero-width interval
    assert f"{MINUS}4.0 ± 0.0 (2)" in document
    for _, row in summary.iterrows():
        for metric in METRICS:
            assert html.escape(format_cell(row, metric, metric)) in document
            if row["ratio"] > 0:
                assert html.escape(format_cell(row, f"diff/{metric}", metric)) in document
    for value in ("0.812", "23.4", "0.62", "vae", "5a5a5a5a"):
        assert value in document


def test_report_sections_come_in_reading_order(report):
    document = report["html"]
    order = ['class="headline"', 'alt="accuracy"', 'alt="robust accuracy"', "<h2>Cells</h2>", "<h2>Confusion matrices</h2>", "<h2>Synthetic images</h2>", "<h2>Runs</h2>"]
    positions = [document.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_failed_step_is_marked_with_its_error(report):
    document = report["html"]
    failed_rows = re.findall(r'<tr class="failed">(.*?)</tr>', document)
    assert len(failed_rows) == 1
    assert "deadbeefdeadbeefdeadbeefdeadbeef" in failed_rows[0] and "CUDA out of memory" in failed_rows[0]
    assert "✗ failed" in failed_rows[0]
    assert "0f1e2d3c4b5a69788796a5b4c3d2e1f0" not in failed_rows[0]
    assert '<span class="badge failed">1 failed</span>' in document  # in the cells table, at none · 80%


def labelled_lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_accuracy_figure_draws_one_line_per_augment_at_the_means():
    summary = summarise(study_results(("none", "salt_pepper:3:0.5", "blend:2:0.3")), ["test/acc"])
    figure = accuracy_figure(summary)
    ax = figure.axes[0]
    lines = labelled_lines(ax)
    # the reference arm first, the others in name order (as in the summary), so colours stay put between studies
    assert [line.get_label() for line in lines] == ["plain training (none)", "trained with blend:2:0.3", "trained with salt_pepper:3:0.5"]
    assert len({line.get_color() for line in lines}) == 3
    assert list(lines[0].get_xdata()) == [0, 50, 80]  # synthetic share in percent
    assert np.allclose(lines[0].get_ydata(), [91.0, 88.5, 87.0])  # mean test accuracy in percent
    assert len(ax.collections) == 3  # a CI band per arm
    assert "synthetic" in ax.get_xlabel() and "%" in ax.get_ylabel()
    plt.close(figure)


def test_robust_figure_has_a_panel_per_corruption_and_the_mean(summary):
    figure = robust_figure(summary, CORRUPTIONS)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [*CORRUPTIONS, "mean over corruptions"]
    for ax in panels:
        assert len(labelled_lines(ax)) == 2
    # salt_pepper, plain training, 0% synthetic: mean over seeds of 0.50 and 0.51
    assert labelled_lines(panels[0])[0].get_ydata()[0] == pytest.approx(50.5)
    plt.close(figure)
