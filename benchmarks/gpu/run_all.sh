#!/usr/bin/env bash
# The issue-14 benchmarks on a GPU machine, from the repository root:
#   bash benchmarks/gpu/run_all.sh WHEELS_DIR [extra bench_gpu.py arguments]
#   env: BENCH_OUT=path of the JSON (put it under $OUT so a timed-out call keeps what is done:
#        bench_gpu.py rewrites it after every section), SKIP_TESTS=1 to skip the gpu tests
# Unpacks the wheels of WHEELS_DIR (benchmarks/gpu/fetch_wheels.sh: .whl = Ray, .whl2 =
# SimpleITK + MONAI) into a site folder, runs the gpu-marked tests (output in
# $OUT/gpu_tests.txt), then benchmarks/bench_gpu.py --profile.  The two calls that ran on an
# H100 (benchmarks/gpu/README.md):
#   SKIP_TESTS=1 BENCH_OUT=$OUT/gpu_bench_paper_part1.json bash benchmarks/gpu/run_all.sh .whl --sections models,training,four_folds
#   BENCH_OUT=$OUT/gpu_bench_paper_ensemble.json bash benchmarks/gpu/run_all.sh .whl2 --sections ensemble
set -uo pipefail
WHEELS="${1:?usage: run_all.sh WHEELS_DIR [bench_gpu.py args]}"
shift
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SITE="${TMPDIR:-/tmp}/distmsfa-site"
RESULTS="${OUT:-/tmp/bench-out}"
cd "$REPO"
"$PY" benchmarks/gpu/wheels.py unpack "$WHEELS" "$SITE" >/dev/null || exit 2
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export RAY_TMPDIR="${TMPDIR:-/tmp}/ray-bench" RAY_USAGE_STATS_ENABLED=0
# Ray is in .whl only, SimpleITK in .whl2 only: report what this call has
"$PY" - <<'PYEOF' || exit 2
import importlib, importlib.util, torch
have = {m: getattr(importlib.import_module(m), "__version__", "yes") if importlib.util.find_spec(m) else "absent"
        for m in ("ray", "SimpleITK", "monai")}
print("torch", torch.__version__, torch.cuda.get_device_name(0), have)
PYEOF
mkdir -p "$RESULTS"
# gpu tests first (SKIP_TESTS=1 skips them): the sync-free epoch, the prefetcher, fused SDPA
# under compile, the compile fallback; --show-capture=no keeps inductor's DEBUG log dump out
[ "${SKIP_TESTS:-0}" = 1 ] || "$PY" -m pytest -p no:cacheprovider -q -s -m gpu --tb=short --show-capture=no -rfEs \
  tests/training/test_speed.py tests/training/test_compile_fallback.py tests/models/test_msfa_attention.py \
  2>&1 | tee "$RESULTS/gpu_tests.txt" | tail -40
OUTFILE="${BENCH_OUT:-benchmarks/results/gpu_bench_$("$PY" -c "import re,torch;print(re.sub(r'[^a-z0-9]+','_',torch.cuda.get_device_name(0).lower()).strip('_'))")_paper.json}"
"$PY" benchmarks/bench_gpu.py --profile --out "$OUTFILE" "$@" 2>&1 | tail -40
rc=${PIPESTATUS[0]}
[ "$(cd "$(dirname "$OUTFILE")" && pwd)" = "$(cd "$RESULTS" && pwd)" ] || cp "$OUTFILE" "$RESULTS/" 2>/dev/null || true
exit "$rc"
