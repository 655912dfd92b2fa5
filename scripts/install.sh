#!/usr/bin/env bash
# Installs progrpo-fast (editable) with its test tools into the current Python environment.
# Keeps an already-installed torch (CUDA machines: your CUDA build); without one it installs the
# CPU wheel torch==2.13.0. Builds the C++ extension (and the CUDA one where nvcc and a CUDA build of
# torch are present) without build isolation, so the build uses this torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[install] no torch found: installing the CPU wheel torch==2.13.0"
  pip_install "torch==2.13.0"
fi
pip_install setuptools wheel pybind11 cmake ninja
echo "[install] building progrpo-fast (C++ extension; CUDA where available)"
pip_install --no-build-isolation -e ".[test]"
"$PYTHON" -m progrpo_fast info
