#!/usr/bin/env bash
# One-shot GPU acceptance run: build the CUDA extension, run the CUDA tests, the op
# microbenchmarks at SD3.5-M shapes (GB/s against the measured copy bandwidth), CUDA-graph vs
# eager sampling, SD3.5-M-sized GRPO throughput (naive-24 vs Pro-GRPO with the latent and the
# reward proxy), the stepping pruner's share of a Flow-GRPO-shaped sampler loop and a short convergence run of the
# shapes task (one process per seed); results in benchmarks/results/*_cuda.{json,csv,md}, one summary table last.
#
#   bash scripts/gpu_check.sh             # on one H100/H200: under 8 minutes
#   bash scripts/gpu_check.sh --dry-run   # every stage at toy size on a CPU (under a minute; CI runs it)
#   GPU_CHECK_VIDEO=1 bash scripts/gpu_check.sh   # also Wan2.1-1.3B-sized video GRPO (about 2 minutes more)
#
# The machine's own torch (a CUDA build) is used as it is. A machine without network and without
# diffusers gets it from wheels carried in .whl/ (ignored by git), made beforehand on a machine
# with network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       diffusers==0.42.1 importlib_metadata==8.7.0
# (both pure Python; add any other package the machine lacks the same way). The script installs
# them into a private folder on PYTHONPATH, never into the machine's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; elif [[ $# -gt 0 ]]; then echo "usage: $0 [--dry-run]" >&2; exit 2; fi
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)
stage() { echo "== [$(( $(date +%s) - STARTED )) s] $*"; }

if [[ $DRY_RUN == 1 ]]; then
  RESULTS=${GPU_CHECK_OUT:-$(mktemp -d)}  # toy numbers never overwrite the committed results
  export PROGRPO_FAST_BENCH_TOY=1 TRITON_INTERPRET=1
  TAG=dryrun
else
  RESULTS=${GPU_CHECK_OUT:-benchmarks/results}
  TAG=cuda
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --dry-run on a CPU')"
fi
mkdir -p "$RESULTS"

