#!/usr/bin/env bash
# Installs progrpo-fast (editable) with its test tools into the current Python environment, at the
# exact dependency versions CI passed with (constraints.txt), and builds the C++ extension (and the
# CUDA one where nvcc and a CUDA build of torch are present) without build isolation, so the build
# uses the installed torch.
#
# torch: an installed torch is kept, with its triton (a GPU machine's CUDA build); without one, the
# CPU wheel pinned in constraints.txt is installed. Everything else comes from constraints.txt.
#   PROGRPO_FAST_CONSTRAINTS=none   install the newest releases pyproject.toml allows instead
#   PROGRPO_FAST_CONSTRAINTS=FILE   use another constraints file
#   PYTHON=...                      the interpreter to install into (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONSTRAINTS=${PROGRPO_FAST_CONSTRAINTS:-constraints.txt}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

TESTED=constraints.txt
pinned() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" "$TESTED"; }
[[ $CONSTRAINTS == none || -f $CONSTRAINTS ]] || {
  echo "[install] constraints file $CONSTRAINTS not found (PROGRPO_FAST_CONSTRAINTS=none installs without one)" >&2; exit 2; }

kept_torch=0
if "$PYTHON" -c "import torch" 2>/dev/null; then
  kept_torch=1
  have=$("$PYTHON" -c "import torch; print(torch.__version__)")
  [[ $have == "$(pinned torch)" ]] || echo "[install] keeping the installed torch $have (CI tests torch $(pinned torch))"
else
  echo "[install] no torch found: installing the CPU wheel torch==$(pinned torch)"
  pip_install "torch==$(pinned torch)"
fi

constraint_args=()
if [[ $CONSTRAINTS == none ]]; then
  echo "[install] PROGRPO_FAST_CONSTRAINTS=none: newest releases within pyproject.toml's ranges (an untested set)"
else
  used=$(mktemp)
  trap 'rm -f "$used"' EXIT
  if [[ $kept_torch == 1 ]]; then  # it stays, with the triton and CUDA libraries that came with it
    grep -vE '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$CONSTRAINTS" > "$used"
  else
    cp "$CONSTRAINTS" "$used"
  fi
  constraint_args=(-c "$used")
fi
pip_install "${constraint_args[@]}" setuptools wheel pybind11 cmake ninja
echo "[install] building progrpo-fast (C++ extension; CUDA where available)"
pip_install "${constraint_args[@]}" --no-build-isolation -e ".[test]"
"$PYTHON" -m progrpo_fast info
