#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels the GPU machine lacks (its python3 is 3.12 with
# PyTorch, pandas, pyarrow, scikit-learn, rich, typer, ... but no Ray, SimpleITK or MONAI),
# for CPython 3.12 on x86-64 Linux, into two folders (git-ignored), each under the device
# tool's 64 MiB carry:
#   DIR  (default .whl):  Ray 2.60.0 (slimmed) and its missing dependencies, for the
#                         sections models, training, four_folds (device call 1)
#   DIR2 (default .whl2): SimpleITK (52 MB, the ensemble's bundle and preprocessing import it)
#                         and MONAI, for the section ensemble and the gpu tests (device call 2)
# Usage: bash benchmarks/gpu/fetch_wheels.sh [DIR] [DIR2]
set -euo pipefail
DIR="${1:-.whl}"
DIR2="${2:-.whl2}"
PLAT=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
mkdir -p "$DIR" "$DIR2"
python -m pip download "${PLAT[@]}" -d "$DIR" \
  "ray==2.60.0" jsonschema jsonschema-specifications referencing rpds-py tensorboardX \
  "pydantic>=2.5,<3" pydantic-core annotated-types typing-inspection
python "$(dirname "$0")/wheels.py" slim "$DIR"
# the versions this project is tested with here (pyproject: SimpleITK>=2.3, monai>=1.3)
python -m pip download "${PLAT[@]}" -d "$DIR2" "SimpleITK==2.5.7" "monai==1.6.1"
du -sh "$DIR" "$DIR2"
