#!/usr/bin/env bash
# Fill .whl/ with the wheels the GPU machine lacks, for benchmarks/device_check.sh.
#
#     bash benchmarks/device_wheels.sh            # here, from the repo root, with PyPI reachable
#
# The GPU machine (the device tool's nvidia-h200 image: Python 3.12, x86_64, its own torch 2.11
# and torchvision 0.26, no network) already holds numpy, pandas, scipy, scikit-learn, matplotlib,
# opencv, pillow, transformers, huggingface-hub, ... (the list below, from
# /work/.library/device/KINDS.md, read 2026-11-17). This script
#   1. resolves requirements.txt less torch/torchvision for CPython 3.12 manylinux x86_64
#      (`pip install --dry-run --report`: metadata only, nothing installed or downloaded whole);
#   2. walks the dependency graph from our requirements, stopping at every package the image
#      already has (so torch, CUDA libraries and the image's own packages are never fetched);
#   3. downloads exactly those wheels with `pip download --no-deps` into .whl/ (emptied first).
# mlflow is the full package (the sqlite tracking store needs its sqlalchemy/alembic side and
# `mlflow run` / `mlflow ui` need flask); with it and its closure the folder is 51 wheels, 47 MiB (December 2026).
# .whl/ is ignored by git (.gitignore) and travels to the GPU machine with `carry: [".whl"]`;
# with the working tree it must stay under the device tool's 64 MiB.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=.whl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64 linux_x86_64 any)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
for platform in "${PLATFORMS[@]}"; do TARGET+=(--platform "$platform"); done

# what the image already holds (normalised names); never carried
IMAGE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize huggingface-hub
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pyre-extensions
pygments pyparsing pyproject-hooks pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

grep -v -E '^[[:space:]]*(#|$|-r)|^(torch|torchvision)([^a-z0-9_.-]|$)' requirements.txt | sed 's/[[:space:]]*#.*//' > "$WORK/requirements.txt"
echo "resolving $(wc -l < "$WORK/requirements.txt") requirements for CPython 3.12 manylinux x86_64 ..."
"$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$WORK/report.json" --target "$WORK/none" "${TARGET[@]}" -r "$WORK/requirements.txt"

IMAGE_HAS="$IMAGE_HAS" "$PYTHON" - "$WORK/report.json" "$WORK/requirements.txt" > "$WORK/pins.txt" <<'PY'
"""name==version of every package reachable from our requirements without passing through one
the GPU image has; markers evaluated for CPython 3.12 on Linux x86_64."""
import json
import os
import re
import sys

from pip._vendor.packaging.markers import Marker
from pip._vendor.packaging.requirements import Requirement


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_system": "Linux", "sys_platform": "linux",
          "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "", "implementation_version": "3.12.3"}
image_has = set(os.environ["IMAGE_HAS"].split())
resolved = {normal(item["metadata"]["name"]): item["metadata"] for item in json.load(open(sys.argv[1]))["install"]}
roots = [Requirement(line) for line in open(sys.argv[2]) if line.strip()]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": extra}) for extra in (extras or {""}))


carried, queue = {}, [(root, set()) for root in roots]
while queue:
    requirement, parent_extras = queue.pop()
    name = normal(requirement.name)
    if name in image_has or name.startswith("nvidia-") or not applies(requirement, parent_extras):
        continue
    extras = set(requirement.extras)
    if name in carried and extras <= carried[name]:
        continue
    carried[name] = carried.get(name, set()) | extras
    for line in resolved[name].get("requires_dist", []):
        queue.append((Requirement(line), carried[name]))
for name in sorted(carried):
    print(f"{resolved[name]['name']}=={resolved[name]['version']}")
PY

echo "downloading $(wc -l < "$WORK/pins.txt") wheels the image lacks into $OUT/ ..."
rm -rf "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$OUT" -r "$WORK/pins.txt"
ls "$OUT" | sed 's/-py[23].*\|-cp3.*//' | tr '\n' ' '
echo
size=$(du -sm "$OUT" | cut -f1)
echo "$OUT: $(ls "$OUT" | wc -l) wheels, ${size} MiB (the device tool carries 64 MiB with the working tree)"
if [ "$size" -gt 60 ]; then
    echo "warning: $OUT is over 60 MiB; the working tree and the wheels may not fit in one device call" >&2
fi
