#!/bin/bash
# The GPU measurements of docs/benchmarks.md ("GPU node, end to end"), in
# one call on a lent machine. That machine has Python, PyTorch and CUDA but
# no package index: the MMEngine/MMAction2 stack and PyAV travel as wheels
# in .whl/, downloaded beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
#     -d .whl mmengine==0.10.7 mmcv-lite==2.0.1 mmaction2==1.1.0 \
#     decord==0.6.0 addict termcolor yapf platformdirs av
# The machine's own NumPy 2 stays (its SciPy needs it); the stock I3D
# pipeline has no ColorJitter, so NumPy 2 does not break it.
#
#     GIT_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_run.sh STEP...
# Steps: bn, bn-amp, e2e-probe, e2e, suite. Logs and result JSONs go to
# $OUT (default /tmp/gpu_out); DEADLINE (seconds, default 540) bounds the
# whole call. BN_ARGS and E2E_ARGS are added to the benchmarks' arguments
# (a CPU dry run: BN_ARGS='--device cpu --size 32 --iters 1 --rounds 1'
# E2E_ARGS='--toy --device cpu --size 32 --workers 2 --videos 4 --seconds 3').
set -u
deadline=$((SECONDS + ${DEADLINE:-540}))
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
log=$out/all.log
export PYTHONUNBUFFERED=1 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
if [ -d .whl ] && ! python3 -c "import mmaction, av" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
left() { echo $((deadline - SECONDS)); }
step() {  # step NAME SECONDS COMMAND...: run, log, keep going
    local name=$1 limit=$2
    shift 2
    [ "$(left)" -lt "$limit" ] && limit=$(left)
    [ "$limit" -le 5 ] && { echo "=== $name: no time left" | tee -a "$log"; return; }
    echo "=== $name: $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "=== $name: rc=$? in $((SECONDS - start)) s" | tee -a "$log"
    grep -vE "Warning|warn|^\s*$|Build settings|^ *-|^\(|^ -+" \
        "$out/$name.log" | tail -n 40 >>"$log"
}
python3 -c "import torch, numpy, mmengine, mmaction, decord, av; \
print(torch.__version__, torch.version.cuda, numpy.__version__, \
mmengine.__version__, mmaction.__version__, torch.cuda.get_device_name(), \
'cores', __import__('os').cpu_count())" 2>&1 | tail -1 | tee -a "$log"
for s in "$@"; do
    case $s in
    bn) step bn 120 python3 benchmarks/bench_bn_shapes.py --stock-batch 8 \
        --profile --out "$out/bn_h200_fp32.json" ${BN_ARGS:-} ;;
    bn-amp) step bn-amp 90 python3 benchmarks/bench_bn_shapes.py \
        --stock-batch 8 --amp --rounds 1 --out "$out/bn_h200_amp.json" \
        ${BN_ARGS:-} ;;
    e2e-probe) step e2e-probe 240 python3 benchmarks/bench_e2e.py \
        --conditions stock-rawframes mg-rawframes stock-video mg-video \
        --stages 0 3 --out "$out/e2e_probe_h200.json" ${E2E_ARGS:-} ;;
    e2e) step e2e $(($(left) - 10)) python3 benchmarks/bench_e2e.py \
        --deadline $(($(left) - 60)) --out "$out/e2e_h200.json" ${E2E_ARGS:-} ;;
    suite) step suite 300 python3 -m pytest -q -p no:cacheprovider -x \
        tests/test_bn.py tests/test_robust.py tests/test_data_preprocessor.py \
        -k "cuda or amp" ;;
    esac
done
grep -E "^=== |speedup|ready|x vs|ms/clip|sub/plain|^ +[0-9]+ x " "$log" |
    tail -n 80
