"""The used-by sequence with no flags: finetune -> embed -> query -> rescore, reading the workspace."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from clefctl.cli import cli


def _run(args, ws, monkeypatch):
    monkeypatch.setenv("CLEF_WORKSPACE", ws)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.stdout


def test_query_builds_the_store_then_embed_resumes_it(synth, tmp_path, monkeypatch):
    ws = str(tmp_path / "ws")
    _run(["finetune", "--dataset", "bp4d", "--dataset-root", synth["au"], "--init", "none", "--max-steps", "1",
          "--batch-size", "16", "--json"], ws, monkeypatch)
    out = _run(["query", "lip corner pulled up", "--classes", "--json", "-k", "5"], ws, monkeypatch)
    res = json.loads(out)
    assert len(res["hits"]) == 5 and res["classes"]["nearest"][0]["class_id"].startswith("AU")
    assert 0 <= res["classes"]["precision_at_k"] <= 1
    again = json.loads(_run(["embed", "--json"], ws, monkeypatch))      # no flags: same store, already complete
    assert again["rows"] == 6 * 8 * 3 and again["embedded_now"] == 0


def test_rescore_with_an_edited_prompt_file(synth, tmp_path, monkeypatch):
    ws = str(tmp_path / "ws")
    _run(["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--init", "none", "--max-steps", "1",
          "--batch-size", "16", "--json"], ws, monkeypatch)
    _run(["embed", "--json"], ws, monkeypatch)
    from clefctl.prompts import load_prompts

    doc = load_prompts("rafdb").to_dict()
    doc["classes"].append({"id": "contempt", "name": "contempt",
                           "descriptions": ["one lip corner is tightened and raised on one side"]})
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = json.loads(_run(["rescore", "--prompts", str(path), "--out", str(tmp_path / "s.csv"), "--json"], ws,
                          monkeypatch))
    assert res["classes"][-1] == "contempt" and res["images"] == 168
    import pandas as pd

    assert "contempt" in pd.read_csv(tmp_path / "s.csv").columns
