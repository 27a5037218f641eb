#!/usr/bin/env bash
#SBATCH --job-name=clef-finetune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1        # one torchrun per node; it starts one clefctl process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64         # the DataLoader workers: each rank uses its share of these cores
#SBATCH --time=06:00:00
#SBATCH --output=clef-finetune-%j.log
# CLEF fine-tuning (paper Table 2, BP4D fold 1) on 2 nodes x 8 GPUs with torchrun's c10d rendezvous.
#
#   sbatch examples/slurm_finetune.sh                    # FARL_WEIGHTS, CLEF_DATA_ROOT, CLEF_WORKSPACE from the environment
#   DATASET=rafdb sbatch --nodes=1 examples/slurm_finetune.sh
#
# The workspace and the data must be on a file system every node sees (rank 0 writes the run
# folder; every rank reads the data and the checkpoint it resumes). --batch-size is per process:
# the paper's global batch of 64 is kept by giving each of the N x G processes 64 / (N x G).
# docs/scale.md explains what runs where; resubmitting with --resume continues an interrupted run.
set -euo pipefail
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "error: not inside a SLURM job: submit this with sbatch (docs/scale.md shows torchrun without SLURM)" >&2
  exit 2
fi
DATASET=${DATASET:-bp4d}
FOLD=${FOLD:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
FARL_WEIGHTS=${FARL_WEIGHTS:-farl-ep64}   # a file, or the registry name (clefctl weights get farl-ep64 first)
GPUS=${SLURM_GPUS_PER_NODE:-8}
GPUS=${GPUS##*:}                    # "h100:8" -> 8
NODES=${SLURM_NNODES:-1}
PER_RANK=$(( GLOBAL_BATCH / (NODES * GPUS) ))
if (( PER_RANK < 1 || PER_RANK * NODES * GPUS != GLOBAL_BATCH )); then
  echo "error: a global batch of $GLOBAL_BATCH does not split over $NODES x $GPUS processes (set GLOBAL_BATCH)" >&2
  exit 2
fi
export CLEF_WORKSPACE=${CLEF_WORKSPACE:-$PWD/clef_runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --kill-on-bad-exit=1 torchrun \
  --nnodes "$NODES" --nproc_per_node "$GPUS" \
  --rdzv_backend c10d --rdzv_endpoint "$head:29500" --rdzv_id "$SLURM_JOB_ID" \
  -m clefctl finetune --dataset "$DATASET" --fold "$FOLD" --weights "$FARL_WEIGHTS" --arch ViT-B-16-quickgelu \
  --batch-size "$PER_RANK" --lr 2e-4 --epochs 5 --no-progress --json
