#!/usr/bin/env bash
# Paper Table 2: BP4D, 12 AUs, mean F1 over the canonical subject-exclusive 3 folds (CLEF: 65.9).
# Needs: BP4D (AUCoding/AU_OCC + frames) and BP4D+ (all frames, for pre-training), FaRL weights.
# Expected cost (estimate, not measured here): pre-training 480k BP4D+ frames x 5 epochs ~ 10-14 GPU-hours
# on one A100/H100 with bf16, ~ 20 GB at batch 64; fine-tuning ~ 1.5-2 GPU-hours per fold.
source "$(dirname "$0")/_common.sh"
need_weights; need_data bp4dplus; need_data bp4d
"$CLEFCTL" pretrain --dataset bp4dplus --max-frames 480000 --arch "$ARCH" --weights "$FARL_WEIGHTS" \
    --batch-size 64 --epochs 5 --warmup-epochs 1 --lr 5e-5 --min-lr 1e-6 --weight-decay 0.01
"$CLEFCTL" finetune --dataset bp4d --fold 1 --lr 2e-4 --batch-size 64 --lam 2
"$CLEFCTL" evaluate --folds 3
