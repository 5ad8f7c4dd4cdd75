#!/bin/bash
# The device checks and benchmarks for a lent GPU machine, in one call
# (docs/benchmarks.md, "GPU"). The machine has Python, PyTorch and CUDA but no
# package index: the MMEngine/MMAction2 stack travels as wheels in .whl/,
# downloaded beforehand with `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 mmengine==0.10.7
# mmcv-lite==2.0.1 mmaction2==1.1.0 decord==0.6.0 addict termcolor yapf
# platformdirs`; the machine's own NumPy 2 stays (its SciPy needs it), so
# stock pipelines with ColorJitter fail there (see README "Install").
# Logs and result JSONs go to $OUT (default /tmp/gpu_out).
#
#     bash benchmarks/gpu_run.sh [SECONDS]
# Every step stops at its own limit or when SECONDS (default 540) have
# passed since the start, whichever comes first.
set -u
deadline=$((SECONDS + ${1:-540}))
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
log=$out/all.log
export PYTHONUNBUFFERED=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation \
        --no-compile --target /tmp/site . || echo 'package not installed'
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
step() {  # step NAME SECONDS COMMAND...: run, log, keep going
    local name=$1 limit=$2
    shift 2
    [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
    [ "$limit" -le 5 ] && { echo "=== $name: no time left" | tee -a "$log"; return; }
    echo "=== $name: $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "=== $name: rc=$? in $((SECONDS - start)) s" | tee -a "$log"
}
step versions 60 python3 -c "import torch, numpy, mmengine, mmaction, \
decord; print(torch.__version__, torch.version.cuda, numpy.__version__, \
mmengine.__version__, mmaction.__version__, torch.cuda.get_device_name())"
step gpu-tests 90 python3 -m pytest -q -p no:cacheprovider \
    tests/test_bn.py tests/test_robust.py -k "cuda or amp"
step sub-bn 60 python3 benchmarks/bench_sub_batch_bn.py --stock-batch 8 \
    --iters 10
step sub-bn-amp 60 python3 benchmarks/bench_sub_batch_bn.py \
    --stock-batch 8 --iters 10 --amp
step shapes 90 python3 benchmarks/bench_shapes.py --stock-batch 8
step shapes-amp 90 python3 benchmarks/bench_shapes.py --stock-batch 8 --amp
step shapes-plain 90 python3 benchmarks/bench_shapes.py --stock-batch 8 --plain-bn
step train 300 python3 benchmarks/bench_train.py --data video rawframes \
    --epochs 30 --videos-per-class 64 --val-per-class 32 --workers 8 \
    --tag _gpu --work-dir /tmp/bench_train
cp work_dirs/benchmarks/train_*_gpu.json "$out"/ 2>/dev/null
# The whole suite, with the model on the GPU wherever the Runner puts it
# (two-process tests need two GPUs and are left out).
step suite 600 python3 -m pytest -q -p no:cacheprovider -n 8 \
    --ignore=tests/test_distributed.py -rf
grep -E "^=== |passed|failed|speedup|overhead|ms/iter|top-1|h of" "$log"
