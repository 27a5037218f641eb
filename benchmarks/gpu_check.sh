#!/usr/bin/env bash
# The one GPU check: clefctl from this source tree on one GPU, in under 8 minutes, figures as JSON
# and a markdown table in the folder given first.
#
#   benchmarks/gpu_check.sh OUT              # on the GPU machine (no network needed)
#   benchmarks/gpu_check.sh OUT --dry-run    # every step tiny, on the CPU (what can be tried anywhere)
#   benchmarks/gpu_check.sh OUT --only train_step,embed   # some of the steps
#
# The GPU machine's Python 3.12 has PyTorch, torchvision, h5py, pandas, scikit-learn, OpenCV and
# huggingface_hub; what clefctl needs beyond that (open_clip_torch, ftfy, faiss, ...) is unpacked
# from the wheels benchmarks/gpu_wheels.sh downloaded beforehand into benchmarks/.wheels (only the
# packages that do not import already). Steps and figures: benchmarks/gpu_check.py. Writes
# OUT/gpu_check.json (after every step, so a run cut short keeps what it measured), OUT/gpu_check.md
# and OUT/gpu_check.log; exits 1 when a step failed.
set -uo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,14p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
out="$(mkdir -p "$1" && cd "$1" && pwd)"; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
wheels="${CLEF_WHEELS:-$here/.wheels}"
vendor="$(mktemp -d "${TMPDIR:-/tmp}/clef-vendor-XXXXXX")"
trap 'rm -rf "$vendor"' EXIT

# module to import -> wheel file prefix
declare -A need=([open_clip]=open_clip_torch [ftfy]=ftfy [wcwidth]=wcwidth [regex]=regex [click]=click
                 [rich]=rich [markdown_it]=markdown_it_py [mdurl]=mdurl [pygments]=pygments
                 [safetensors]=safetensors [faiss]=faiss_)
missing=$("$python" -c 'import importlib.util as u, sys; print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' "${!need[@]}")
for mod in $missing; do
  wheel=$(ls "$wheels/${need[$mod]}"*.whl 2>/dev/null | head -1)
  if [[ -z "$wheel" ]]; then
    echo "warning: $mod is not installed and no ${need[$mod]} wheel is in $wheels (run benchmarks/gpu_wheels.sh)" >&2
    continue
  fi
  "$python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$vendor"
  echo "unpacked $(basename "$wheel")"
done
export PYTHONPATH="$repo:$vendor${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
cd "$repo"
timeout "${CLEF_GPU_CHECK_TIMEOUT:-470}" "$python" benchmarks/gpu_check.py "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
