"""Record the reference corruptions' distortion, once, for tests/test_fidelity.py.

    .venv/bin/pip install --target /tmp/icdeps --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile
    PYTHONPATH=/tmp/icdeps .venv/bin/python benchmarks/fidelity_reference.py

For every ImageNet-C family both implementations share and every severity,
`imagecorruptions` (Michaelis et al., the re-implementation most papers use
for ImageNet-C; 224 px parameters) corrupts the 4 fixed 224 px photo crops of
imaging/fidelity.py (from scikit-learn's sample images), seeded, and the mean
absolute difference and SSIM to the clean crops (frost: over 32 corrupted copies
of each, for its random choice of photograph) are written to
tests/data/corruption_reference.json. imagecorruptions is not a dependency of
synthmix; the test reads only the file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
OUT = REPO / "tests" / "data" / "corruption_reference.json"
COMMAND = ".venv/bin/pip install --target /tmp/icdeps --no-deps imagecorruptions scikit-image lazy_loader imageio tifffile && PYTHONPATH=/tmp/icdeps .venv/bin/python benchmarks/fidelity_reference.py"


def main() -> None:
    from corruptions import load_imagecorruptions  # benchmarks/corruptions.py: the package, shimmed for today's numpy and scipy

    from imaging.corruptions import IMAGENET_C_KINDS
    from imaging.fidelity import CROPS, REPEATS, distortion, photo_crops

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
            stats[kind][str(severity)] = {k: round(v, 5) for k, v in distortion(clean, np.stack(corrupted)).items()}
            print(f"{kind:18s} {severity}  mad {stats[kind][str(severity)]['mad']:8.3f}  ssim {stats[kind][str(severity)]['ssim']:.4f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "made_by": COMMAND, "reference": f"imagecorruptions {getattr(imagecorruptions, '__version__', '1.1.2')}, ImageNet-C (224 px) parameters",
        "crops": [list(c) for c in CROPS], "stats": stats,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
