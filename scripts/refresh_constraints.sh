#!/usr/bin/env bash
# Renews constraints.txt on purpose: installs the newest releases pyproject.toml allows into a fresh
# virtual environment, runs the CI checks (ruff + the test suite) there, and only when they pass
# writes that environment's exact versions to constraints.txt. Review `git diff constraints.txt`,
# then commit it. Drift in upstream releases is found here, not by a new user.
#   TORCH=2.14.1 scripts/refresh_constraints.sh   test another torch (default: the pinned one)
#   KEEP_VENV=1                                    keep the environment (printed path) afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PYTHON=${BASE_PYTHON:-python3}
TORCH=${TORCH:-$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt)}
venv=$(mktemp -d -t progrpo-refresh-XXXX)
[[ ${KEEP_VENV:-0} == 1 ]] || trap 'rm -rf "$venv"' EXIT
"$BASE_PYTHON" -m venv "$venv"
python="$venv/bin/python"
export PATH="$venv/bin:$PATH" PYTHON="$python"  # the tests start python/python3 subprocesses: this environment's
echo "[refresh] fresh environment $venv: torch==$TORCH, everything else the newest allowed"
"$python" -m pip install --disable-pip-version-check -q --upgrade pip
"$python" -m pip install --disable-pip-version-check -q "torch==$TORCH"
PYTHON="$python" PROGRPO_FAST_CONSTRAINTS=none bash scripts/install.sh
"$venv/bin/ruff" check .
"$python" -m pytest -q tests
new=$(mktemp)
{
  echo "# The exact set CI passed with (scripts/install.sh installs from it). Written by"
  echo "# scripts/refresh_constraints.sh on $(date -u +%F) after ruff and the tests passed on"
  echo "# Python $("$python" -c 'import platform; print(platform.python_version())'), $(uname -m). Refresh on purpose; never edit by hand."
  "$python" -m pip freeze --all --exclude-editable | grep -vE '^(#|pip==|-e )' | LC_ALL=C sort -f
} > "$new"
diff <(grep -v '^#' constraints.txt 2>/dev/null || true) <(grep -v '^#' "$new") || true
mv "$new" constraints.txt
echo "[refresh] constraints.txt updated; review it with git diff and commit"
