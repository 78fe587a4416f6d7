#!/usr/bin/env bash
# On a GPU machine, the compile-fallback check alone (about a minute; no Ray needed):
#   bash benchmarks/gpu/check_compile_fallback.sh [WHEELS_DIR]     (e.g. .whl2)
# Runs the gpu tests of tests/training/test_compile_fallback.py (the tiny preset at 4x16x16,
# which hit pytorch/pytorch#171622 on an H100, under compile auto: it must train, compiled or
# after one fallback warning; -s prints which) and test_gpu_training_epoch_never_syncs_the_host
# (off and on; now at 8x32x32).  Output in $OUT/check_compile_fallback.txt.
set -uo pipefail
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
RESULTS="${OUT:-/tmp/bench-out}"
cd "$REPO"
if [ -n "${1:-}" ]; then  # the tests import none of Ray, SimpleITK, MONAI; the wheels are optional
  SITE="${TMPDIR:-/tmp}/distmsfa-site"
  "$PY" benchmarks/gpu/wheels.py unpack "$1" "$SITE" >/dev/null || exit 2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 2
timeout "${CHECK_TIMEOUT_S:-150}" "$PY" -m pytest -p no:cacheprovider -q -s -m gpu --tb=short --show-capture=no -rfEs \
  tests/training/test_compile_fallback.py \
  "tests/training/test_speed.py::test_gpu_training_epoch_never_syncs_the_host" \
  2>&1 | tee "$RESULTS/check_compile_fallback.txt" | tail -40
exit "${PIPESTATUS[0]}"
