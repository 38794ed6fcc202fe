#!/usr/bin/env bash
# One device call after staging MLX CUDA (see ../shared/gpu/stage-mlx-cuda.sh): probes, the
# back-end tests, the reproducers, and the conformance run under both float32 matmul
# precisions. Usage (in the project root, PYTHONPATH including MLX CUDA and the project):
#   bash conformance/gpu/cuda_check.sh OUTDIR
set -uo pipefail
out=${1:?OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python conformance/gpu/cuda_probe.py > "$out/probe.txt" 2>&1; echo "probe rc=$?"
grep -E "^(half_acc|repro|crash)" "$out/probe.txt" | cut -c1-220
python -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_norms.py tests/meta/test_harness.py \
  > "$out/pytest.txt" 2>&1; echo "pytest rc=$?"; tail -3 "$out/pytest.txt"
# The peer runs on CUDA tensors; if any reference call breaks there (a device mismatch), fall
# back to the CPU peer for the runs below and say so.
python - > "$out/peer_smoke.txt" 2>&1 <<'PY'
import warnings; warnings.filterwarnings("ignore")
from conformance.execute import run_case
from conformance.registry import cells
bad = []
for record, dtype, mode in cells():
    for _ in range(3):
        r = run_case(record, record.cases(dtype, mode).example(), dtype)
        if r.error and "PyTorch raised" in r.error:
            bad.append(f"{record.name}/{dtype}/{mode}: {r.error[:300]}")
print("PEER_ERRORS", len(bad)); print("\n".join(bad[:10]))
PY
head -12 "$out/peer_smoke.txt"
if ! grep -q "PEER_ERRORS 0" "$out/peer_smoke.txt"; then export CONFORMANCE_PEER_DEVICE=cpu; echo "peer on CPU"; fi
for t in on off; do
  timeout 150 python -m conformance run --profile=ci --jobs 8 --fuzz-examples 0 --tf32 $t --out /tmp/conf-$t \
    > /tmp/conf-$t.log 2>&1; echo "conformance tf32=$t rc=$?"; tail -2 /tmp/conf-$t.log
  mkdir -p "$out/tf32-$t" && cp /tmp/conf-$t/conformance.json /tmp/conf-$t/report.md "$out/tf32-$t/" 2>/dev/null
  grep -h "FAILED" /tmp/conf-$t/_work/*.log | cut -c1-200 | head -20
done
