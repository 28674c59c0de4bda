"""Saliency maps drawn over the images they explain, as figures to log.

Every cell is the image (grey or RGB) under its map in a colormap at fixed
opacity, one shared colorbar, and a title per cell ("true 3 / pred 8").
Figures are `matplotlib.figure.Figure` objects made without pyplot: they
render headless through Agg when saved, never change the caller's backend,
and are freed with the object (no `plt.close` needed, none leaks in a loop
over corruptions).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

COLORMAP = "jet"
OVERLAY_ALPHA = 0.45  # enough colour to read the map, enough image to see what it points at
CELL_INCHES = (1.7, 1.9)  # width, height of one image with its title
INCORRECT_COLOUR = "#b2182b"


def saliency_panel(
    images: np.ndarray,
    maps: np.ndarray,
    titles: Sequence[str],
    *,
    suptitle: str | None = None,
    ncols: int = 8,
) -> Figure:
    """Images (uint8 NHW or NHWC, C = 1 or 3) with maps [N, H, W] in [0, 1] over them, `ncols` a row."""
    images, maps = _check(images, maps, len(titles))
    count = len(images)
    ncols = max(1, min(ncols, count))
    nrows = max(1, -(-count // ncols))
    fig, axes = _grid(nrows, ncols)
    for ax, image, saliency, title in zip(axes.flat, images, maps, titles):
        _draw_overlay(ax, image, saliency, title)
    if count == 0:
        _draw_empty(axes.flat[0], "no images")
    _finish(fig, axes, suptitle)
    return fig


def correct_incorrect_panel(
    images: np.ndarray,
    maps: np.ndarray,
    true_labels: Sequence[int],
    pred_labels: Sequence[int],
    class_names: Sequence[str] | None,
    n: int,
    *,
    suptitle: str | None = None,
) -> Figure:
    """Up to `n` correct predictions on the top row, up to `n` incorrect ones below, in input order."""
    true_labels = np.asarray(true_labels).reshape(-1)
    pred_labels = np.asarray(pred_labels).reshape(-1)
    if len(true_labels) != len(pred_labels):
        raise ValueError(f"got {len(true_labels)} true labels but {len(pred_labels)} predictions")
    images, maps = _check(images, maps, len(true_labels))

    def name(label) -> str:
        return str(class_names[int(label)]) if class_names is not None else str(int(label))

    is_correct = true_labels == pred_labels
    rows = {
        "correct": np.flatnonzero(is_correct)[:n],
        "incorrect": np.flatnonzero(~is_correct)[:n],
    }
    ncols = max(1, n)
    fig, axes = _grid(2, ncols)
    for row, (kind, indices) in enumerate(rows.items()):
        colour = "black" if kind == "correct" else INCORRECT_COLOUR
        for col, index in enumerate(indices):
            title = f"true {name(true_labels[index])} / pred {name(pred_labels[index])}"
            _draw_overlay(axes[row, col], images[index], maps[index], title, colour)
        if len(indices) < ncols:
            total = int(is_correct.sum()) if kind == "correct" else int((~is_correct).sum())
            _draw_empty(axes[row, len(indices)], f"no {kind} predictions" if total == 0 else f"no more {kind}\npredictions")
        # a row label left of the first cell; drawn even though the axis frame is off
        axes[row, 0].text(-0.12, 0.5, kind, transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=10, color=colour)
    headline = suptitle or "saliency of correct and incorrect predictions"
    shown = {kind: len(indices) for kind, indices in rows.items()}
    counts = (
        f"showing {shown['correct']} of {int(is_correct.sum())} correct (top) "
        f"and {shown['incorrect']} of {int((~is_correct).sum())} incorrect (bottom) predictions"
    )
    _finish(fig, axes, f"{headline}\n{counts}")
    return fig


def _check(images: np.ndarray, maps: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as NHWC and maps as float [N, H, W], with the counts agreeing."""
    images = np.asarray(images)
    maps = np.asarray(maps, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHW or NHWC with C = 1 or 3, got shape {images.shape}")
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {maps.shape}")
    if not len(images) == len(maps) == count:
        raise ValueError(f"got {len(images)} images, {len(maps)} maps and {count} titles/labels; they must match")
    return images, maps


def _grid(nrows: int, ncols: int):
    width, height = CELL_INCHES
    # + room for the row labels on the left, the colorbar on the right and a two-line suptitle on top;
    # fixed margins in inches, because a layout engine costs more than drawing the panel
    fig_width, fig_height = width * ncols + 1.45, height * nrows + 0.75
    fig = Figure(figsize=(fig_width, fig_height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(left=0.45 / fig_width, right=1 - 1.0 / fig_width, top=1 - 0.75 / fig_height, bottom=0.05 / fig_height, wspace=0.06, hspace=0.22)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _draw_overlay(ax, image: np.ndarray, saliency: np.ndarray, title: str, colour: str = "black") -> None:
    height, width = image.shape[:2]
    top = 255 if image.dtype == np.uint8 else 1.0
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=top, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")  # uint8 in 0..255 or float in [0, 1]
    # the extent stretches a map of another size over the same pixels
    ax.imshow(np.nan_to_num(saliency), cmap=COLORMAP, vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA,
              extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")
    ax.set_title(title, fontsize=8, color=colour)


def _draw_empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="grey")


def _finish(fig: Figure, axes: np.ndarray, suptitle: str | None) -> None:
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=COLORMAP)
    fig_width, fig_height = fig.get_size_inches()
    top = 1 - 0.75 / fig_height
    colorbar_axes = fig.add_axes((1 - 0.8 / fig_width, 0.1 * top, 0.15 / fig_width, 0.8 * top))
    fig.colorbar(mappable, cax=colorbar_axes, label="saliency (1 = the image's maximum)")
    if suptitle:
        fig.suptitle(suptitle)
