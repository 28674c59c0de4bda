"""What fidelity to the reference corruption code is measured on: fixed crops of the two photos
scikit-learn ships (no download), and the distortion a corruption causes (mean absolute
difference and SSIM against the clean crop)."""
from __future__ import annotations

import numpy as np

# (photo, top, left) of each 224 px crop: sky, roof and trees of china.jpg; petals and leaves of flower.jpg
CROPS = (("china", 0, 0), ("china", 200, 400), ("flower", 100, 100), ("flower", 200, 416))
# for the small tables (32 and 64 px), whose images hold few pixels: CROPS and twelve more
# positions over both photos (each photo is 427 x 640 px), all shrunk to the table's side
SMALL_CROPS = CROPS + tuple((photo, top, left) for photo in ("china", "flower") for top, left in ((0, 208), (0, 416), (203, 0), (203, 208), (100, 300), (100, 416)))


# families whose distortion depends on a few large random draws (frost: which of five photographs,
# where cropped) are measured over this many corrupted copies of each crop
REPEATS = {"frost": 32}
# the same for the small tables' SMALL_CROPS: a 32 or 64 px crop holds few pixels, so every family
# whose draws are few per image (an angle, a field, an affine, a picture) or rare (impulses) is
# averaged over more corrupted copies: each statistic then moves by under about 3% between seeds
SMALL_REPEATS = {"impulse_noise": 16, "glass_blur": 4, "motion_blur": 16, "snow": 16, "frost": 32, "fog": 32, "elastic_transform": 32}


def photo_crops(size: int = 224, crops: tuple = CROPS) -> np.ndarray:
    """uint8 N x size x size x 3: the 224 px `crops`, resized (bilinear) when `size` is smaller."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("china", "flower"), load_sample_images().images))
    images = []
    for name, top, left in crops:
        crop = photos[name][top:top + 224, left:left + 224]
        if size != 224:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
        images.append(crop)
    return np.stack(images)


def _grey(images: np.ndarray) -> np.ndarray:
    images = images.astype(np.float64)
    return images @ np.array([0.299, 0.587, 0.114]) if images.shape[-1] == 3 else images[..., 0]


def ssim(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of grey versions, over the batch."""
    from scipy.ndimage import gaussian_filter

    a, b = _grey(clean), _grey(corrupted)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: gaussian_filter(x, sigma=(0, 1.5, 1.5), truncate=3.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def distortion(clean: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    """{"mad": mean absolute difference in 0..255 units, "ssim": mean SSIM} of a corrupted batch against its clean one."""
    return {"mad": float(np.abs(corrupted.astype(np.float64) - clean.astype(np.float64)).mean()), "ssim": ssim(clean, corrupted)}
