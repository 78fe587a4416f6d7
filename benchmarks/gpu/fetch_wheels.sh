#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels the GPU machine lacks (its python3 is 3.12 with
# PyTorch, pandas, pyarrow, scikit-learn, rich, typer, ... but no Ray), for CPython 3.12 on
# x86-64 Linux, into DIR (default .whl/, git-ignored); then slim Ray's wheel to fit a carry.
set -euo pipefail
DIR="${1:-.whl}"
mkdir -p "$DIR"
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --abi none --platform any -d "$DIR" \
  "ray==2.60.0" jsonschema jsonschema-specifications referencing rpds-py tensorboardX \
  "pydantic>=2.5,<3" pydantic-core annotated-types typing-inspection
python "$(dirname "$0")/wheels.py" slim "$DIR"
du -sh "$DIR"
