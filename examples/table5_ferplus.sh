#!/usr/bin/env bash
# Paper Table 5: FERPlus, 8 expressions (CLEF, accuracy on the official test split.
# Needs: ferplus under $CLEF_DATA_ROOT, FaRL weights, and a pre-training run (table2_bp4d.sh's first step).
# Estimate (not measured here): fine-tuning 1e-4:~2 GPU-hours on one A100/H100 with bf16, ~ 20 GB at batch 64.
source "$(dirname "$0")/_common.sh"
need_weights; need_data ferplus
if ! ls clef_runs/pretrain/LATEST >/dev/null 2>&1; then
  "$CLEFCTL" pretrain --dataset bp4dplus --max-frames 480000 --arch "$ARCH" --weights "$FARL_WEIGHTS" \
      --batch-size 64 --epochs 5 --warmup-epochs 1 --lr 5e-5
fi
"$CLEFCTL" finetune --dataset ferplus --lr  89.74) --batch-size 64 --lam 2
"$CLEFCTL" evaluate
