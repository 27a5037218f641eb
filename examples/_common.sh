# Shared checks for the reproduction recipes. Source it; do not run it.
# Each recipe needs a licensed data set under $CLEF_DATA_ROOT (default ./data) and the FaRL weights
# (FaRL-Base-Patch16-LAIONFace20M-ep64.pth from the FaRL authors) at $FARL_WEIGHTS.
set -euo pipefail
if [ -z "${CLEFCTL:-}" ]; then
  if command -v clefctl >/dev/null 2>&1; then CLEFCTL=clefctl
  elif [ -x .venv/bin/clefctl ]; then CLEFCTL=.venv/bin/clefctl
  else echo "error: clefctl is not installed (see the README's set-up section) or set CLEFCTL=/path/to/clefctl" >&2; exit 2
  fi
fi
FARL_WEIGHTS=${FARL_WEIGHTS:-FaRL-Base-Patch16-LAIONFace20M-ep64.pth}
ARCH=ViT-B-16-quickgelu   # FaRL is an OpenAI-CLIP ViT-B/16 with QuickGELU

need_weights() {
  if [ ! -f "$FARL_WEIGHTS" ]; then
    echo "error: FaRL weights not found at '$FARL_WEIGHTS'." >&2
    echo "  Download FaRL-Base-Patch16-LAIONFace20M-ep64.pth from the FaRL release and set FARL_WEIGHTS=/path/to/it." >&2
    exit 2
  fi
}

need_data() {  # need_data NAME: the data set must be present under the data root
  local status
  status=$("$CLEFCTL" data list --json | "$(dirname "$(command -v "$CLEFCTL")")/python" -c \
    "import json,sys; d={r['name']: r for r in json.load(sys.stdin)}; print(d['$1']['status'])")
  if [ "$status" != "present" ]; then
    echo "error: data set '$1' is $status under \$CLEF_DATA_ROOT (${CLEF_DATA_ROOT:-./data})." >&2
    echo "  It is licensed per lab; see docs/architecture.md and \`clefctl data list\` for the expected folder." >&2
    exit 2
  fi
}