stage "wheels"
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "diffusers is not installed and .whl/ holds no wheels: see the top of $0" >&2; exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/progrpo-site .whl/*.whl
  export PYTHONPATH=/tmp/progrpo-site${PYTHONPATH:+:$PYTHONPATH}
fi

stage "build"
if [[ $DRY_RUN == 0 ]]; then
  ARCH=$("$PYTHON" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))")
  PROGRPO_FAST_CUDA=1 PROGRPO_FAST_REQUIRE_EXTENSION=1 PROGRPO_FAST_CUDA_ARCHS=$ARCH CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PYTHON" setup.py -q build_ext --inplace
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -m progrpo_fast info | tee "$RESULTS/info_$TAG.txt"

stage "tests"
if [[ $DRY_RUN == 1 ]]; then  # the CUDA tests skip here; one CPU test of the fused noise proves the stage
  TESTS=(tests/test_graphs_cuda.py "tests/test_keyed_noise_kernel.py::test_seed_tensor_gives_the_same_noise_as_the_int_seed")
else
  TESTS=(tests/test_graphs_cuda.py tests/test_keyed_noise_kernel.py tests/test_sde.py tests/test_extension_build.py
         tests/test_triton_kernels.py::test_sd35_medium_shapes_bf16 tests/test_triton_kernels.py::test_cuda_graph_replay_equals_eager)
fi
"$PYTHON" -m pytest -q -p no:cacheprovider --junitxml "$RESULTS/gpu_tests_$TAG.xml" "${TESTS[@]}" || echo "TESTS FAILED (see above); continuing"

stage "op microbenchmarks"
"$PYTHON" -m pytest -q -p no:cacheprovider benchmarks/test_bench_ops.py --benchmark-json "$RESULTS/ops_$TAG.json" >/dev/null
"$PYTHON" benchmarks/report_ops.py "$RESULTS/ops_$TAG.json" > "$RESULTS/ops_$TAG.md"
cat "$RESULTS/ops_$TAG.md"

stage "CUDA graphs vs eager sampling"
if [[ $DRY_RUN == 1 ]]; then GRAPHS=(--models tiny --calls 1); else GRAPHS=(--models shapes,sd3_mid,sd35m --calls 2); fi
"$PYTHON" -m progrpo_fast bench graphs "${GRAPHS[@]}" --tag "$TAG" --out "$RESULTS"

stage "GRPO throughput: naive-24 vs Pro-GRPO"
PICKSCORE=/tmp/progrpo-pickscore-random
if [[ $DRY_RUN == 1 ]]; then
  "$PYTHON" scripts/random_pickscore.py "$PICKSCORE" --tiny >/dev/null
  THROUGHPUT=(--set "reward.weights={pickscore: 1.0}" --group-size 4 --methods naive-4,pro-grpo-latent,pro-grpo-reward --rounds 1)
else
  "$PYTHON" scripts/random_pickscore.py "$PICKSCORE" >/dev/null
  THROUGHPUT=(--config sd35m_pickscore --set model.kind=sd35m_random --set prompts.source=shapes --set prompts.pool=0
              --set model.dtype=bf16 --methods naive-24,pro-grpo-latent,pro-grpo-reward --rounds 2)
fi
"$PYTHON" -m progrpo_fast bench throughput "${THROUGHPUT[@]}" --set reward.paths.pickscore=$PICKSCORE --tag "$TAG" --out "$RESULTS"

stage "pruning inside a foreign sampler loop"
if [[ $DRY_RUN == 1 ]]; then FOREIGN=(--schedule 4:1=2@3 --prompts 1 --rounds 1); else
  FOREIGN=(--schedule 16:5=8,7=4@10 --prompts 4 --rounds 4); fi
"$PYTHON" -m progrpo_fast bench foreign "${FOREIGN[@]}" --tag "$TAG" --out "$RESULTS"

stage "convergence: shapes task, one process per seed"
# bench convergence with every seed in its own process at once (one CPU thread each), all adding to one
# results file under its lock; a rerun resumes it. GPU_CHECK_CONVERGENCE_SEEDS / _BUDGET size it.
if [[ $DRY_RUN == 1 ]]; then
  CONVERGENCE_SEEDS=${GPU_CHECK_CONVERGENCE_SEEDS:-2}
  CONVERGENCE=(--methods naive-8,pro-grpo-reward --budget "${GPU_CHECK_CONVERGENCE_BUDGET:-1}" --evaluations 1
               --set sampler.schedule=8:2=4,3=2@5 --set sampler.prompts_per_iteration=1 --set train.lora_rank=4 --set train.lora_alpha=8
               --set log.eval_prompts=2 --set log.eval_per_prompt=2 --set prompts.pool=8)
else
  CONVERGENCE_SEEDS=${GPU_CHECK_CONVERGENCE_SEEDS:-16}
  CONVERGENCE=(--budget "${GPU_CHECK_CONVERGENCE_BUDGET:-20}" --evaluations 10 --set log.eval_prompts=48)
fi
LOGS="$RESULTS/convergence_${TAG}_logs"
mkdir -p "$LOGS"
PIDS=()
for ((seed = 0; seed < CONVERGENCE_SEEDS; seed++)); do
  OMP_NUM_THREADS=1 "$PYTHON" -m progrpo_fast bench convergence --seeds "$seed-$seed" "${CONVERGENCE[@]}" --tag "$TAG" --out "$RESULTS" \
    > "$LOGS/seed$seed.log" 2>&1 &
  PIDS+=($!)
done
FAILED=0
for pid in "${PIDS[@]}"; do wait "$pid" || FAILED=$((FAILED + 1)); done
if [[ $FAILED == 0 ]]; then  # trains nothing (every seed is in the file): the table over all seeds, written once
  "$PYTHON" -m progrpo_fast bench convergence --seeds "$CONVERGENCE_SEEDS" "${CONVERGENCE[@]}" --tag "$TAG" --out "$RESULTS"
else
  echo "CONVERGENCE: $FAILED of $CONVERGENCE_SEEDS seed processes failed (logs in $LOGS); continuing"
  tail -n 5 "$LOGS"/seed*.log
fi

if [[ "${GPU_CHECK_VIDEO:-0}" == 1 ]]; then  # optional (about 2 more minutes on an H200): Wan2.1-1.3B-sized video GRPO
  stage "video: Pro-GRPO vs naive GRPO on Wan"
  if [[ $DRY_RUN == 1 ]]; then VIDEO=(--frames 5 --iterations 1 --height 16 --width 16); else
    VIDEO=(--model wan21_1p3b_random --frames 33 --height 240 --width 416 --dtype bf16 --iterations 2); fi
  "$PYTHON" -m progrpo_fast bench wan_video "${VIDEO[@]}" --tag "$TAG" --out "$RESULTS"
fi

stage "summary"
"$PYTHON" scripts/gpu_summary.py "$RESULTS" "$TAG"
stage "done"
