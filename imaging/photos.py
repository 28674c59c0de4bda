"""Colour photo data that needs no download: class folders of patches cut from
the photos that ship inside scikit-image and scikit-learn.

    python -m imaging.photos ./photos64 --size 64 --per-class 200
    python -m imaging.photos ./photos128 --size 128 --classes cat,coffee,rocket

Each class is one photo; each image a random square crop of it (a side of
`crop` of the photo's shorter side, anywhere in it, mirrored half the time),
resized to `size` px. Classes differ in colour, texture and shape, as in a
small real photo folder; the tests and `benchmarks/synthesis.py` use these
folders as colour data for the generators.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_CLASSES = ("cat", "coffee", "flower")


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str):
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")

    return load


# class name -> loader of an RGB uint8 photo bundled with an installed package
PHOTOS = {
    "cat": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("motorcycle_left"),
    "flower": _sklearn("flower"),
    "temple": _sklearn("china"),
}


def photo(name: str) -> np.ndarray:
    """The bundled photo behind class `name`, RGB uint8 HWC."""
    if name not in PHOTOS:
        raise ValueError(f"no bundled photo {name!r}; choose from {', '.join(PHOTOS)}")
    image = np.asarray(PHOTOS[name]())
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]


def patches(name: str, count: int, size: int, *, seed: int = 0, crop: tuple[float, float] = (0.3, 0.6)) -> np.ndarray:
    """`count` random square crops of photo `name` resized to `size`: uint8 [count, size, size, 3]."""
    from PIL import Image

    picture = photo(name)
    height, width = picture.shape[:2]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        side = int(rng.uniform(*crop) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        piece = Image.fromarray(picture[top : top + side, left : left + side]).resize((size, size), Image.Resampling.LANCZOS)
        array = np.asarray(piece)
        out[index] = array[:, ::-1] if rng.random() < 0.5 else array
    return out


def write_photo_folder(root: str | Path, *, classes=DEFAULT_CLASSES, size: int = 64, per_class: int = 200, seed: int = 0) -> Path:
    """`root/<class>/<index>.png`, `per_class` patches of each class's photo; returns `root`."""
    from PIL import Image

    root = Path(root)
    for offset, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index, array in enumerate(patches(name, per_class, size, seed=seed * 1000 + offset)):
            Image.fromarray(array).save(folder / f"{index:04d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m imaging.photos", description="Write a class folder of colour photo patches (no download).")
    parser.add_argument("root", help="folder to write <class>/<index>.png into")
    parser.add_argument("--size", type=int, default=64, help="side of each image in px (default 64)")
    parser.add_argument("--per-class", type=int, default=200, help="images per class (default 200)")
    parser.add_argument("--classes", default=",".join(DEFAULT_CLASSES), help=f"comma-separated classes, from: {', '.join(PHOTOS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops (another seed gives other patches)")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in PHOTOS]
    if unknown or len(classes) < 2:
        parser.error(f"--classes needs two or more of {', '.join(PHOTOS)}; got {args.classes!r}")
    if args.size < 8 or args.per_class < 1:
        parser.error("--size must be at least 8 and --per-class at least 1")
    root = write_photo_folder(args.root, classes=classes, size=args.size, per_class=args.per_class, seed=args.seed)
    print(f"wrote {len(classes)} classes x {args.per_class} images of {args.size} px to {root}")


if __name__ == "__main__":
    main()
