"""Record the reference corruptions' distortion, once, for tests/test_fidelity.py; print ours / reference.

    .venv/bin/pip install --target /tmp/icdeps --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile
    PYTHONPATH=/tmp/icdeps .venv/bin/python benchmarks/fidelity_reference.py                      # all three tables
    PYTHONPATH=/tmp/icdeps .venv/bin/python benchmarks/fidelity_reference.py --tables cifar tiny  # the small ones only
    .venv/bin/python benchmarks/fidelity_reference.py --report    # the ratio table, from the recorded files

imagenet (224 px): for every ImageNet-C family both implementations share and every severity,
`imagecorruptions` (Michaelis et al., the re-implementation most papers use for ImageNet-C; 224 px
parameters) corrupts the 4 fixed 224 px photo crops of imaging/fidelity.py (from scikit-learn's
sample images), seeded, and the mean absolute difference and SSIM to the clean crops (frost: over
32 corrupted copies of each, for its random choice of photograph) are written to
tests/data/corruption_reference.json.

cifar (32 px) and tiny (64 px): the same statistics on the 16 SMALL_CROPS shrunk to the table's
side, each repeated SMALL_REPEATS[kind] times, corrupted one image at a time by
benchmarks/small_table_reference.py, a plain re-statement of the published generating scripts
(make_cifar_c.py, make_tinyimagenet_c.py) with imagecorruptions' numpy motion blur standing in for
ImageMagick's; written to tests/data/corruption_reference_small.json.

Every reference image is seeded with numpy.random.seed(1000 * severity + its index in the batch).
imagecorruptions and scikit-image are not dependencies of synthmix; the test reads only the files.
--report needs neither: it runs ours (`corrupt(clean, kind, severity, seed=severity, table=...)`,
as the test does) on the same clean images and prints ours / reference for every cell.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
OUT = REPO / "tests" / "data" / "corruption_reference.json"
OUT_SMALL = REPO / "tests" / "data" / "corruption_reference_small.json"
INSTALL = ".venv/bin/pip install --target /tmp/icdeps --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile"
COMMAND = f"{INSTALL} && PYTHONPATH=/tmp/icdeps .venv/bin/python benchmarks/fidelity_reference.py"
SMALL_SIDES = {"cifar": 32, "tiny": 64}


def _stats(clean: np.ndarray, corrupted: list[np.ndarray]) -> dict[str, float]:
    from imaging.fidelity import distortion

    return {k: round(v, 5) for k, v in distortion(clean, np.stack(corrupted)).items()}


def record_imagenet() -> None:
    from corruptions import load_imagecorruptions  # benchmarks/corruptions.py: the package, shimmed for today's numpy and scipy

    from imaging.corruptions import IMAGENET_C_KINDS
    from imaging.fidelity import CROPS, REPEATS, photo_crops

    their_corrupt, missing = load_imagecorruptions()
    if their_corrupt is None:
        raise SystemExit(f"imagecorruptions is not importable ({missing}); install it as this script's docstring says")
    import imagecorruptions

    crops = photo_crops(224)
    stats = {}
    for kind in IMAGENET_C_KINDS:
        stats[kind] = {}
        clean = np.repeat(crops, REPEATS.get(kind, 1), axis=0)
        for severity in range(1, 6):
            corrupted = []
            for index, crop in enumerate(clean):
                np.random.seed(1000 * severity + index)  # the reference draws from numpy's global generator
                corrupted.append(np.uint8(np.clip(their_corrupt(crop, corruption_name=kind, severity=severity), 0, 255)))
            stats[kind][str(severity)] = _stats(clean, corrupted)
            print(f"imagenet {kind:18s} {severity}  mad {stats[kind][str(severity)]['mad']:8.3f}  ssim {stats[kind][str(severity)]['ssim']:.4f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "made_by": COMMAND, "reference": f"imagecorruptions {getattr(imagecorruptions, '__version__', '1.1.2')}, ImageNet-C (224 px) parameters",
        "crops": [list(c) for c in CROPS], "stats": stats,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


def record_small(tables: list[str], command: str) -> None:
    from corruptions import load_imagecorruptions

    from imaging.corruptions import IMAGENET_C_KINDS
    from imaging.fidelity import SMALL_CROPS, SMALL_REPEATS, photo_crops

    their_corrupt, missing = load_imagecorruptions()  # only its motion blur is used, in place of ImageMagick's
    if their_corrupt is None:
        raise SystemExit(f"imagecorruptions is not importable ({missing}); install it as this script's docstring says")
    import imagecorruptions
    import skimage

    import small_table_reference as reference

    recorded = json.loads(OUT_SMALL.read_text())["tables"] if OUT_SMALL.exists() else {}
    for table in tables:
        side = SMALL_SIDES[table]
        crops = photo_crops(side, SMALL_CROPS)
        stats = {}
        for kind in IMAGENET_C_KINDS:
            stats[kind] = {}
            clean = np.repeat(crops, SMALL_REPEATS.get(kind, 1), axis=0)
            for severity in range(1, 6):
                corrupted = []
                for index, image in enumerate(clean):
                    np.random.seed(1000 * severity + index)
                    corrupted.append(reference.corrupt_one(image, kind, severity, table))
                stats[kind][str(severity)] = _stats(clean, corrupted)
                print(f"{table:5s} {kind:18s} {severity}  mad {stats[kind][str(severity)]['mad']:8.3f}  ssim {stats[kind][str(severity)]['ssim']:.4f}", flush=True)
        recorded[table] = {"size": side, "stats": stats}
    OUT_SMALL.parent.mkdir(parents=True, exist_ok=True)
    OUT_SMALL.write_text(json.dumps({
        "made_by": command,
        "reference": (
            "the published generating scripts' formulas (github.com/hendrycks/robustness, ImageNet-C/create_c/"
            "make_cifar_c.py for cifar, make_tinyimagenet_c.py for tiny), restated one image at a time by "
            "benchmarks/small_table_reference.py with numpy's global generator, scikit-image "
            f"{skimage.__version__}, scipy, OpenCV and PIL, stored as the scripts store them (uint8, truncated). "
            "Substitution: the scripts motion-blur (motion_blur, and snow's streaks) with ImageMagick through Wand, "
            f"which is not available; imagecorruptions {getattr(imagecorruptions, '__version__', '1.1.2')}'s numpy port "
            "of that motion blur (_motion_blur) stands in, on 8-bit images in and out. Left out: Tiny-ImageNet-C's "
            "files were also saved as JPEG quality 85 after corruption (storage, not the corruption)."
        ),
        "crops": [list(c) for c in SMALL_CROPS], "repeats": dict(SMALL_REPEATS),
        "seeds": "numpy.random.seed(1000 * severity + index of the image in the repeated batch)",
        "tables": {table: recorded[table] for table in SMALL_SIDES if table in recorded},
    }, indent=1) + "\n")
    print(f"wrote {OUT_SMALL}")


def report() -> str:
    """Markdown: ours / reference of mad and SSIM, per table, family and severity."""
    from imaging.corruptions import IMAGENET_C_KINDS, corrupt
    from imaging.fidelity import CROPS, REPEATS, SMALL_CROPS, SMALL_REPEATS, distortion, photo_crops

    sources = []
    if OUT_SMALL.exists():
        small = json.loads(OUT_SMALL.read_text())
        for table, entry in small["tables"].items():
            sources.append((table, entry["size"], SMALL_CROPS, SMALL_REPEATS, entry["stats"], small["made_by"]))
    if OUT.exists():
        large = json.loads(OUT.read_text())
        sources.append(("imagenet", 224, CROPS, REPEATS, large["stats"], large["made_by"]))
    lines = ["Fidelity of imaging.corruptions to the reference: ours / reference of the mean absolute difference "
             "(mad) and SSIM to the clean images, per severity 1..5; 1.00 is equal. Made by "
             "`.venv/bin/python benchmarks/fidelity_reference.py --report`; held within +-15% by tests/test_fidelity.py."]
    for table, side, crops, repeats, stats, made_by in sources:
        base = photo_crops(side, crops)
        lines += ["", f"### {table} ({side} px): {len(crops)} crops; reference made by `{made_by}`", "",
                  "| family | mad 1 | 2 | 3 | 4 | 5 | ssim 1 | 2 | 3 | 4 | 5 |", "|---|" + "---:|" * 10]
        for kind in IMAGENET_C_KINDS:
            clean = np.repeat(base, repeats.get(kind, 1), axis=0)
            ratios = {"mad": [], "ssim": []}
            for severity in range(1, 6):
                ours = distortion(clean, corrupt(clean, kind, severity, seed=severity, table=table))
                for statistic in ratios:
                    ratios[statistic].append(ours[statistic] / stats[kind][str(severity)][statistic])
            cells = [f"{r:.2f}" for r in ratios["mad"] + ratios["ssim"]]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=("cifar", "tiny", "imagenet"), default=["cifar", "tiny", "imagenet"],
                        help="which references to record (default: all three; imagenet writes corruption_reference.json, cifar and tiny corruption_reference_small.json)")
    parser.add_argument("--report", action="store_true", help="print ours / reference for every recorded cell instead of recording")
    args = parser.parse_args()
    if args.report:
        print(report(), end="")
        return
    small = [table for table in args.tables if table in SMALL_SIDES]
    if small:
        tables = "" if set(args.tables) == {"cifar", "tiny", "imagenet"} else " --tables " + " ".join(args.tables)
        record_small(small, f"{COMMAND}{tables}")
    if "imagenet" in args.tables:
        record_imagenet()


if __name__ == "__main__":
    main()
