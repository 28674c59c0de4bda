"""Figures a person looks at in the MLflow UI: confusion matrices, heatmaps, ROC curves and image grids.

Each figure is logged as PNG; a confusion matrix also as JSON with the counts,
so the numbers can be read without the picture.
"""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix_figure(matrix: np.ndarray, classes: list[str], title: str):
    """Rows are true classes, columns predictions; colour is the row's share, text the count."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right" if max(map(len, classes)) > 2 else "center")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title}\naccuracy {accuracy:.3f} on {int(matrix.sum())} images")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if max(map(len, classes)) <= 3:  # short labels fit fixed margins; tight_layout measures every text (a third of the cost)
        fig.subplots_adjust(left=0.55 / (size + 1), right=1 - 0.5 / (size + 1), bottom=0.7 / size, top=1 - 0.75 / size)
    else:
        fig.tight_layout()
    return fig


def confusion_matrix_json(matrix: np.ndarray, classes: list[str]) -> str:
    return json.dumps({"classes": list(classes), "rows": "true", "columns": "predicted", "matrix": np.asarray(matrix).astype(int).tolist()}, indent=1)


def image_grid(images: np.ndarray, titles: list[str], title: str, ncols: int = 8):
    """uint8 NHWC (C = 1 or 3) images in a grid, each with its title."""
    count = len(images)
    ncols = max(1, min(ncols, count))
    nrows = max(1, (count + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles):
        if image.ndim == 3 and image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title)
    # fixed margins: tight_layout measures every title's text and costs more than the drawing
    height = 1.8 * nrows + 0.4
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.55 / height, wspace=0.15, hspace=0.45)
    return fig


def montage(images: np.ndarray, columns: int = 8, tile: int = 64, gap: int = 2) -> np.ndarray:
    """uint8 NHWC images (C = 1 or 3) tiled into one uint8 HWC picture, each scaled up to about
    `tile` px by pixel repetition (small images stay sharp). No matplotlib: fast for many images."""
    count, height, width, channels = images.shape
    scale = max(1, tile // max(height, width))
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    cell_h, cell_w = height * scale + gap, width * scale + gap
    canvas = np.full((rows * cell_h + gap, columns * cell_w + gap, channels), 255, np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        big = image.repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[gap + row * cell_h: gap + row * cell_h + big.shape[0], gap + column * cell_w: gap + column * cell_w + big.shape[1]] = big
    return canvas[:, :, 0] if channels == 1 else canvas


def class_rows_figure(rows: list[np.ndarray], classes: list[str], title: str):
    """One montage row per class (uint8 NHWC each), the class name on the left."""
    pictures = [montage(images, columns=len(images)) for images in rows]
    width, tallest = max(picture.shape[1] for picture in pictures), max(picture.shape[0] for picture in pictures)
    row_inches, label_inches = 0.9, 0.9
    fig_width = min(16.0, row_inches * width / tallest + label_inches + 0.1)
    fig, axes = plt.subplots(len(pictures), 1, figsize=(fig_width, row_inches * len(pictures) + 0.6), squeeze=False)
    for ax, picture, name in zip(axes[:, 0], pictures, classes):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest", extent=(0, picture.shape[1], picture.shape[0], 0))
        ax.set_xlim(0, width)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.subplots_adjust(left=label_inches / fig_width, right=0.99, top=1 - 0.45 / (row_inches * len(pictures) + 0.6), bottom=0.02, hspace=0.15)
    return fig


def heatmap_figure(table, title: str, *, xlabel: str, ylabel: str = "", colour_label: str, cmap: str = "RdYlGn", vmin: float = 0, vmax: float = 1):
    """A pandas table as coloured cells, each with its value (2 decimals)."""
    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * values.shape[1] + 3, 0.42 * values.shape[0] + 1.8))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(values.shape[0]), [str(r) for r in table.index])
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colour_label)
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str):
    """ROC curves {name: (false positive rates, true positive rates, AUC)}, with the chance diagonal."""
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.50)")
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, linewidth=2 if len(curves) == 1 else 1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (real called synthetic)")
    ax.set_ylabel("true positive rate (synthetic caught)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def log_figure(fig, artifact_file: str) -> None:
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)
