#!/usr/bin/env bash
# Paper Table 4: BP4D+, 12 AUs, 4 subject folds (CLEF: 63.1). Needs BP4D+ and FaRL weights.
# Estimate: pre-training as table2 (~10-14 GPU-hours); fine-tuning ~ 2 GPU-hours per fold, ~ 20 GB.
source "$(dirname "$0")/_common.sh"
need_weights; need_data bp4dplus
"$CLEFCTL" pretrain --dataset bp4dplus --max-frames 480000 --arch "$ARCH" --weights "$FARL_WEIGHTS" \
    --batch-size 64 --epochs 5 --warmup-epochs 1 --lr 5e-5
"$CLEFCTL" finetune --dataset bp4dplus --folds 4 --fold 1 --lr 2e-4 --batch-size 64
"$CLEFCTL" evaluate --folds 4
