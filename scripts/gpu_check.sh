#!/usr/bin/env bash
# The prepared accelerator check (one GPU, at most 8 minutes): NOT RUN ON A GPU YET.
#
#   bash scripts/gpu_check.sh [OUT]                 on a machine with a CUDA device (default OUT: runs/gpu_check)
#   bash scripts/gpu_check.sh [OUT] --cpu-dry-run   the same steps at toy size on a CPU (tests/test_gpu_check.py)
#
# 1. the gpu preset's short form (bf16, TF32, fused AdamW; steps and evaluation cut with --set) over two
#    priors on the synthetic data set (no files or downloads needed): img/s, FLOPs/image, MFU and peak
#    memory per training stage (torch.cuda.max_memory_allocated), from results.json;
# 2. bf16 autocast against fp32: teacher, generator and tokenizer losses on one fixed batch;
# 3. the nccl path at world size 1 (torchrun --nproc_per_node=1);
# 4. OUT/gpu_check.md: the Markdown tables of all three.
# Without a CUDA device it stops at once (exit 3) unless --cpu-dry-run is given.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="runs/gpu_check"; DRY=0; WHY=""
for a in "$@"; do
  case "$a" in
    --cpu-dry-run) DRY=1 ;;
    -*) echo "gpu_check: unknown option $a (only --cpu-dry-run)" >&2; exit 2 ;;
    *) OUT="$a" ;;
  esac
done
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
TORCHRUN=("$PY" -m torch.distributed.run)

if [ "$DRY" = 0 ]; then
  WHY=$("$PY" -c "import torch; print('ok' if torch.cuda.is_available() else 'torch.cuda.is_available() is False')" 2>&1 | tail -1 || true)
  if [ "$WHY" != ok ]; then
    echo "gpu_check: no CUDA device: $PY says: ${WHY:-nothing}." >&2
    echo "gpu_check: this check needs one GPU; on a CPU run it with --cpu-dry-run to exercise the steps at toy size." >&2
    exit 3
  fi
fi
mkdir -p "$OUT"
rm -rf "$OUT/study"

if [ "$DRY" = 0 ]; then  # about 5 minutes on one GPU by design (not measured): short stages, small evaluation
  PRESET=gpu; LIMIT=1000; BUDGET=330; TINY=()
  STEPS=(teacher.steps=300 teacher.warmup=50 teacher.norm_samples=2048 pretrain.steps=200
         pretrain.distill_images=1000 dmvae.steps=300 dmvae.warmup=50 dmvae.tokenizer.gan_start=150
         dmvae.probe_every=150 dmvae.probe_n=256 generator.steps=300 generator.warmup=50 generator.checkpoints=0.5,1
         eval.ref_n=256 eval.gfid_n=256 eval.convergence_n=256 eval.seeds=0,1 eval.structure_n=500 eval.match_n=256
         eval.tsne_per_class=10 eval.batch=128 checkpoint_every=100000)
else  # toy size on a CPU: the smoke preset with the gpu preset's compute settings (recorded as not applied)
  PRESET=smoke; LIMIT=100; BUDGET=600; TINY=(--tiny)
  STEPS=(compute.precision=bf16 compute.tf32=true compute.fused_adamw=true teacher.steps=6 pretrain.steps=4
         dmvae.steps=10 dmvae.probe_every=5 dmvae.tokenizer.gan_start=5 generator.steps=4 eval.ref_n=10 eval.gfid_n=10
         eval.convergence_n=10 eval.structure_n=50 eval.match_n=20 eval.tsne_per_class=2 eval.sample_steps=2)
fi
SETS=(); for s in "${STEPS[@]}"; do SETS+=(--set "$s"); done

echo "[gpu_check] 1/3 study: preset $PRESET, priors gaussian,gmm (limit $BUDGET s)"
timeout "$BUDGET" "$PY" run_all.py --preset "$PRESET" --priors gaussian,gmm --dataset synthetic \
  --set limit="$LIMIT" "${SETS[@]}" --out "$OUT/study" || echo "[gpu_check] study exited with $? (the table says what finished)"

echo "[gpu_check] 2/3 bf16 against fp32 on a fixed batch"
timeout 60 "$PY" scripts/gpu_check.py agree "$OUT" "${TINY[@]}"

echo "[gpu_check] 3/3 distributed path at world size 1"
timeout 60 "${TORCHRUN[@]}" --standalone --nproc_per_node=1 scripts/gpu_check.py ddp "$OUT"

"$PY" scripts/gpu_check.py table "$OUT" >/dev/null
echo "[gpu_check] wrote $OUT/gpu_check.md"
