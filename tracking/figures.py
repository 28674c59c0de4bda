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


PREVIEW_SIDE = 96  # px: class_rows_figure shrinks larger images to this side, so 12 Stable Diffusion images fit a screen


def _preview(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images no larger than PREVIEW_SIDE (Lanczos); smaller ones unchanged (montage enlarges them by whole pixels)."""
    from PIL import Image

    count, height, width, channels = images.shape
    if max(height, width) <= PREVIEW_SIDE:
        return images
    scale = PREVIEW_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [np.asarray(Image.fromarray(image[:, :, 0] if channels == 1 else image).resize(size, Image.Resampling.LANCZOS)) for image in images]
    return np.stack(small).reshape(count, size[1], size[0], channels)


def class_rows_figure(rows: list[np.ndarray], classes: list[str], title: str, dpi: int = 100):
    """One montage row per class (uint8 NHWC each, grey or colour), the class name on the left.

    Laid out in pixels: one montage pixel is one pixel of the PNG saved at `dpi`, so small images are
    enlarged by whole pixels and never resampled unevenly, and the margins are measured from the longest
    class name and the title, so neither is cut off.
    """
    from matplotlib.textpath import TextPath

    def text_px(text: str, points: float) -> float:  # the outline's width, plus 10% for hinting and spacing when drawn
        return 1.1 * TextPath((0, 0), text, size=points).get_extents().width * dpi / 72

    label_pt, title_pt, pad, gap = 10, 11, 8, 6  # font sizes (points); pad and gap between rows (px)
    pictures = [montage(_preview(images), columns=len(images)) for images in rows]
    width = max(picture.shape[1] for picture in pictures)
    label_px = max(text_px(name, label_pt) for name in classes) + 2 * pad
    title_px = 2.2 * title_pt * dpi / 72
    fig_w = max(label_px + width + pad, text_px(title, title_pt) + 2 * pad)
    fig_h = title_px + sum(picture.shape[0] for picture in pictures) + gap * (len(pictures) - 1) + pad
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    top = fig_h - title_px
    for picture, name in zip(pictures, classes):
        height, row_width = picture.shape[:2]
        ax = fig.add_axes((label_px / fig_w, (top - height) / fig_h, row_width / fig_w, height / fig_h))
        if picture.ndim == 2:  # grey as RGB: the exact values, where a grey colormap's 256-step table can shift them by one
            picture = np.repeat(picture[:, :, None], 3, axis=2)
        ax.imshow(picture, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        fig.text((label_px - pad) / fig_w, (top - height / 2) / fig_h, name, ha="right", va="center", fontsize=label_pt)
        top -= height + gap
    fig.text(pad / fig_w, 1 - title_px / 2 / fig_h, title, ha="left", va="center", fontsize=title_pt)
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
