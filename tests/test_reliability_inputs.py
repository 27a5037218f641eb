"""Issue #11: evaluation never substitutes unreadable images, listed-but-missing and badly encoded
list files are reported, one bad video does not abort predict, and explain's input checks."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clefctl.cli import main
from clefctl.data import load_dataset
from clefctl.errors import ClefError
from clefctl.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread")

N_BAD = 5


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# a small RAF-DB set with zero-byte test images, and a one-step fine-tuned model on it
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_fer(synth, tmp_path_factory):
    """synthetic-fer copied in the RAF-DB layout, the first N_BAD test images emptied (zero bytes)."""
    root = tmp_path_factory.mktemp("broken_fer") / "RAF-DB"
    shutil.copytree(synth["fer"], root)
    names = (root / "EmoLabel/list_patition_label.txt").read_text().split()[::2]
    test_stems = [n.rsplit(".", 1)[0] for n in names if n.startswith("test_")]  # label-list order
    bad = test_stems[:N_BAD]
    for stem in bad:
        (root / "Image/aligned" / f"{stem}_aligned.jpg").write_bytes(b"")
    return {"root": root, "bad": bad, "test": test_stems}


@pytest.fixture(scope="module")
def fer_run(broken_fer, tmp_path_factory):
    from clefctl.engine import TrainConfig
    from clefctl.finetune import FinetuneOptions, run_finetune

    ws = tmp_path_factory.mktemp("ws")
    cfg = dict(epochs=1, batch_size=16, max_steps=1, num_workers=0, progress=False)
    with pytest.warns(RuntimeWarning, match="unreadable image"):
        run = run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=str(broken_fer["root"]),
                                           workspace=str(ws), init=None, train=TrainConfig(**cfg)))
    return run, ws


def _own_scores(model_path, samples) -> dict[str, np.ndarray]:
    """Each sample scored on its own (a batch of one), by id."""
    from clefctl.scoring import predict_scores
    from clefctl.model import create

    model = create(weights=str(model_path))
    out = {}
    for s in samples:
        scored = predict_scores(model, [s], model.load_report.extras, "fer")
        out[s.id] = scored.scores[0]
    return out


def test_finetune_test_metrics_leave_unreadable_images_out(fer_run, broken_fer):
    run, _ = fer_run
    doc = json.loads((run.path / "test_metrics.json").read_text())
    n_test = len(broken_fer["test"])
    assert doc["test_samples"] == n_test
    assert doc["n_samples"] == n_test - N_BAD and doc["skipped"] == N_BAD
    assert doc["skipped_ids"] == broken_fer["bad"]


def test_predict_scores_rows_belong_to_their_own_images(fer_run, broken_fer):
    from clefctl.scoring import predict_scores, quick_metrics
    from clefctl.model import create

    run, _ = fer_run
    bundle = load_dataset("rafdb", root=broken_fer["root"])
    test = [s for s in bundle.samples if s.split == "test"]
    model = create(weights=str(run.model_path))
    scored = predict_scores(model, test, model.load_report.extras, "fer", batch_size=8)
    assert scored.skipped == broken_fer["bad"]
    assert [s.id for s in scored.samples] == [s.id for s in test if s.id not in broken_fer["bad"]]
    own = _own_scores(run.model_path, scored.samples[:8])
    for s, row in zip(scored.samples[:8], scored.scores[:8]):
        np.testing.assert_allclose(row, own[s.id], atol=1e-5)
    summary = quick_metrics(test, scored, "fer", bundle.classes)
    assert summary["n_samples"] == len(test) - N_BAD and summary["skipped"] == N_BAD


def test_evaluate_checkpoint_and_official_split_count_unreadable_images(fer_run, broken_fer, capsys):
    run, ws = fer_run
    n_test = len(broken_fer["test"])
    for extra in (["--checkpoint", run.model_path], []):  # single checkpoint, then the protocol driver
        code, out, err = _cli(["evaluate", *extra, "--dataset-root", broken_fer["root"], "--workspace", ws,
                               "--no-progress", "--json"], capsys)
        assert code == 0, err
        result = json.loads(out)
        assert result["n_samples"] == n_test - N_BAD and result["skipped"] == N_BAD
        assert result["skipped_ids"] == broken_fer["bad"]
        assert f"{N_BAD} unreadable test images left out" in err
    report = Workspace(str(ws)).latest("evaluate").path
    pred = pd.read_csv(report / "predictions.csv")
    assert len(pred) == n_test - N_BAD and not set(pred["id"]) & set(broken_fer["bad"])
    bundle = load_dataset("rafdb", root=broken_fer["root"])
    by_id = {s.id: s for s in bundle.samples}
    # the image right after the emptied ones (whose prediction used to fill their rows) once, its own
    nxt = broken_fer["test"][N_BAD]
    assert (pred["id"] == nxt).sum() == 1
    probs = [c for c in pred.columns if c.startswith("p_") or c.startswith("score_")]
    own = _own_scores(run.model_path, [by_id[nxt]])[nxt]
    np.testing.assert_allclose(pred.loc[pred["id"] == nxt, probs].to_numpy()[0], own, atol=1e-5)


def test_eval_dataset_never_substitutes_and_collate_lists_the_unreadable(broken_fer):
    from clefctl.data.dataset import SampleDataset, collate

    bundle = load_dataset("rafdb", root=broken_fer["root"])
    test = [s for s in bundle.samples if s.split == "test"][:N_BAD + 2]
    ds = SampleDataset(test, None, task="fer", unreadable="mark")
    with pytest.warns(RuntimeWarning, match="left out"):
        items = [ds[i] for i in range(len(test))]
    assert [it.get("unreadable", False) for it in items] == [True] * N_BAD + [False, False]
    batch = collate(items)
    assert batch["unreadable"] == list(range(N_BAD)) and batch["index"].tolist() == [N_BAD, N_BAD + 1]
    assert batch["image"].shape[0] == 2 and ds.skipped == N_BAD
    only_bad = collate(items[:2])
    assert only_bad["unreadable"] == [0, 1] and len(only_bad["index"]) == 0
    # training keeps substituting (and the store relies on it)
    train_ds = SampleDataset(test, None, task="fer")
    with pytest.warns(RuntimeWarning):
        assert train_ds[0]["index"] == N_BAD


# ----------------------------------------------------------------------------------------------
# listed but missing on disk; list files that are not UTF-8
# ----------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, rows: list[str], encoding: str = "utf-8", name: str = "m.csv") -> Path:
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(tmp_path / f"img{i}.png")
    path = tmp_path / name
    path.write_bytes(("\n".join(["path,subject,label", *rows]) + "\n").encode(encoding))
    return path


def test_listed_but_missing_images_are_counted_listed_and_warned(tmp_path, broken_fer, capsys):
    csv_path = _manifest(tmp_path, ["img0.png,a,happy", "gone1.png,b,sad", "img1.png,c,sad",
                                    "gone2.png,d,happy", "img2.png,e,happy"])
    with pytest.warns(UserWarning, match=r"2 listed images missing on disk.*first: .*gone1\.png"):
        b = load_dataset("manifest", root=csv_path)
    assert len(b) == 3 and b.skipped == 2
    assert b.missing == [str(tmp_path / "gone1.png"), str(tmp_path / "gone2.png")]

    raf = tmp_path / "raf"
    shutil.copytree(broken_fer["root"], raf)
    gone = sorted((raf / "Image/aligned").glob("train_*"))[:3]
    for p in gone:
        p.unlink()
    with pytest.warns(UserWarning, match="3 listed images missing on disk"):
        b = load_dataset("rafdb", root=raf)
    assert b.skipped == 3 and b.missing == [str(p) for p in gone]
    # the CLI shows it as one warning line
    code, out, err = _cli(["data", "folds", "manifest", "--folds", "2", "--dataset-root", csv_path], capsys)
    assert code == 0 and "warning: manifest: 2 listed images missing on disk" in err


def test_latin1_manifest_is_one_error_naming_file_and_line(tmp_path, capsys):
    csv_path = _manifest(tmp_path, ["img0.png,a,happy", "img1.png,José,sad", "img2.png,e,happy"], "latin-1")
    with pytest.raises(ClefError) as err:
        load_dataset("manifest", root=csv_path)
    assert err.value.line == 3 and err.value.path == str(csv_path)
    assert "0xe9" in str(err.value) and "UTF-8" in str(err.value)
    code, _, stderr = _cli(["data", "folds", "manifest", "--folds", "2", "--dataset-root", csv_path], capsys)
    assert code == 2
    assert f"{csv_path}:3:" in _error_line(stderr) and "save the file as UTF-8" in stderr


def test_utf16_manifest_with_bom_is_decoded_and_without_bom_refused(tmp_path, capsys):
    rows = ["img0.png,a,happy", "img1.png,José,sad", "img2.png,e,happy"]
    want = load_dataset("manifest", root=_manifest(tmp_path, rows, name="utf8.csv"))
    for encoding in ("utf-16", "utf-16-be", "utf-8-sig"):  # "utf-16" writes a little-endian BOM
        path = _manifest(tmp_path, rows, encoding, name=f"{encoding}.csv")
        if encoding == "utf-16-be":
            path.write_bytes(b"\xfe\xff" + path.read_bytes())
        got = load_dataset("manifest", root=path)
        assert [(s.path, s.subject, s.label) for s in got.samples] == \
            [(s.path, s.subject, s.label) for s in want.samples]
        assert got.samples[1].subject == "José"
    no_bom = _manifest(tmp_path, rows, "utf-16-le", name="nobom.csv")
    code, _, err = _cli(["data", "folds", "manifest", "--folds", "2", "--dataset-root", no_bom], capsys)
    assert code == 2 and f"{no_bom}:1:" in _error_line(err) and "UTF-16" in err


def test_rafdb_label_list_in_latin1_names_the_line(broken_fer, tmp_path):
    raf = tmp_path / "raf"
    shutil.copytree(broken_fer["root"], raf)
    label = raf / "EmoLabel/list_patition_label.txt"
    lines = label.read_bytes().splitlines()
    lines.insert(4, "train_0000\xe9.jpg 1".encode("latin-1"))
    label.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ClefError) as err:
        load_dataset("rafdb", root=raf)
    assert err.value.line == 5 and "UTF-8" in str(err.value)


# ----------------------------------------------------------------------------------------------
# predict: one corrupt video among good images and videos
# ----------------------------------------------------------------------------------------------


def _write_video(path: Path, frame: np.ndarray, n: int = 3) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, frame.shape[1::-1])
    for i in range(n):
        vw.write(np.roll(frame, 2 * i, axis=1))
    vw.release()


def test_predict_skips_a_corrupt_video_and_writes_the_rest(fer_run, tmp_path, capsys):
    from skimage import data

    run, ws = fer_run
    folder = tmp_path / "inputs"
    folder.mkdir()
    photo = cv2.resize(data.astronaut(), (256, 256))
    Image.fromarray(photo).save(folder / "a_photo.png")
    _write_video(folder / "b_clip.avi", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    (folder / "c_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out_csv = tmp_path / "pred.csv"
    code, out, err = _cli(["predict", folder, "--fer-checkpoint", run.model_path, "--workspace", ws,
                           "--out", out_csv, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    corrupt = str(folder / "c_corrupt.mp4")
    assert summary["skipped"] == 1 and summary["unreadable"] == [corrupt]
    assert "warning: skipped 1 unreadable input" in err and corrupt in err
    df = pd.read_csv(out_csv)
    assert summary["rows"] == len(df) == 4  # the photo and the video's 3 frames
    assert set(df["source"]) == {str(folder / "a_photo.png"), str(folder / "b_clip.avi")}


def test_predict_has_trust_checkpoint(fer_run, tmp_path, capsys):
    run, ws = fer_run
    obj = torch.load(run.model_path, weights_only=True)
    obj["args"] = argparse.Namespace(lr=1e-3)  # a Python object: needs full unpickling
    pickled = tmp_path / "pickled.pt"
    torch.save(obj, pickled)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey.png")
    argv = ["predict", tmp_path / "grey.png", "--fer-checkpoint", pickled, "--workspace", ws,
            "--out", tmp_path / "p.csv", "--json"]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and "--trust-checkpoint" in _error_line(err)
    code, out, err = _cli(argv + ["--trust-checkpoint"], capsys)
    assert code == 0, err
    assert json.loads(out)["rows"] == 1


# ----------------------------------------------------------------------------------------------
# explain: blank texts, images without a face
# ----------------------------------------------------------------------------------------------


def test_explain_rejects_blank_texts(tmp_path, capsys):
    Image.new("RGB", (64, 64), (200, 150, 120)).save(tmp_path / "face.png")
    for text in ("", "   "):
        code, out, err = _cli(["explain", tmp_path / "face.png", "--text", text, "--checkpoint", "random",
                               "--out", tmp_path / "x.png"], capsys)
        assert code == 2 and "--text is empty" in _error_line(err)
        assert not (tmp_path / "x.png").exists()


def test_explain_says_when_no_face_was_found(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(100, 140, (320, 320, 3), dtype=np.uint8)).save(tmp_path / "wall.png")
    code, out, err = _cli(["explain", tmp_path / "wall.png", "--text", "a smiling face", "--checkpoint", "random",
                           "--out", tmp_path / "wall_explain.png", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["face"] == "none found" and not doc["cropped"]
    assert "no face found" in err and "whole image" in err
