#!/usr/bin/env bash
# The committed H200 evidence, one stage per device call (each call may run 10 minutes).
# After staging MLX CUDA (../shared/gpu/stage-mlx-cuda.sh; see README "Running on CUDA"),
# with PYTHONPATH holding MLX CUDA and the project, from the project root:
#   bash conformance/gpu/h200_run.sh conf on|off [RUN ARGS]  # conformance run (+ fuzz), no tiny models
#   bash conformance/gpu/h200_run.sh models on|off [MODEL ARGS] # tiny-model conformance
#   bash conformance/gpu/h200_run.sh bench [tf32|float32|both] # pytest-benchmark baseline row(s); one row
#                                                               # takes ~7 min on an H200: one per call
#   bash conformance/gpu/h200_run.sh layers                   # every overhead pair's sides, bit for bit
#   bash conformance/gpu/h200_run.sh overhead [tf32|float32]  # the layer-overhead benchmarks alone, the
#                                                               # given row or both, one after the other
#                                                               # (~2.5 min each)
#   bash conformance/gpu/h200_run.sh pair on|off [MODEL ARGS] # on 2 GPUs: the tf32 (on) or float32 (off)
#       benchmark row alone on GPU 0 and cores 0-7, beside conf, layers and models in that
#       setting on GPU 1 and cores 8-31 (nvidia-h200-x2); PAIR_BENCH=overhead runs the
#       overhead stage (both rows) on GPU 0 instead of the full row
#   bash conformance/gpu/h200_run.sh rows                     # on 2 GPUs: the tf32 row on GPU 0 and cores
#       0-7, the float32 row on GPU 1 and cores 16-23, at once (nothing else running)
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
    timeout "${STAGE_TIMEOUT:-560}" python -m conformance bench record --precision "${2:-both}" \
      --out "$work/baseline" > "$work/bench.log" 2>&1
    echo "bench rc=$?"; tail -5 "$work/bench.log"
    ;;
  layers)
    timeout "${STAGE_TIMEOUT:-120}" python -m pytest -q -p no:cacheprovider tests/benchmarks/test_layers_at_best.py \
      > "$work/layers.log" 2>&1
    echo "layers rc=$?"; tail -3 "$work/layers.log"
    ;;
  overhead)
    for row in ${2:-tf32 float32}; do
      timeout "${STAGE_TIMEOUT:-280}" python -m conformance bench record --precision "$row" \
        --out "$work/baseline" -- -k test_overhead > "$work/overhead-$row.log" 2>&1
      echo "overhead $row rc=$?"; grep -A2 "Layer overhead" "$work/baseline/report.md" | tail -1
    done
    ;;
  pair)
    [ "$2" = on ] && row=tf32 || row=float32
    here=$(cd "$(dirname "$0")" && pwd)
    if [ "${PAIR_BENCH:-bench}" = overhead ]; then
      CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 bash "$here/h200_run.sh" overhead &
    else
      CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 bash "$here/h200_run.sh" bench "$row" &
    fi
    bench_pid=$!
    ( export CUDA_VISIBLE_DEVICES=1
      taskset -c 8-31 bash "$here/h200_run.sh" layers
      STAGE_TIMEOUT=${CONF_TIMEOUT:-200} taskset -c 8-31 bash "$here/h200_run.sh" conf "$2"
      STAGE_TIMEOUT=${MODELS_TIMEOUT:-260} taskset -c 8-31 bash "$here/h200_run.sh" models "$2" "${@:3}" )
    wait "$bench_pid"
    ;;
  rows)
    here=$(cd "$(dirname "$0")" && pwd)
    CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 bash "$here/h200_run.sh" bench tf32 &
    CUDA_VISIBLE_DEVICES=1 taskset -c 16-23 bash "$here/h200_run.sh" bench float32 &
    wait
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
