"""Reproduction recipes fail clearly (exit 2, one message) without the licensed data or FaRL weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("table*.sh"))


def test_there_is_a_recipe_per_paper_table():
    names = {p.stem for p in EXAMPLES}
    assert {"table2_bp4d", "table3_disfa", "table4_bp4dplus", "table5_rafdb", "table5_affectnet7",
            "table5_affectnet8", "table5_ferplus"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_recipe_fails_clearly_without_data(script, tmp_path):
    env = dict(os.environ, CLEF_DATA_ROOT=str(tmp_path / "data"), FARL_WEIGHTS=str(tmp_path / "FaRL.pth"),
               CLEFCTL=str(Path(sys.executable).with_name("clefctl")))
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert ("FaRL weights" in r.stderr) or ("is missing under" in r.stderr)
