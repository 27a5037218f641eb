"""``clefctl data list`` and ``clefctl data folds``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from clefctl.cli import cli, main
from clefctl.data.folds import load_folds


def make_small_bp4d(root: Path, subjects=("F001", "F002", "M001", "M002", "M003")) -> Path:
    occ = root / "AUCoding" / "AU_OCC"
    occ.mkdir(parents=True)
    header = "0,1,2,4,6,7,10,12,14,15,17,23,24"
    for n, subject in enumerate(subjects):
        lines = [header] + [f"{f}," + ",".join(["1"] * 12) for f in range(1, n + 2)]
        (occ / f"{subject}_T1.csv").write_text("\n".join(lines) + "\n")
        for f in range(1, n + 2):
            (root / subject / "T1").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(root / subject / "T1" / f"{f:03d}.jpg")
    return root


def test_data_list_json(tmp_path):
    make_small_bp4d(tmp_path / "BP4D")
    result = CliRunner().invoke(cli, ["data", "list", "--data-root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["bp4d"]["status"] == "present" and rows["bp4d"]["present"] is True
    assert rows["bp4d"]["folder"] == str(tmp_path / "BP4D")
    assert rows["disfa"]["status"] == "missing" and rows["manifest"]["folder"] is None
    text = CliRunner().invoke(cli, ["data", "list", "--data-root", str(tmp_path)])
    assert text.exit_code == 0 and "bp4d" in text.output and "present" in text.output


def test_data_folds_generated_json_and_out(tmp_path):
    # a 5-subject BP4D copy: BP4D has 3 canonical folds, so 2 folds must be generated ones
    make_small_bp4d(tmp_path / "mycopy")
    out = tmp_path / "folds.json"
    args = ["data", "folds", "bp4d", "--folds", "2", "--dataset-root", str(tmp_path / "mycopy"),
            "--allow-generated", "--json", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["dataset"] == "bp4d" and doc["canonical"] is False and doc["samples"] == 15
    frames = sorted(f["test_frames"] for f in doc["folds"])
    assert frames == [7, 8]  # subjects of 5,4,3,2,1 frames -> {5,2,1} / {4,3}
    saved = load_folds(out)
    assert [f.test_subjects for f in saved] == [f["test_subjects"] for f in doc["folds"]]
    text = CliRunner().invoke(cli, args[:-3])
    assert text.exit_code == 0 and "fold 1: test" in text.output


@pytest.mark.parametrize("args, needle", [
    (["data", "folds", "nosuchset", "--folds", "3"], "known: bp4d"),
    (["data", "folds", "disfa", "--folds", "3", "--data-root", "{tmp}/empty"], "CLEF_DATA_ROOT"),
])
def test_data_folds_user_errors_exit_2(tmp_path, capsys, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
