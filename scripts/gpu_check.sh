#!/usr/bin/env bash
# The GPU checks of the inference engine, as one short run: tests/test_gpu.py, then benchmarks/bench_gpu.py
# (network-only, post-processing-only per process and with a pool, end-to-end MP/s and GPU utilisation).
# About 3-5 minutes on one H200 (each step has its own time limit; together under 8 minutes).
#
#   scripts/gpu_check.sh            on a GPU machine
#   scripts/gpu_check.sh --small    a CPU-sized run of the same steps, to check the script itself
#
# Logs and the benchmark's JSON line go to $OUT (or /tmp/gpu_check). The lent GPU machine is bare: its python3
# has torch, scikit-image, scipy, tifffile, timm and safetensors, not segmentation-models-pytorch. Put that wheel
# into .whl/ first (ignored: echo /.whl/ >> .git/info/exclude), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl segmentation-models-pytorch==0.6.0
# and name .whl in the run's carry; this script installs it into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ! "$PY" -c "import segmentation_models_pytorch" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || exit 2
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_check: segmentation-models-pytorch is missing and .whl/ holds no wheels (see this script's header)" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD/src:$PWD/tests:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/env.log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv | tee -a "$OUT/env.log"

timeout 180 "$PY" -m pytest --noconftest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
tests=$?
if [ "${1:-}" = "--small" ]; then
    args=(--device cpu --size 1024 --block 512 --tile 256 --batch 2 --workers 2 --network-batches 2)
else
    args=(--size 12288 --batch 16)
fi
timeout 300 "$PY" benchmarks/bench_gpu.py "${args[@]}" 2>&1 | tee "$OUT/bench_gpu.log"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench" | tee -a "$OUT/env.log"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
