#!/usr/bin/env bash
# Paper-scale claims on a GPU runner: each paper model, the claims on CUDA, results kept, report written.
#
#   MECHBENCH_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash ci/run-gpu.sh
#   MODELS=llama7b,goat7b SUITES="suites/test_accuracy.py suites/test_faithfulness.py" bash ci/run-gpu.sh
#   DTYPE=bfloat16 bash ci/run-gpu.sh      # half the memory and time; the paper ran float32
#
# Weights come from the hub cache or from MECHBENCH_MODEL_<NAME>=/path (see docs/models.md); a model that
# cannot be loaded fails the run (--require-models) instead of skipping, so a green GPU run means every claim
# was checked. Results go to $RESULTS (default results-gpu/): results.jsonl line by line, then report.md.
#
# A rehearsal without a GPU (the same script, plan and pytest runs, on the CPU under the simulated device):
#   MECHBENCH_SIMULATED_GPU_GIB=80 MODELS=toy-llama,toy-goat bash ci/run-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MECHBENCH_SIMULATED_GPU_GIB:-}" ]; then
  echo "ci/run-gpu.sh: REHEARSAL on the simulated GPU (MECHBENCH_SIMULATED_GPU_GIB=$MECHBENCH_SIMULATED_GPU_GIB): CPU numerics, not a GPU run" >&2
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "ci/run-gpu.sh: no NVIDIA GPU visible (nvidia-smi fails); CPU CI is .ci/run" >&2
  exit 2
fi
MODELS="${MODELS:-llama7b,vicuna7b,goat7b,float7b}"
SUITES="${SUITES:-suites/}"
RESULTS="${RESULTS:-results-gpu}"
DTYPE="${DTYPE:-float32}"
bash scripts/setup-venv.sh
# The memory and time plan of every claim on every model, from the models' shapes, before anything loads
# (mechbench/plan.py); it stops here if a claim would not fit this GPU.
# the size torch reports for cuda:0 (the simulated one's under the rehearsal)
gpu_gib=$(.venv/bin/python -c 'import mechbench, torch; print(round(torch.cuda.get_device_properties(0).total_memory / 2**30))' 2>/dev/null)
.venv/bin/mechbench plan ${MODELS//,/ } --own-circuit --dtype "$DTYPE" --batch-size auto --gpu-gib "$gpu_gib"
status=0
# One pytest per model: a failure on one model still lets the others run and report.
for model in ${MODELS//,/ }; do
  .venv/bin/python -m pytest $SUITES --model="$model" --device=cuda --dtype="$DTYPE" --require-models \
    --results-dir="$RESULTS" -p no:cacheprovider -ra || status=1
done
# Goat's and FLoat's own circuits, as the paper re-discovered them (docs/paper.md §8.2, §8.5, §8.7).
for model in goat7b float7b; do
  if [[ ",$MODELS," == *",$model,"* ]]; then
    .venv/bin/python -m pytest $SUITES --model="$model" --circuit="$model" --device=cuda --dtype="$DTYPE" --require-models \
      --results-dir="$RESULTS" -p no:cacheprovider -ra || status=1
  fi
done
.venv/bin/mechbench report --results "$RESULTS/results.jsonl" --out "$RESULTS"
exit $status
