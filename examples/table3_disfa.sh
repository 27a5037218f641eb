#!/usr/bin/env bash
# Paper Table 3: DISFA, 8 AUs (intensity >= 2), canonical 3 folds, starting from the BP4D model (CLEF: 64.8).
# Needs: DISFA (ActionUnit_Labels + extracted frames), a BP4D fine-tuning run in this workspace
# (run table2_bp4d.sh first). Estimate: ~ 1 GPU-hour per fold, ~ 20 GB at batch 64.
source "$(dirname "$0")/_common.sh"
need_data disfa
BP4D_MODEL=${BP4D_MODEL:-$(ls -d clef_runs/finetune/*bp4d-text-fold1* 2>/dev/null | tail -n 1)/model.pt}
if [ ! -f "$BP4D_MODEL" ]; then
  echo "error: no BP4D fine-tuned model found (set BP4D_MODEL=/path/to/model.pt or run table2_bp4d.sh)" >&2; exit 2
fi
"$CLEFCTL" finetune --dataset disfa --fold 1 --weights "$BP4D_MODEL" --lr 1e-4 --batch-size 64 --lam 2
"$CLEFCTL" evaluate --folds 3
