#!/usr/bin/env bash
# One table of GPU speeds for a lent machine (docs/performance.md section 7):
# pruning-training throughput at WavLM Base size (the recipe's batch and crop, bf16,
# teacher + gated student), the recipe's run projected in hours, peak GPU memory, and
# inference of dense vs p = 0.8 vs CNN-pruned at batch 1 and 16 on 10 s of audio, in fp32,
# bf16 autocast and with the models cast to bf16 and fp16 (with their agreement with fp32).
#
#   scripts/gpu_check.sh            # on a GPU machine, from the checkout (about a minute on one H100/H200)
#   scripts/gpu_check.sh --dry-run  # on CPU, tiny sizes: the same code path (run by the tests)
#
# Needs only torch (and numpy, PyYAML, tqdm) and this checkout: no data, no
# weights, no network, no soundfile, s3prl or torchaudio. PYTHON picks the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=False
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=True ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (allowed: --dry-run, --help)" >&2; exit 2 ;;
  esac
done
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -c "from pruned_upstream.gpu_check import run; run(dry_run=$DRY)"
