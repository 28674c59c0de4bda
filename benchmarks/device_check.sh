#!/usr/bin/env bash
# The whole GPU check in under 8 minutes, on a machine with an NVIDIA GPU:
#
#     bash benchmarks/device_check.sh                      # from the repo root
#
# Through the device tool: run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540),
# after `bash benchmarks/device_wheels.sh` here has filled .whl/ with the wheels that machine lacks
# (its image has torch 2.11 / torchvision 0.26 and no network; mlflow, optuna, diffusers, captum,
# mlxtend, ... travel as wheels and are installed into /tmp/site).
#
# Steps, each under `timeout` and all inside one deadline (CHECK_SECONDS, default 430 s from the
# start, wheel install included, so that the script ends within 8 minutes):
#   tests      the CUDA tests: tests/test_cuda.py and every other file with tests marked `cuda`
#   synth-64   benchmarks/synthesis.py on colour photo patches (python -m imaging.photos) at 64 px
#   synth-128  the same at 128 px
#   study      the default study of `make demo` (python -m pipelines main, its defaults, --device cuda)
# Then a table: step, seconds, pass/fail, key figure. Logs go to $OUT (the device tool brings them
# back) or to a temporary folder. Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
START=$SECONDS
DEADLINE=$((START + ${CHECK_SECONDS:-430}))
LOGS=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 SYNTHMIX_OFFLINE=1 HF_HUB_OFFLINE=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export SYNTHMIX_CACHE="$WORK/cache" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" TORCH_HOME="$WORK/torch"

WHEELS=${WHEELS:-.whl}  # the carried wheels (benchmarks/device_wheels.sh); WHEELS=none where everything is installed
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    echo "== installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY' 2>&1 | tee "$LOGS/versions.txt"
import platform
import torch, torchvision
from importlib.metadata import version
print(f"python {platform.python_version()}  torch {torch.__version__}  torchvision {torchvision.__version__}  CUDA {torch.version.cuda}")
for name in ("mlflow", "optuna", "diffusers", "captum", "mlxtend", "numpy", "pandas", "scikit-learn", "transformers", "huggingface-hub"):
    try:
        print(f"  {name} {version(name)}", end="")
    except Exception:
        print(f"  {name} MISSING", end="")
print()
if torch.cuda.is_available():
    from models.device import autocast_enabled
    print(f"GPU {torch.cuda.get_device_name()}  capability {torch.cuda.get_device_capability()}  bf16 autocast {autocast_enabled('cuda')}")
else:
    print("no CUDA device: torch.cuda.is_available() is false")
PY

NAMES=() SECS=() RESULTS=() FIGURES=()

# run_step NAME BUDGET_S COMMAND...: runs COMMAND under timeout (the budget, or what is left of the deadline)
run_step() {
    local name=$1 budget=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$budget" ] && budget=$left
    local log="$LOGS/$name.log" began=$SECONDS rc
    if [ "$budget" -le 5 ]; then
        echo "== $name: skipped, the 8-minute deadline is reached" | tee "$log"
        rc=125
    else
        echo "== $name (at most ${budget} s): $*"
        timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    fi
    NAMES+=("$name")
    SECS+=($((SECONDS - began)))
    case $rc in
        0) RESULTS+=(pass) ;;
        124 | 137) RESULTS+=("fail (timeout)") ;;
        125) RESULTS+=("skipped") ;;
        *) RESULTS+=("fail (exit $rc)") ;;
    esac
    FIGURES+=("$(key_figure "$name" "$log")")
}

# key_figure NAME LOG: one short line for the table
key_figure() {
    case $1 in
        tests) grep -E '[0-9]+ (passed|failed|error)' "$2" | tail -1 | tr -d '=' | sed 's/^ *//' ;;
        synth-*) python3 - "$2" <<'PY'
import re, sys
# the imgs/s column of the benchmark's table: "dcgan 5400/s, vae ..."; the last line of the log if there is none
lines = open(sys.argv[1], errors="replace").read().splitlines()
heads = [i for i, line in enumerate(lines) if "imgs/s" in line and "generator" in line]
if heads:
    header = re.split(r"\s{2,}", lines[heads[-1]].strip())
    column, figures = header.index("imgs/s"), []
    for line in lines[heads[-1] + 2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(header):
            break
        if cells[column] != "-":
            figures.append(f"{cells[0]} {cells[column]}/s")
    print("sampling " + ", ".join(figures))
else:
    print(next((line.strip() for line in reversed(lines) if line.strip()), "no output")[:70])
PY
        ;;
        study) { grep -E '^\[synthmix\] champion:' "$2" || grep -E '^error:|Error' "$2" || grep -E '^\[synthmix\] ' "$2"; } | tail -1 | sed 's/^\[synthmix\] //' | cut -c1-90 ;;
    esac
}

# ---- the tests
CUDA_TESTS=$(grep -l -E '@pytest\.mark\.cuda\b|skipif\(not torch\.cuda\.is_available' tests/test_*.py | sort -u | tr '\n' ' ')
run_step tests 100 python3 -m pytest -q -p no:cacheprovider $CUDA_TESTS

# ---- colour photo folders for the synthesis benchmark (a few seconds; not timed as a step)
for size in 64 128; do
    python3 -m imaging.photos "$WORK/photos$size" --size "$size" --per-class 200 > /dev/null || echo "could not write the $size px photo folder"
done

# ---- the synthesis benchmark: its one call, adjust here when its options change
synthesis_command() {  # SIZE: sets SYNTHESIS to the command for the photo folder of that size
    SYNTHESIS=(python3 benchmarks/synthesis.py --data "$WORK/photos$1" --size "$1" --device cuda)
}
synthesis_command 64
run_step synth-64 75 "${SYNTHESIS[@]}"
synthesis_command 128
run_step synth-128 95 "${SYNTHESIS[@]}"

# ---- the default study (make demo: `mlflow run .` with MLproject's defaults), on the GPU
run_step study 160 python3 -m pipelines main --device cuda

# ---- the table
{
    echo
    echo "device check: $(grep -E '^GPU|^no CUDA' "$LOGS/versions.txt" | head -1); $(head -1 "$LOGS/versions.txt")"
    printf '%-10s %7s  %-16s %s\n' step seconds result "key figure"
    printf '%-10s %7s  %-16s %s\n' ---------- ------- ---------------- ----------
    for i in "${!NAMES[@]}"; do
        printf '%-10s %7s  %-16s %s\n' "${NAMES[$i]}" "${SECS[$i]}" "${RESULTS[$i]}" "${FIGURES[$i]}"
    done
    echo "total $((SECONDS - START)) s; logs in $LOGS"
} | tee "$LOGS/summary.txt"
rm -rf "$WORK"
for result in "${RESULTS[@]}"; do
    [ "$result" = pass ] || exit 1
done
exit 0
