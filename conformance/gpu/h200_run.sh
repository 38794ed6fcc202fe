#!/usr/bin/env bash
# The committed H200 evidence, one stage per device call (each call may run 10 minutes).
# After staging MLX CUDA (../shared/gpu/stage-mlx-cuda.sh; see README "Running on CUDA"),
# with PYTHONPATH holding MLX CUDA and the project, from the project root:
#   bash conformance/gpu/h200_run.sh conf on|off [RUN ARGS]  # conformance run (+ fuzz), no tiny models
#   bash conformance/gpu/h200_run.sh models on|off [MODEL ARGS] # tiny-model conformance
#   bash conformance/gpu/h200_run.sh bench                    # pytest-benchmark baseline, TF32 and float32 rows
# Each stage writes under /tmp/h200/<stage> and packs it as $OUT/<stage>.tgz (the device
# returns at most 8 files), so a stage that runs out of time still returns what it wrote.
set -uo pipefail
stage=${1:?stage}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
name=$stage${2:+-$2}
work=/tmp/h200/$name
mkdir -p "$work"
pack() { tar -C /tmp/h200 -czf "${OUT:-/tmp}/$name.tgz" "$name"; }
trap pack EXIT
python -c 'import mlx.core as mx, torch; print("mlx", mx.__version__, mx.default_device(), "torch", torch.__version__, torch.cuda.get_device_name())'
case $stage in
  conf)
    timeout "${STAGE_TIMEOUT:-540}" python -m conformance run --profile=ci --jobs 8 --tf32 "$2" --no-models \
      --out "$work/conformance" --junitxml "$work/junit.xml" "${@:3}" > "$work/run.log" 2>&1
    echo "conformance tf32=$2 rc=$?"; grep -E "^\[conformance\]|^\[model" "$work/run.log" | tail -6
    rm -rf "$work/conformance/_work/"*.json 2>/dev/null
    ;;
  models)
    # Each configuration in its own process, 8 at a time: a first-use kernel compile that
    # hangs, or a kernel that crashes, loses only its configuration (named in the report).
    [ "$2" = on ] && export MLX_ENABLE_TF32=1 || export MLX_ENABLE_TF32=0
    timeout "${STAGE_TIMEOUT:-540}" python -m conformance model --progress configs --out "$work/models" \
      --jobs "${MODEL_JOBS:-8}" --config-timeout "${CONFIG_TIMEOUT:-420}" \
      "${@:3}" > "$work/model.log" 2>&1
    echo "models tf32=$2 rc=$?"; tail -8 "$work/model.log"
    ;;
  bench)
    timeout 560 python -m conformance bench record --out "$work/baseline" > "$work/bench.log" 2>&1
    echo "bench rc=$?"; tail -5 "$work/bench.log"
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
