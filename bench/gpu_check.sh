#!/usr/bin/env bash
# The checks that need a CUDA device, in one short run (GPU machines are lent for minutes, not hours):
#
#   bash bench/gpu_check.sh [OUT_DIR]
#
# 1. tests/gpu: AMP training (GradScaler per optimizer, the GAN critic's too), resume, segmentation on the
#    device, and bulk apply on CUDA (fp16 autocast, channels_last, padded batches) against the CPU result;
# 2. bench/apply.py on the GPU without Prefect: pure forward, the bare loop and apply_local.
# Writes gpu-tests.log, apply-gpu.json and apply-gpu.err to OUT_DIR (default: $OUT or /tmp/pixelmill-gpu).
# On a machine with PyTorch but not this project's venv (a lent GPU machine), pydantic comes from wheels
# carried in .whl/ and the package is put on the path by links; see bench/README.md.
set -uo pipefail
out=${1:-${OUT:-/tmp/pixelmill-gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
if ! $py -c "import pixelmill.tasks.inference.apply" 2>/dev/null; then
    site=/tmp/pixelmill-site
    $py -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
    mkdir -p "$site/pixelmill"
    for d in flows tasks models; do ln -sfn "$PWD/$d" "$site/pixelmill/$d"; done
    export PYTHONPATH="$site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONUNBUFFERED=1
$py -m pytest tests/gpu -v -p no:cacheprovider -m gpu 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 300 $py bench/apply.py --n ${APPLY_N:-300} --device cuda --ways forward,bare,local_1 \
    > "$out/apply-gpu.json" 2> "$out/apply-gpu.err"
bench=$?
tail -5 "$out/apply-gpu.err"
cat "$out/apply-gpu.json"
echo "gpu tests rc $tests, apply bench rc $bench"
exit $(( tests || bench ))
