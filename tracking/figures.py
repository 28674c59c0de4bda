"""Figures a person looks at in the MLflow UI: confusion matrices and image grids.

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
    fig.tight_layout()
    return fig


def log_figure(fig, artifact_file: str) -> None:
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)
