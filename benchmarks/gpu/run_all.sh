#!/usr/bin/env bash
# Every issue-14 benchmark on a GPU machine, as one command, from the repository root:
#   bash benchmarks/gpu/run_all.sh WHEELS_DIR [extra bench_gpu.py arguments]
#   (env: BENCH_OUT=path of the JSON, SKIP_TESTS=1 to skip the gpu tests)
# Unpacks the wheels of WHEELS_DIR (benchmarks/gpu/fetch_wheels.sh) into a site folder, runs
# the GPU tests (gpu marker), then benchmarks/bench_gpu.py --profile; the JSON goes to
# benchmarks/results/ and, when $OUT is set (the device tool), is copied there as well.
set -uo pipefail
WHEELS="${1:?usage: run_all.sh WHEELS_DIR [bench_gpu.py args]}"
shift
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SITE="${TMPDIR:-/tmp}/distmsfa-site"
cd "$REPO"
"$PY" benchmarks/gpu/wheels.py unpack "$WHEELS" "$SITE" >/dev/null || exit 2
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export RAY_TMPDIR="${TMPDIR:-/tmp}/ray-bench" RAY_USAGE_STATS_ENABLED=0
"$PY" -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 2
mkdir -p "${OUT:-/tmp/bench-out}"
# GPU tests first (a few minutes; SKIP_TESTS=1 skips them): the sync-free epoch, the
# prefetcher, fused SDPA under compile
[ "${SKIP_TESTS:-0}" = 1 ] || "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/training/test_speed.py tests/models/test_msfa_attention.py \
  2>&1 | tail -25 | tee "${OUT:-/tmp/bench-out}/gpu_tests.txt"
OUTFILE="${BENCH_OUT:-benchmarks/results/gpu_bench_$("$PY" -c "import re,torch;print(re.sub(r'[^a-z0-9]+','_',torch.cuda.get_device_name(0).lower()).strip('_'))")_paper.json}"
"$PY" benchmarks/bench_gpu.py --profile --out "$OUTFILE" "$@" 2>&1 | tail -40
rc=${PIPESTATUS[0]}
cp "$OUTFILE" "${OUT:-/tmp/bench-out}/" 2>/dev/null || true
exit "$rc"
