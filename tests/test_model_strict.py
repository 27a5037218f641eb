"""A model loads whole or not at all (issue 22, items 3 and 11): every tensor the architecture needs,
with its shape; a fine-tuned model's classes, task and scoring tensors agree; and an exported folder
says what it is, so ``--weights DIR`` acts as the fine-tuned model it holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from clefctl import cli
from clefctl.errors import ClefError
from clefctl.model import create, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_line_error(code, err, *needles) -> str:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def fer(tmp_path_factory):
    """An untrained clef-tiny saved as a fine-tuned expression model (rafdb's 7 classes, name
    embeddings), its export (with the prompt set it names) and a face image to predict."""
    from clefctl.data.synthetic import write_fer
    from clefctl.prompts import PromptSet, load_prompts
    from clefctl.export import export_model

    d = tmp_path_factory.mktemp("strict")
    model = create("clef-tiny", seed=0)
    prompts = load_prompts("rafdb")
    meta = {"stage": "finetune", "dataset": "rafdb", "task": "fer", "classes": prompts.class_ids,
            "head": "names", "prompts_hash": prompts.hash}
    ck = save_checkpoint(d / "model.pt", model, meta, extras={"name_embeddings": model.encode_texts(
        prompts.name_texts())})
    out = d / "exported"
    export_model(str(ck), out)
    own = prompts.to_dict()                       # the export's own set differs from the shipped rafdb
    own["classes"][0]["name"] = "startled wide-eyed face"
    PromptSet.from_dict(own).save(out / "prompts.yaml")
    doc = json.loads((out / "clefctl.json").read_text())
    doc["prompts"] = "prompts.yaml"
    (out / "clefctl.json").write_text(json.dumps(doc))
    faces = write_fer(d / "faces", subjects=2, images_per_class=1, size=64, seed=0, workers=1, progress=False)
    image = sorted(Path(faces).rglob("*.jpg"))[0]
    big = d / "face.png"
    Image.open(image).convert("RGB").resize((192, 192)).save(big)
    return {"dir": d, "checkpoint": ck, "export": out, "image": big, "classes": prompts.class_ids}


def _half(src: Path, dst: Path) -> Path:
    obj = torch.load(src, weights_only=True)
    keys = list(obj["state_dict"])
    obj["state_dict"] = {k: obj["state_dict"][k] for k in keys[::2]}
    torch.save(obj, dst)
    return dst


def test_half_a_model_is_refused_naming_what_is_missing(fer, tmp_path, capsys):
    half = _half(fer["checkpoint"], tmp_path / "half.pt")
    with pytest.raises(ClefError, match="incomplete weights for clef-tiny: .* tensors the architecture needs"):
        create(weights=str(half))
    code, _, err = run_cli(["predict", fer["image"], "--fer-checkpoint", half, "--out", tmp_path / "p.csv",
                            "--workspace", tmp_path / "ws"], capsys)
    one_line_error(code, err, "half.pt", "missing from the file")
    assert not (tmp_path / "p.csv").exists()
    # one tensor short is refused as well
    obj = torch.load(fer["checkpoint"], weights_only=True)
    del obj["state_dict"]["ln_final.bias"]
    torch.save(obj, tmp_path / "short.pt")
    with pytest.raises(ClefError, match=r"1 of the \d+ tensors .* \(e.g. ln_final.bias\)"):
        create(weights=str(tmp_path / "short.pt"))


def test_farl_masked_image_modelling_keys_are_extras_not_missing(tmp_path):
    sd = dict(create("clef-tiny", seed=3).clip.state_dict())
    sd["visual.mask_token"] = torch.zeros(1, 1, 128)
    sd["visual.lm_head.weight"] = torch.zeros(64, 128)
    torch.save({"state_dict": sd}, tmp_path / "farl.pth")
    m = create("clef-tiny", weights=str(tmp_path / "farl.pth"))
    assert m.load_report.source == "farl" and m.load_report.dropped and not m.load_report.missing


def _edited_export(fer, tmp_path, edit) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(fer["export"], out)
    doc = json.loads((out / "clefctl.json").read_text())
    edit(doc)
    (out / "clefctl.json").write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("case", ["classes-cut", "top-level-cut", "extras-boom", "meta-boom", "embeddings-gone",
                                  "task-odd"])
def test_an_inconsistent_export_is_one_line(case, fer, tmp_path, capsys):
    def edit(doc):
        if case == "classes-cut":
            doc["checkpoint_meta"]["classes"] = doc["checkpoint_meta"]["classes"][:3]
            doc["classes"] = doc["classes"][:3]
        elif case == "top-level-cut":
            doc["classes"] = doc["classes"][:3]
        elif case == "extras-boom":
            doc["extras"] = "boom"
        elif case == "meta-boom":
            doc["checkpoint_meta"] = ["boom"]
        elif case == "embeddings-gone":
            doc["extras"] = {}
        elif case == "task-odd":
            doc["checkpoint_meta"]["task"] = doc["task"] = "activity"
    folder = _edited_export(fer, tmp_path, edit)
    code, _, err = run_cli(["predict", fer["image"], "--fer-checkpoint", folder, "--out", tmp_path / "p.csv",
                            "--workspace", tmp_path / "ws"], capsys)
    one_line_error(code, err, "clefctl.json" if case in ("top-level-cut", "extras-boom", "meta-boom") else "edited")
    assert not (tmp_path / "p.csv").exists()


def test_the_intact_export_predicts_its_seven_classes(fer, tmp_path, capsys):
    code, _, err = run_cli(["predict", fer["image"], "--fer-checkpoint", fer["export"], "--out",
                            tmp_path / "p.csv", "--workspace", tmp_path / "ws", "--no-timeline"], capsys)
    assert code == 0, err
    header, row = (tmp_path / "p.csv").read_text().splitlines()[:2]
    assert len(header.split(",")) == len(row.split(","))
    assert all(c in header.split(",") for c in fer["classes"])


# ---------------------------------------------------------------- a model says what it is (item 11)


def test_weights_of_a_finetuned_export_predict_as_that_model(fer, tmp_path, capsys, monkeypatch):
    """``predict --weights EXPORT`` (or ``hf-hub:ORG/NAME``) scores with the export's own head and
    classes, exactly as ``--fer-checkpoint EXPORT``; plain weights still ask for --prompts."""
    outs = {}
    snap = tmp_path / "hf" / "hub" / "models--my-lab--clef-fer" / "snapshots" / ("0" * 40)
    shutil.copytree(fer["export"], snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, args in (("checkpoint", ["--fer-checkpoint", fer["export"]]), ("weights", ["--weights", fer["export"]]),
                       ("hub", ["--weights", "hf-hub:my-lab/clef-fer"])):
        csv = tmp_path / f"{name}.csv"
        code, out, err = run_cli(["predict", fer["image"], *args, "--out", csv, "--workspace", tmp_path / "ws",
                                  "--no-timeline", "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["scoring"]["fer"].startswith("fine-tuned head")
        outs[name] = csv.read_text()
    assert outs["weights"] == outs["checkpoint"] == outs["hub"]
    assert all(c in outs["weights"].splitlines()[0].split(",") for c in fer["classes"])
    plain = save_checkpoint(tmp_path / "pretrained.pt", create("clef-tiny"), {"stage": "pretrain"})
    code, _, err = run_cli(["predict", fer["image"], "--weights", plain, "--out", tmp_path / "p.csv",
                            "--workspace", tmp_path / "ws"], capsys)
    one_line_error(code, err, "not a fine-tuned model", "--prompts")


def test_an_export_brings_its_own_prompt_set(fer):
    from clefctl.explain.inputs import prompt_set_for
    from clefctl.prompts import load_prompts
    from clefctl.weights.hub import declared_meta, model_prompts_file

    assert model_prompts_file(str(fer["export"])) == fer["export"] / "prompts.yaml"
    assert model_prompts_file(str(fer["checkpoint"])) is None      # a lone file: no run folder around it
    meta = declared_meta(str(fer["export"]))
    assert meta["stage"] == "finetune" and meta["task"] == "fer" and meta["classes"] == fer["classes"]
    assert declared_meta(str(fer["checkpoint"]))["classes"] == fer["classes"]
    model = create(weights=str(fer["export"]))
    own = load_prompts(fer["export"] / "prompts.yaml")
    assert own.hash != load_prompts("rafdb").hash and prompt_set_for(model).hash == own.hash
