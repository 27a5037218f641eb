"""benchmarks/gpu_check.sh is ready to run although this machine has no GPU: its wrapper (packages
that import already are not unpacked again), the JSON written step by step and the markdown table,
on the CPU with the cheap steps; the whole dry run (every step tiny) was run by hand (docs/scale.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_writes_json_and_a_table_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CLEF_WHEELS=str(tmp_path / "no-wheels"))
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out"), "--dry-run",
                           "--only", "environment,faiss,prepare"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["dry_run"] is True and set(result["steps"]) == {"environment", "faiss", "prepare"}
    assert all(step["ok"] for step in result["steps"].values())
    assert result["steps"]["faiss"]["recall_at_10"] > 0.5 and result["steps"]["environment"]["torch"]
    assert result["steps"]["prepare"]["counts"]["face"] == 9 and result["steps"]["prepare"]["frames_per_s"] > 0
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| faiss | faiss " in table and "| train_step | not run |" in table and "DRY RUN" in table
    assert (tmp_path / "out" / "gpu_check.log").is_file() and "unpacked" not in done.stdout
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out2"), "--only", "nope"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "unknown step" in bad.stdout + bad.stderr
