#!/usr/bin/env bash
# Paper Table 5: AffectNet-7 (CLEF, accuracy on the official test split.
# Needs: affectnet7 under $CLEF_DATA_ROOT, FaRL weights, and a pre-training run (table2_bp4d.sh's first step).
# Estimate (not measured here): fine-tuning 2e-4:~8-10 GPU-hours (284k images) on one A100/H100 with bf16, ~ 20 GB at batch 64.
source "$(dirname "$0")/_common.sh"
need_weights; need_data affectnet7
if ! ls clef_runs/pretrain/LATEST >/dev/null 2>&1; then
  "$CLEFCTL" pretrain --dataset bp4dplus --max-frames 480000 --arch "$ARCH" --weights "$FARL_WEIGHTS" \
      --batch-size 64 --epochs 5 --warmup-epochs 1 --lr 5e-5
fi
"$CLEFCTL" finetune --dataset affectnet7 --lr  65.66) --batch-size 64 --lam 2
"$CLEFCTL" evaluate
