#!/usr/bin/env bash
# Download, on a machine with network, the wheels benchmarks/gpu_check.sh installs on a GPU machine
# without one: the packages clefctl needs beyond what that machine's Python 3.12 has (PyTorch,
# torchvision, h5py, pandas, scikit-learn, OpenCV, huggingface_hub and their own dependencies).
#
#   benchmarks/gpu_wheels.sh                 # into benchmarks/.wheels (git-ignored), with faiss-cpu
#   benchmarks/gpu_wheels.sh --faiss-gpu     # faiss-gpu-cu12 instead of faiss-cpu
#   benchmarks/gpu_wheels.sh --dest DIR
#
# Together they stay under 60 MB: open_clip_torch, ftfy, wcwidth, regex (the tokenizer), click and
# rich (+ markdown-it-py, mdurl, pygments: the command line), safetensors, and one faiss: faiss-cpu
# (19 MB) by default, or with --faiss-gpu faiss-gpu-cu12 (48 MB, which has the CPU indexes too but
# loads only where CUDA 12's libcudart/libcublas are installed, e.g. beside a CUDA 12 build of
# PyTorch; both together would be 70 MB). Versions are those clefctl is tested with. The wheels are
# for CPython 3.12 on x86-64 Linux (manylinux), whatever this machine is.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/.wheels"
faiss="faiss-cpu==1.15.1"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --faiss-gpu) faiss="faiss-gpu-cu12==1.14.1.post1"; shift ;;
    --dest) dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown option $1 (use --faiss-gpu, --dest DIR)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
mkdir -p "$dest"
rm -f "$dest"/faiss_*.whl  # one faiss at a time
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest "$dest" \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 regex==2026.11.19 click==8.5.1 rich==15.0.0 \
  markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 safetensors==0.8.0 "$faiss"
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
mb=$(( bytes / 1000000 ))
ls -1 "$dest"/*.whl
if (( bytes > 60000000 )); then
  echo "error: the wheels in $dest take $mb MB, more than the 60 MB allowed (remove old ones and run again)" >&2
  exit 1
fi
echo "$(ls "$dest"/*.whl | wc -l) wheels, $mb MB, in $dest"
