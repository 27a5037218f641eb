"""Prompt files a user gives (issue 22, item 13): a file that is not UTF-8 is named with the line and
byte offset of its first bad byte; a prompt set of the other task is refused by finetune before
anything is written."""

from __future__ import annotations

import pytest
import yaml

from clefctl import cli
from clefctl.errors import ClefError
from clefctl.prompts import load_prompts


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_a_non_utf8_prompt_file_names_its_line_and_byte(synth, tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    text = "dataset: mine\ntask: fer\nclasses:\n  - id: joie\n    name: joie \xe9clatante\n"
    bad.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(ClefError) as exc:
        load_prompts(bad)
    line = str(exc.value)
    assert line.startswith(f"{bad}:5: ") and "0xe9" in line and f"byte offset {offset}" in line
    code, _, err = run_cli(["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--prompts", bad,
                            "--workspace", tmp_path / "ws"], capsys)
    assert code == 2 and err.count("error: ") == 1 and f"{bad}:5:" in err and "Traceback" not in err


def test_finetune_refuses_a_prompt_set_of_the_other_task(synth, tmp_path, capsys):
    doc = yaml.safe_load(load_prompts("rafdb").to_yaml())
    doc["task"] = "au"                              # the expression classes, declared as AUs
    au_like = tmp_path / "au-like.yaml"
    au_like.write_text(yaml.safe_dump(doc))
    ws = tmp_path / "ws"
    code, _, err = run_cli(["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--prompts", au_like,
                            "--workspace", ws, "--max-steps", "1"], capsys)
    assert code == 2 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert "is for task au" in line and "fer labels" in line and "--prompts rafdb" in line
    assert not (ws / "finetune").exists() or not any((ws / "finetune").iterdir())
