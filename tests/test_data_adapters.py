"""Data set adapters, registry and SampleDataset on tiny fixtures in the real layouts."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clefctl.data as registry
from clefctl.data import affectnet, bp4d, disfa, ferplus, folder, manifest, rafdb
from clefctl.data.dataset import SampleDataset, collate
from clefctl.data.records import DatasetBundle, Sample, open_image
from clefctl.errors import ClefError


def write_image(path: Path, size=(8, 8), color=(200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- BP4D

BP4D_HEADER = "0,1,2,3,4,6,7,10,12,14,15,17,23,24"


def make_bp4d(root: Path) -> Path:
    # F001_T1: frame 1 on disk as 0001.jpg, frame 2 as 2.jpg, frame 3 missing on disk,
    # frame 4 has every AU = 9 (dropped), frame 10 as 010.jpg.
    write_text(root / "AUCoding/AU_OCC/F001_T1.csv", "\n".join([
        BP4D_HEADER,
        "1,1,0,9,0,1,0,0,1,0,0,0,0,0",
        "2,0,9,9,1,0,0,0,0,0,0,0,0,1",
        "3,0,0,9,0,0,0,0,0,0,0,0,0,0",
        "4,9,9,9,9,9,9,9,9,9,9,9,9,9",
        "10,9,1,9,0,0,0,0,1,0,0,0,0,0",
    ]) + "\n")
    write_text(root / "AUCoding/AU_OCC/M003_T2.csv", "\n".join([
        BP4D_HEADER,
        "5,0,0,9,0,0,0,0,1,0,0,0,0,0",
    ]) + "\n")
    write_image(root / "F001/T1/0001.jpg")
    write_image(root / "F001/T1/2.jpg")
    write_image(root / "F001/T1/010.jpg")
    write_image(root / "M003/T2/00005.jpg")
    return root


def test_bp4d_labels_mask_and_numeric_frames(tmp_path):
    b = bp4d.load(make_bp4d(tmp_path / "BP4D"))
    assert b.name == "bp4d" and b.task == "au" and b.prompts == "bp4d"
    assert b.classes == ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15",
                         "AU17", "AU23", "AU24"]
    by_id = {s.id: s for s in b.samples}
    assert sorted(by_id) == ["F001/T1/1", "F001/T1/10", "F001/T1/2", "M003/T2/5"]
    assert b.skipped == 1  # frame 3 listed, missing on disk; frame 4 (all 9) left out
    s1 = by_id["F001/T1/1"]
    assert s1.path.endswith("0001.jpg") and s1.activity == "T1" and s1.subject == "F001"
    assert s1.aus.tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert s1.au_mask.tolist() == [1] * 12
    s2 = by_id["F001/T1/2"]
    assert s2.au_mask.tolist() == [1, 0] + [1] * 10  # AU2 = 9 -> not coded
    assert s2.aus[-1] == 1 and s2.aus.dtype == np.float32
    s10 = by_id["F001/T1/10"]
    assert s10.au_mask[0] == 0 and s10.aus[1] == 1 and s10.path.endswith("010.jpg")
    assert b.activities == ["T1", "T2"]
    assert b.canonical_folds[0][0] == "F004" and len(b.canonical_folds) == 3


def test_bp4d_aus_option_and_missing_column(tmp_path):
    root = make_bp4d(tmp_path / "BP4D")
    b = bp4d.load(root, aus="AU12, 1")
    assert b.classes == ["AU12", "AU1"]
    s = next(s for s in b.samples if s.id == "F001/T1/1")
    assert s.aus.tolist() == [1, 1]
    with pytest.raises(ClefError) as err:
        bp4d.load(root, aus=[1, 25])
    assert "F001_T1.csv" in str(err.value) and "AU 25" in str(err.value)


def test_bp4d_malformed_line_names_file_and_line(tmp_path):
    root = make_bp4d(tmp_path / "BP4D")
    write_text(root / "AUCoding/AU_OCC/F001_T1.csv",
               BP4D_HEADER + "\n1,1,0,9,0,1,0,0,1,0,0,0,0,0\n2,0,x,9,1,0,0,0,0,0,0,0,0,1\n")
    with pytest.raises(ClefError) as err:
        bp4d.load(root)
    assert "F001_T1.csv:3:" in str(err.value)
    write_text(root / "AUCoding/AU_OCC/F001_T1.csv", BP4D_HEADER + "\n1,1,0\n")
    with pytest.raises(ClefError, match=r"F001_T1\.csv:2: malformed"):
        bp4d.load(root)
    write_text(root / "AUCoding/AU_OCC/F001_T1.csv", BP4D_HEADER + "\n1,1,0,9,0,1,0,0,1,0,0,0,0,3\n")
    with pytest.raises(ClefError, match=r"F001_T1\.csv:2:"):
        bp4d.load(root)


def test_bp4d_missing_root_and_labels(tmp_path):
    with pytest.raises(ClefError) as err:
        bp4d.load(tmp_path / "nowhere" / "BP4D")
    msg = str(err.value)
    assert "nowhere" in msg and "--data-root" in msg and "CLEF_DATA_ROOT" in msg
    assert "--dataset-root" in msg
    (tmp_path / "BP4D").mkdir()
    with pytest.raises(ClefError, match="AU_OCC"):
        bp4d.load(tmp_path / "BP4D")


def test_bp4dplus_pretrain_lists_all_frames_evenly(tmp_path):
    root = tmp_path / "BP4D+"
    for task, n in (("T1", 6), ("T2", 2), ("T10", 6)):
        for i in range(n):
            write_image(root / "F001" / task / f"{i:04d}.jpg")
    write_image(root / "M002" / "T1" / "7.jpg")
    write_image(root / "M002" / "T11" / "1.jpg")  # not a BP4D+ task
    b = bp4d.load_plus(root, mode="pretrain")
    assert b.name == "bp4dplus" and b.task == "activity" and b.prompts == "bp4dplus"
    assert b.activities == ["T1", "T2", "T10"] and b.canonical_folds is None
    assert len(b.samples) == 15 and all(s.aus is None and s.label is None for s in b.samples)
    sampled = bp4d.load_plus(root, mode="pretrain", max_frames=9)
    per_task = {t: sum(s.activity == t for s in sampled.samples) for t in sampled.activities}
    assert per_task == {"T1": 4, "T2": 2, "T10": 3}  # T2 has only 2: its share moves on
    t10 = [s.frame for s in sampled.samples if s.activity == "T10"]
    assert t10 == [0, 2, 5]  # evenly spread over the task's frames
    assert bp4d.even_quotas({"a": 10, "b": 10}, 5) == {"a": 3, "b": 2}


# ------------------------------------------------------------------------------ DISFA

def make_disfa(root: Path, subjects=("SN001", "SN002"), frames=(1, 2, 3)) -> Path:
    for subject in subjects:
        for au in disfa.DISFA_AUS:
            lines = [f"{f},{(f + au) % 6}" for f in frames]
            write_text(root / f"ActionUnit_Labels/{subject}/{subject}_au{au}.txt",
                       "\n".join(lines) + "\n")
        for f in frames:
            write_image(root / subject / f"{f:05d}.png")
    return root


def test_disfa_intensity_threshold_and_frames(tmp_path):
    root = make_disfa(tmp_path / "DISFA")
    (root / "SN002" / "00003.png").unlink()
    write_image(root / "SN002" / "3.jpg")  # .jpg accepted, matched numerically
    (root / "SN001" / "00002.png").unlink()  # listed in labels, missing on disk
    b = disfa.load(root)
    assert b.classes == ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
    assert b.prompts == "disfa" and b.skipped == 1 and len(b.samples) == 5
    s = next(s for s in b.samples if s.id == "SN001/1")
    # intensities (1 + au) % 6 for AUs 1 2 4 6 9 12 25 26 -> 2 3 5 1 4 1 2 3
    assert s.aus.tolist() == [1, 1, 1, 0, 1, 0, 1, 1]
    assert s.au_mask.tolist() == [1] * 8
    assert any(s.path.endswith("3.jpg") for s in b.samples if s.subject == "SN002")
    assert b.canonical_folds[0][0] == "SN003"


def test_disfa_bad_inputs(tmp_path):
    root = make_disfa(tmp_path / "DISFA", subjects=("SN001",))
    (root / "ActionUnit_Labels/SN001/SN001_au9.txt").unlink()
    with pytest.raises(ClefError, match="SN001_au9.txt"):
        disfa.load(root)
    assert disfa.load(root, aus=[1, 2]).classes == ["AU1", "AU2"]
    write_text(root / "ActionUnit_Labels/SN001/SN001_au1.txt", "1,2\n2;3\n")
    with pytest.raises(ClefError, match=r"SN001_au1\.txt:2: malformed"):
        disfa.load(root, aus=[1])
    with pytest.raises(ClefError, match="DISFA folder not found"):
        disfa.load(tmp_path / "missing")


# ----------------------------------------------------------------------------- RAF-DB

def make_rafdb(root: Path) -> Path:
    lines = ["train_00001.jpg 1", "train_00002.jpg 4", "test_0001.jpg 7", "train_00003.jpg 5"]
    write_text(root / "EmoLabel/list_patition_label.txt", "\n".join(lines) + "\n")
    for stem in ("train_00001", "train_00002", "test_0001"):  # train_00003 missing
        write_image(root / f"Image/aligned/{stem}_aligned.jpg")
    return root


def test_rafdb_codes_and_split(tmp_path):
    b = rafdb.load(make_rafdb(tmp_path / "RAF-DB"))
    assert b.classes == ["surprise", "fear", "disgust", "happiness", "sadness", "anger",
                         "neutral"]
    got = {s.id: (s.label, s.split) for s in b.samples}
    assert got == {"train_00001": (0, "train"), "train_00002": (3, "train"),
                   "test_0001": (6, "test")}
    assert b.skipped == 1 and b.activities == [] and b.task == "fer"


@pytest.mark.parametrize("bad", ["train_00009.jpg 8", "train_00009.jpg 0",
                                 "train_00009.jpg", "val_00009.jpg 3"])
def test_rafdb_bad_line(tmp_path, bad):
    root = make_rafdb(tmp_path / "RAF-DB")
    write_text(root / "EmoLabel/list_patition_label.txt", f"train_00001.jpg 1\n{bad}\n")
    with pytest.raises(ClefError, match=r"list_patition_label\.txt:2:"):
        rafdb.load(root)


def test_rafdb_missing_label_file(tmp_path):
    (tmp_path / "RAF-DB").mkdir()
    with pytest.raises(ClefError, match="list_patition_label.txt"):
        rafdb.load(tmp_path / "RAF-DB")


# -------------------------------------------------------------------------- AffectNet

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,"
                    "facial_landmarks,expression,valence,arousal")


def make_affectnet(root: Path) -> Path:
    rows = [("1/a.jpg", 2, 3, 10, 8, 1), ("1/b.jpg", 0, 0, 16, 16, 7), ("2/c.jpg", 0, 0, 16, 16, 8),
            ("2/d.jpg", 0, 0, 16, 16, 9), ("2/e.jpg", 0, 0, 16, 16, 10), ("2/gone.jpg", 0, 0, 4, 4, 0)]
    text = AFFECTNET_HEADER + "\n" + "".join(
        f'{p},{x},{y},{w},{h},"1.0;2.0;3.0",{e},0.5,-0.2\n' for p, x, y, w, h, e in rows)
    write_text(root / "Manually_Annotated_file_lists/training.csv", text)
    write_text(root / "Manually_Annotated_file_lists/validation.csv",
               AFFECTNET_HEADER + '\n3/f.jpg,-4,-4,12,40,"",6,0.1,0.1\n')
    for p in ("1/a.jpg", "1/b.jpg", "2/c.jpg", "2/d.jpg", "2/e.jpg", "3/f.jpg"):
        write_image(root / "Manually_Annotated_Images" / p, size=(16, 16))
    return root


def test_affectnet_codes_box_and_splits(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet")
    b7 = registry.load_dataset("affectnet7", data_root=tmp_path)
    assert b7.name == "affectnet7" and b7.prompts == "affectnet7"
    assert b7.classes == ["neutral", "happiness", "sadness", "surprise", "fear", "disgust",
                          "anger"]
    assert [(s.id, s.label, s.split) for s in b7.samples] == [("1/a.jpg", 1, "train"),
                                                            ("3/f.jpg", 6, "test")]
    assert b7.dropped == 4 and b7.skipped == 1  # codes 7, 8, 9, 10; gone.jpg missing
    b8 = affectnet.load(root, classes=8)
    assert b8.classes[-1] == "contempt" and b8.dropped == 3
    assert [s.label for s in b8.samples] == [1, 7, 6]
    a = b8.samples[0]
    assert a.box == (2, 3, 10, 8) and open_image(a).size == (10, 8)
    f = b8.samples[-1]
    assert open_image(f).size == (8, 16)  # box clamped to the 16x16 image


def test_affectnet_missing_column_and_bad_line(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet")
    write_text(root / "Manually_Annotated_file_lists/validation.csv",
               "subDirectory_filePath,face_x\n3/f.jpg,1\n")
    with pytest.raises(ClefError, match=r"validation\.csv:1: .*expression"):
        affectnet.load(root)
    write_text(root / "Manually_Annotated_file_lists/validation.csv",
               AFFECTNET_HEADER + '\n3/f.jpg,1,1,x,4,"",6,0,0\n')
    with pytest.raises(ClefError, match=r"validation\.csv:2: malformed"):
        affectnet.load(root)


# ---------------------------------------------------------------------------- FERPlus

def make_ferplus(root: Path, votes: list[tuple[str, list[int]]], pixel_rows: int | None = None):
    n = len(votes) if pixel_rows is None else pixel_rows
    lines = ["emotion,pixels,Usage"]
    for i in range(n):
        px = " ".join(str((i * 7 + j) % 256) for j in range(48 * 48))
        usage = votes[i][0] if i < len(votes) else "Training"
        lines.append(f"0,{px},{usage}")
    write_text(root / "fer2013.csv", "\n".join(lines) + "\n")
    new = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
           "unknown,NF"]
    for i, (usage, v) in enumerate(votes):
        new.append(f"{usage},fer{i:07d}.png," + ",".join(map(str, v)))
    write_text(root / "fer2013new.csv", "\n".join(new) + "\n")
    return root


FER_VOTES = [
    ("Training", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0]),     # happiness
    ("Training", [0, 0, 0, 0, 0, 0, 0, 0, 6, 4]),     # unknown majority -> dropped
    ("PublicTest", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # NF -> dropped
    ("PublicTest", [0, 0, 4, 0, 0, 0, 0, 4, 2, 0]),   # tie surprise/contempt -> surprise
    ("PrivateTest", [0, 0, 0, 0, 0, 0, 0, 5, 5, 0]),  # tie contempt/unknown -> contempt
    ("PrivateTest", [0] * 10),                        # no votes -> dropped
]


def test_ferplus_majority_drop_and_splits(tmp_path):
    b = ferplus.load(make_ferplus(tmp_path / "FERPlus", FER_VOTES))
    assert b.classes == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                         "fear", "contempt"]
    got = [(s.id, s.label, s.split) for s in b.samples]
    assert got == [("fer0000000", 1, "train"), ("fer0000003", 2, "val"),
                   ("fer0000004", 7, "test")]
    assert b.dropped == 3
    px = b.samples[1].pixels
    assert px.shape == (48, 48) and px.dtype == np.uint8 and px[0, 1] == 22
    img = open_image(b.samples[1])
    assert img.mode == "RGB" and img.size == (48, 48)


def test_ferplus_row_mismatch_and_bad_pixels(tmp_path):
    root = make_ferplus(tmp_path / "FERPlus", FER_VOTES, pixel_rows=5)
    with pytest.raises(ClefError, match="5 image rows but.*6"):
        ferplus.load(root)
    write_text(root / "fer2013.csv", "emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(ClefError, match=r"fer2013\.csv:2: pixels"):
        ferplus.load(root)


# --------------------------------------------------------------- manifest and folder

def test_manifest_fer_names_ints_and_missing(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.png")
    absolute = write_image(tmp_path / "elsewhere" / "c.jpg")
    csv_path = write_text(tmp_path / "m.csv",
                          "path,subject,split,label\nimgs/a.jpg,s1,train,sad\n"
                          f"imgs/b.png,s2,test,happy\n{absolute},,,sad\nimgs/none.jpg,s3,,happy\n")
    b = manifest.load(csv_path)
    assert b.task == "fer" and b.classes == ["happy", "sad"] and b.prompts == ""
    assert [(s.subject, s.label, s.split) for s in b.samples] == [
        ("s1", 1, "train"), ("s2", 0, "test"), (str(absolute), 1, None)]
    assert b.skipped == 1
    fixed = manifest.load(csv_path, classes=["sad", "happy", "angry"])
    assert [s.label for s in fixed.samples] == [0, 1, 0] and len(fixed.classes) == 3
    write_text(csv_path, "path,subject,label\nimgs/a.jpg,s1,2\nimgs/b.png,s2,0\n")
    ints = manifest.load(csv_path)
    assert ints.classes == ["0", "1", "2"] and [s.label for s in ints.samples] == [2, 0]


def test_manifest_au_columns(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    csv_path = write_text(tmp_path / "m.csv",
                          "path,subject,activity,AU12,AU1\na.jpg,p1,T2,1,9\nb.jpg,p2,T1,,0\n")
    b = manifest.load(csv_path)
    assert b.task == "au" and b.classes == ["AU1", "AU12"] and b.activities == ["T1", "T2"]
    a, bb = b.samples
    assert a.aus.tolist() == [0, 1] and a.au_mask.tolist() == [0, 1]
    assert bb.aus.tolist() == [0, 0] and bb.au_mask.tolist() == [1, 0]
    write_text(csv_path, "path,subject,AU1\na.jpg,p1,2\n")
    with pytest.raises(ClefError, match=r"m\.csv:2: AU1 value"):
        manifest.load(csv_path)
    write_text(csv_path, "path,AU1\na.jpg,1\n")
    with pytest.raises(ClefError, match="'subject' missing"):
        manifest.load(csv_path)


def test_folder_adapter(tmp_path):
    write_image(tmp_path / "faces" / "sad" / "1.jpg")
    write_image(tmp_path / "faces" / "angry" / "2.png")
    write_image(tmp_path / "faces" / "angry" / "1.jpg")
    (tmp_path / "faces" / "angry" / "notes.txt").write_text("x")
    b = registry.load_dataset("folder", root=tmp_path / "faces")
    assert b.classes == ["angry", "sad"] and b.prompts == ""
    assert [(s.id, s.label, s.subject) for s in b.samples] == [
        ("angry/1.jpg", 0, "angry/1.jpg"), ("angry/2.png", 0, "angry/2.png"),
        ("sad/1.jpg", 1, "sad/1.jpg")]
    assert [s.id for s in folder.load(tmp_path / "faces").samples] == [s.id for s in b.samples]
    with pytest.raises(ClefError, match="--dataset-root"):
        registry.load_dataset("folder")
    with pytest.raises(ClefError, match="image folder not found"):
        folder.load(tmp_path / "nope")


# ------------------------------------------------------------------------- registry

def test_registry_names_and_unknown(tmp_path):
    names = registry.available_datasets()
    assert set(names) == {"bp4d", "bp4dplus", "disfa", "rafdb", "affectnet7", "affectnet8",
                          "ferplus", "manifest", "folder", "synthetic-au", "synthetic-fer"}
    with pytest.raises(ClefError) as err:
        registry.load_dataset("bp5d")
    assert "bp5d" in str(err.value) and "bp4d" in str(err.value) and "synthetic-fer" in str(err.value)


def test_registry_data_root_and_override(tmp_path, monkeypatch):
    make_bp4d(tmp_path / "BP4D")
    make_rafdb(tmp_path / "elsewhere")
    monkeypatch.setenv("CLEF_DATA_ROOT", str(tmp_path))
    assert len(registry.load_dataset("bp4d").samples) == 4
    assert registry.load_dataset("BP4D", aus=[1]).classes == ["AU1"]
    b = registry.load_dataset("rafdb", root=tmp_path / "elsewhere")
    assert b.root == tmp_path / "elsewhere" and b.prompts == "rafdb"
    with pytest.raises(ClefError) as err:
        registry.load_dataset("disfa")
    assert str(tmp_path / "DISFA") in str(err.value) and "CLEF_DATA_ROOT" in str(err.value)
    status = {r["name"]: r["status"] for r in registry.describe_datasets()}
    assert status["bp4d"] == "present" and status["disfa"] == "missing"


def test_registry_synthetic_sets_use_bp4d_and_rafdb_adapters(tmp_path, monkeypatch):
    calls = []

    def ensure(kind, root=None, **size):
        calls.append((kind, size))
        out = tmp_path / kind
        if kind == "synthetic-au":
            header = "0," + ",".join(str(a) for a in registry.SYNTHETIC_AUS)
            write_text(out / "AUCoding/AU_OCC/S01_T1.csv",
                       header + "\n1," + ",".join("1" for _ in registry.SYNTHETIC_AUS) + "\n")
            write_image(out / "S01/T1/1.jpg")
        else:
            make_rafdb(out)
        return out

    fake = types.SimpleNamespace(ensure=ensure)
    monkeypatch.setitem(sys.modules, "clefctl.data.synthetic", fake)
    monkeypatch.setattr(registry, "synthetic", fake, raising=False)
    au = registry.load_dataset("synthetic-au", subjects=1)
    assert au.name == "synthetic-au" and au.prompts == "synthetic-au"
    assert au.classes == [f"AU{a}" for a in registry.SYNTHETIC_AUS] and au.canonical_folds is None
    fer = registry.load_dataset("synthetic-fer")
    assert fer.name == "synthetic-fer" and fer.prompts == "synthetic-fer" and len(fer.samples) == 3
    assert calls == [("synthetic-au", {"subjects": 1}), ("synthetic-fer", {})]


# -------------------------------------------------------------------- SampleDataset

def test_sample_dataset_skips_unreadable_images(tmp_path):
    good = write_image(tmp_path / "good.jpg", size=(6, 4))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = write_text(tmp_path / "junk.png", "not an image")
    samples = [Sample(id="e", subject="a", path=str(empty), label=0),
               Sample(id="j", subject="b", path=str(junk), label=1),
               Sample(id="g", subject="c", path=str(good), label=2)]
    ds = SampleDataset(samples, transform=None, classes_count=3, task="fer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[0]
        again = ds[1]
    assert item["index"] == 2 and item["label"] == 2 and again["index"] == 2
    assert ds.skipped == 2
    assert sum("unreadable image" in str(w.message) for w in caught) == 1
    assert item["image"].shape == (3, 4, 6) and item["activity"] == -1
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"RANK": "1"}), warnings.catch_warnings(record=True) as other_rank:
        warnings.simplefilter("always")
        rank1 = SampleDataset(samples, transform=None, classes_count=3, task="fer")
        assert rank1[0]["index"] == 2 and rank1.skipped == 2    # counted, not said: rank 0 says it
    assert not [w for w in other_rank if "unreadable image" in str(w.message)]
    assert item["aus"].shape == (3,) and float(item["au_mask"].sum()) == 0


def test_sample_dataset_two_views_collate_and_pixels(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    samples = [Sample(id=str(i), subject="s", pixels=grey, activity=a,
                      aus=np.array([1, 0], np.float32), au_mask=np.array([1, 0], np.float32),
                      box=(-2, -2, 6, 20))
               for i, a in enumerate(["T2", "T1"])]

    def two_views(img):
        t = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
        return t, t.flip(-1)

    ds = SampleDataset(samples, transform=two_views, classes_count=2, task="au",
                       activities=["T1", "T2"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert isinstance(batch["image"], tuple) and len(batch["image"]) == 2
    assert batch["image"][0].shape == (2, 3, 8, 4)  # box clamped to x 0-4, y 0-8
    assert batch["activity"].tolist() == [1, 0] and batch["label"].tolist() == [-1, -1]
    assert batch["aus"].shape == (2, 2) and batch["au_mask"][:, 1].sum() == 0
    default = torch.utils.data.default_collate([ds[0], ds[1]])
    assert len(default["image"]) == 2 and default["image"][1].shape == (2, 3, 8, 4)


def test_bundle_is_a_plain_record(tmp_path):
    b = DatasetBundle(name="x", task="fer", classes=["a"], samples=[Sample(id="1", subject="")],
                      root=tmp_path, prompts="", activities=[], canonical_folds=None)
    assert b.skipped == 0 and b.dropped == 0 and len(b) == 1 and b.subjects == ["1"]


def test_class_names_match_shipped_prompt_sets():
    import yaml

    prompts_dir = Path(__file__).resolve().parents[1] / "prompts"
    expected = {
        "bp4d": [f"AU{a}" for a in bp4d.LITERATURE_AUS],
        "bp4dplus": [f"AU{a}" for a in bp4d.LITERATURE_AUS],
        "disfa": [f"AU{a}" for a in disfa.DISFA_AUS],
        "rafdb": rafdb.RAFDB_CLASSES,
        "synthetic-fer": rafdb.RAFDB_CLASSES,
        "synthetic-au": [f"AU{a}" for a in registry.SYNTHETIC_AUS],
        "ferplus": ferplus.FERPLUS_CLASSES,
        "affectnet7": affectnet.AFFECTNET_CLASSES[:7],
        "affectnet8": affectnet.AFFECTNET_CLASSES,
    }
    for name, classes in expected.items():
        doc = yaml.safe_load((prompts_dir / f"{name}.yaml").read_text(encoding="utf-8"))
        assert [c["id"] for c in doc["classes"]] == classes, name
