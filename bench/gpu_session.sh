#!/usr/bin/env bash
# Issue 13's GPU measurements, for a session that has the device tool's H200 (docs/benchmarks.md
# says what is still open). One part per device call (each should end well inside a call's 10
# minutes; not yet timed on the device); the results land in $OUT (the device tool brings that
# folder back) as markdown tables and logs:
#
#   bash bench/gpu_session.sh tests              # the gpu-marked tests, nvidia-smi
#   bash bench/gpu_session.sh train paper|small  # training steps at batch 128: bf16 / fp32,
#                                                # compiled / eager, the CE+SC / CE ratio
#   bash bench/gpu_session.sh eval paper|small   # PC steps at batch 500, guided over unguided,
#                                                # eager / compiled, fp32 / bf16 guidance gradient
#
# The device has torch but no Ray, MLflow, Optuna or clean-fid, and reaches no package registry
# (Ray's wheel alone is over the 64 MiB a call may carry): what runs there is the trainables
# package (no Ray import), its gpu tests and the benchmarks. tests/study/test_gpu_study.py, the
# study through Ray Train on a GPU, needs a machine with the platform installed (`make test-gpu`).
# A CPU dry run: OUT=/tmp/gpu PY=.venv/bin/python bash bench/gpu_session.sh eval tiny --device cpu
#   --image-size 16 --batch 8 --repeats 1
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?"which part: tests, train or eval"}
shift
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
# Defaults for the H200; later arguments override them (argparse keeps the last value).
case "$part" in
tests)
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" \
        | tee "$OUT/torch.txt"
    "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/trainables/test_cuda.py "$@" 2>&1 \
        | tee "$OUT/gpu-tests.txt"
    ;;
train)
    size=${1:-paper}
    shift || true
    "$PY" bench/train_throughput.py --device cuda --size "$size" --image-size 32 --batch 128 \
        --precision fp32 bf16 --channels-last --compile --steps 20 --warmup 5 \
        --json "$OUT/train-$size.json" "$@" 2>&1 | tee "$OUT/train-$size.md"
    ;;
eval)
    size=${1:-paper}
    shift || true
    "$PY" bench/eval_throughput.py --device cuda --size "$size" --image-size 32 --batch 500 \
        --repeats 5 --guidance-precision fp32 bf16 --compile "$@" 2>&1 | tee "$OUT/eval-$size.md"
    ;;
*)
    echo "unknown part '$part': tests, train or eval" >&2
    exit 2
    ;;
esac
