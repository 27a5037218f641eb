"""Synthetic faces: determinism, exact BP4D / RAF-DB layouts, learnability, ensure(), CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from clefctl.cli import cli, main
from clefctl.data import synthetic as S
from clefctl.errors import ClefError


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def au_set(tmp_path_factory) -> Path:
    """8 subjects x 8 tasks x 8 frames at 64 px (512 frames): layout and learnability."""
    return S.write_au(tmp_path_factory.mktemp("au") / "synthetic-au", subjects=8, tasks=8,
                      frames_per_task=8, size=64, seed=5, workers=1)


@pytest.fixture(scope="module")
def fer_set(tmp_path_factory) -> Path:
    """12 identities, 40 images per class (30 train / 10 test from 3 other identities), 64 px."""
    return S.write_fer(tmp_path_factory.mktemp("fer") / "synthetic-fer", subjects=12,
                       images_per_class=40, size=64, seed=5, test_fraction=0.25, workers=1)


# ---------------------------------------------------------------- determinism

def test_same_seed_identical_files_different_seed_differs(tmp_path):
    kw = dict(subjects=2, tasks=2, frames_per_task=3, size=48)
    a = tree_hash(S.write_au(tmp_path / "a", seed=0, workers=1, **kw))
    b = tree_hash(S.write_au(tmp_path / "b", seed=0, workers=2, **kw))  # worker count is irrelevant
    c = tree_hash(S.write_au(tmp_path / "c", seed=1, workers=1, **kw))
    assert a == b and a != c
    fk = dict(subjects=4, images_per_class=3, size=48)
    f1 = tree_hash(S.write_fer(tmp_path / "f1", seed=3, **fk))
    f2 = tree_hash(S.write_fer(tmp_path / "f2", seed=3, **fk))
    f3 = tree_hash(S.write_fer(tmp_path / "f3", seed=4, **fk))
    assert f1 == f2 and f1 != f3


# ---------------------------------------------------------------- layouts

def test_bp4d_layout(au_set):
    occ = au_set / "AUCoding" / "AU_OCC"
    csvs = sorted(p.name for p in occ.glob("*.csv"))
    subjects = ["F001", "F002", "F003", "F004", "M001", "M002", "M003", "M004"]
    assert csvs == sorted(f"{s}_T{t}.csv" for s in subjects for t in range(1, 9))
    header = (occ / "F001_T1.csv").read_text().splitlines()[0]
    assert header == "0," + ",".join(str(a) for a in S.AU_IDS)
    meta = json.loads((au_set / S.SIDECAR).read_text())
    by_path = {e["path"]: e for e in meta["images"]}
    assert len(by_path) == 8 * 8 * 8
    for csv in occ.glob("*.csv"):
        subject, task = csv.stem.split("_")
        df = pd.read_csv(csv)
        assert list(df.columns) == ["0"] + [str(a) for a in S.AU_IDS]
        assert all(dt.kind == "i" for dt in df.dtypes)
        assert df["0"].tolist() == list(range(S.FIRST_FRAME, S.FIRST_FRAME + 8))
        assert set(np.unique(df.iloc[:, 1:].to_numpy())) <= {0, 1}
        for _, row in df.iterrows():
            rel = f"{subject}/{task}/{int(row['0']):04d}.jpg"
            entry = by_path[rel]
            occ_sidecar = [int(entry["au_intensity"][f"AU{a}"] >= S.OCCURRENCE_THRESHOLD)
                           for a in S.AU_IDS]
            assert occ_sidecar == row.tolist()[1:]
    with Image.open(au_set / "M004" / "T8" / f"{S.FIRST_FRAME + 7}.jpg") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    # every AU occurs and is absent somewhere; tasks shift the AU distribution
    frames = pd.concat([pd.read_csv(p).assign(task=p.stem[-2:]) for p in occ.glob("*.csv")])
    rates = frames[[str(a) for a in S.AU_IDS]].mean()
    assert ((rates > 0.03) & (rates < 0.7)).all(), rates.to_dict()
    by_task = frames.groupby("task")[["12", "4"]].mean()
    assert by_task.loc["T1", "12"] > 0.5 > by_task.loc["T2", "12"]
    assert by_task.loc["T7", "4"] > 0.5 > by_task.loc["T1", "4"]
    # region boxes: every part present, inside the image
    for e in meta["images"][:50]:
        assert set(e["regions"]) == set(S.PARTS)
        for boxes in e["regions"].values():
            for x0, y0, x1, y1 in boxes:
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert meta["au_regions"] == S.au_regions()
    assert set(p for parts in S.au_regions().values() for p in parts) <= set(S.PARTS)


def test_rafdb_layout_and_subject_disjoint_split(fer_set):
    lines = (fer_set / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == 7 * 40
    pat = re.compile(r"^(train_\d{5}|test_\d{4})\.jpg [1-7]$")
    assert all(pat.match(line) for line in lines), lines[:3]
    names = [line.split()[0] for line in lines]
    train = [n for n in names if n.startswith("train_")]
    test = [n for n in names if n.startswith("test_")]
    assert train == [f"train_{i:05d}.jpg" for i in range(1, 7 * 30 + 1)]
    assert test == [f"test_{i:04d}.jpg" for i in range(1, 7 * 10 + 1)]
    labels = [int(line.split()[1]) for line in lines]
    assert sorted(labels) == sorted(list(range(1, 8)) * 40)
    assert labels[:30] != sorted(labels[:30])  # names are not grouped by class
    for name in names:
        with Image.open(fer_set / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg") as im:
            assert im.size == (64, 64)
    meta = json.loads((fer_set / S.SIDECAR).read_text())
    ids = {e["name"]: e["identity"] for e in meta["images"]}
    train_ids, test_ids = {ids[n] for n in train}, {ids[n] for n in test}
    assert train_ids and test_ids and not train_ids & test_ids
    assert len(test_ids) == 3
    assert {e["name"]: e["label"] for e in meta["images"]} == dict(
        (line.split()[0], int(line.split()[1])) for line in lines)


def test_load_dataset_reads_the_synthetic_layouts(tmp_path):
    from clefctl.data import load_dataset

    # (the registry passes ``tasks`` to the adapter as a task filter, so keep 8 tasks here)
    au = load_dataset("synthetic-au", root=tmp_path / "au", subjects=2, frames_per_task=2,
                      size=48)
    assert len(au.samples) == 2 * 8 * 2 and au.task == "au" and "AU12" in au.classes
    assert sorted({s.subject for s in au.samples}) == ["F001", "M001"]
    fer = load_dataset("synthetic-fer", root=tmp_path / "fer", subjects=4, images_per_class=3,
                       size=48)
    assert fer.task == "fer" and fer.classes[0].lower().startswith("surprise")
    assert len(fer.samples) == 21
    # A set the user made at their own size is read as it is, never regenerated at the defaults.
    stamp = (tmp_path / "au" / S.SIDECAR).stat().st_mtime_ns
    again = load_dataset("synthetic-au", root=tmp_path / "au")
    assert len(again.samples) == 2 * 8 * 2 and (tmp_path / "au" / S.SIDECAR).stat().st_mtime_ns == stamp
    assert len(load_dataset("synthetic-fer", root=tmp_path / "fer").samples) == 21
    out = S.contact_sheet(au, tmp_path / "bundle_sheet.png", n=4)
    with Image.open(out) as im:
        assert im.size[0] > 4 * 96


# ---------------------------------------------------------------- drawing and sequences

@pytest.mark.parametrize("angle", [0.0, 7.0])
def test_each_au_changes_pixels_inside_its_regions(angle):
    ident = S.make_identity("M001", np.random.default_rng(2))
    pose = S.Pose(angle=angle, scale=1.05, dx=0.02, dy=-0.02)
    base, boxes = S.render_face(ident, {}, pose, 96, seed=1, **S.AU_FRAMING)
    base = np.asarray(base, dtype=float)
    regions = S.au_regions()
    for au in S.AU_IDS:
        img, boxes = S.render_face(ident, {au: 1.0}, pose, 96, seed=1, **S.AU_FRAMING)
        diff = np.abs(np.asarray(img, dtype=float) - base).sum(2)
        assert diff.sum() > 2000, f"AU{au} barely changes the image"
        mask = np.zeros_like(diff, dtype=bool)
        for part in regions[f"AU{au}"]:
            for x0, y0, x1, y1 in boxes[part]:
                mask[max(0, int(y0) - 3):int(y1) + 4, max(0, int(x0) - 3):int(x1) + 4] = True
        inside = diff[mask].sum() / diff.sum()
        assert inside > 0.6, f"AU{au}: only {inside:.2f} of the change inside {regions[f'AU{au}']}"


def test_au_sequences_are_smooth_and_bimodal():
    rng = np.random.default_rng(0)
    seq = np.concatenate([S.au_sequence("T3", 200, rng) for _ in range(3)])
    assert seq.shape == (600, len(S.AU_IDS))
    assert ((seq < 0.21) | (seq >= 0.6)).all()  # inactive near 0, active clearly visible
    step = np.abs(np.diff(seq, axis=0)).mean()
    shuffled = np.abs(np.diff(seq[rng.permutation(len(seq))], axis=0)).mean()
    assert step < 0.5 * shuffled
    j = {a: i for i, a in enumerate(S.AU_IDS)}
    on = seq >= 0.5
    assert on[:, j[26]].mean() > 0.4 and on[:, j[14]].mean() < 0.25  # T3: startle
    for a, b in S.EXCLUSIVE:
        assert not (on[:, j[a]] & on[:, j[b]]).any()


def test_expression_prototypes():
    rng = np.random.default_rng(0)
    j = {a: i for i, a in enumerate(S.AU_IDS)}
    happy = np.array([S.expression_aus("happiness", rng) for _ in range(50)]) >= 0.5
    assert happy[:, j[12]].mean() > 0.85 and happy[:, j[4]].mean() == 0
    neutral = np.array([S.expression_aus("neutral", rng) for _ in range(50)])
    assert (neutral < 0.5).all()
    with pytest.raises(ClefError, match="unknown expression"):
        S.expression_aus("contempt", rng)


# ---------------------------------------------------------------- learnability

def _part_crop(img: Image.Image, boxes: list[list[float]], px: int) -> np.ndarray:
    b = np.array(boxes)
    box = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
    return np.asarray(img.resize((px, px), Image.BILINEAR, box=box), dtype=np.float32).ravel()


def test_au12_and_au4_learnable_on_held_out_subjects(au_set):
    """Logistic regression on 24x24 grey pixels of the AU's face parts (boxes from the sidecar,
    as a face aligner would give them); trained on 6 subjects, tested on F004 and M004."""
    meta = json.loads((au_set / S.SIDECAR).read_text())
    regions = S.au_regions()
    grey = {e["path"]: Image.open(au_set / e["path"]).convert("L") for e in meta["images"]}
    held_out = np.array([e["subject"] in ("F004", "M004") for e in meta["images"]])
    scores = {}
    for au in ("AU12", "AU4"):
        X = np.stack([_part_crop(grey[e["path"]], [b for p in regions[au]
                                                   for b in e["regions"][p]], 24)
                      for e in meta["images"]]) / 255.0
        y = np.array([e["au_intensity"][au] >= S.OCCURRENCE_THRESHOLD for e in meta["images"]])
        mu, sd = X[~held_out].mean(0), X[~held_out].std(0) + 1e-3
        X = (X - mu) / sd
        clf = LogisticRegression(C=0.01, max_iter=2000, class_weight="balanced")
        clf.fit(X[~held_out], y[~held_out])
        assert 0.1 < y[held_out].mean() < 0.9
        scores[au] = balanced_accuracy_score(y[held_out], clf.predict(X[held_out]))
    print("held-out balanced accuracy:", scores)
    assert scores["AU12"] > 0.8 and scores["AU4"] > 0.8, scores


def test_expressions_learnable_on_held_out_identities(fer_set):
    """Logistic regression on whole 24x24 grey images; test identities never seen in training."""
    lines = (fer_set / "EmoLabel" / "list_patition_label.txt").read_text().split("\n")
    X, y, is_test = [], [], []
    for line in filter(None, lines):
        name, label = line.split()
        with Image.open(fer_set / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg") as im:
            X.append(np.asarray(im.convert("L").resize((24, 24), Image.BILINEAR),
                                dtype=np.float32).ravel() / 255.0)
        y.append(int(label))
        is_test.append(name.startswith("test_"))
    X, y, is_test = np.array(X), np.array(y), np.array(is_test)
    X = (X - X[~is_test].mean(0)) / (X[~is_test].std(0) + 1e-3)
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(X[~is_test], y[~is_test])
    acc = float((clf.predict(X[is_test]) == y[is_test]).mean())
    print("held-out expression accuracy:", acc)
    assert acc > 0.35, acc  # chance is 1/7; about 0.67 here


# ---------------------------------------------------------------- ensure

def test_ensure_generates_reuses_regenerates(tmp_path, monkeypatch):
    root = tmp_path / "sets" / "au"
    kw = dict(subjects=2, tasks=1, frames_per_task=2, size=48)
    path, made = S.generate("synthetic-au", root, **kw)
    assert path == root and made
    stamp = (root / S.SIDECAR).stat().st_mtime_ns
    assert S.ensure("synthetic-au", root, **kw) == root
    assert (root / S.SIDECAR).stat().st_mtime_ns == stamp  # reused
    path, made = S.generate("synthetic-au", root, **{**kw, "frames_per_task": 3})
    assert made and S.read_sidecar(root)["params"]["frames_per_task"] == 3
    assert len(list((root / "F001" / "T1").glob("*.jpg"))) == 3
    leftovers = [p.name for p in root.parent.iterdir() if p.name not in ("au", ".au.lock")]
    assert leftovers == []  # no temp folders left
    # default root: the cache
    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    fer = S.ensure("synthetic-fer", subjects=3, images_per_class=2, size=48)
    assert fer == tmp_path / "cache" / "synthetic-fer" and (fer / S.SIDECAR).is_file()


def test_ensure_user_errors(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    with pytest.raises(ClefError, match="not a synthetic data set"):
        S.ensure("synthetic-au", mine, subjects=2, tasks=1, frames_per_task=1, size=48)
    assert (mine / "keep.txt").read_text() == "user data"
    with pytest.raises(ClefError, match="unknown option"):
        S.ensure("synthetic-au", tmp_path / "x", frames=3)
    with pytest.raises(ClefError, match="unknown synthetic"):
        S.ensure("synthetic-xyz", tmp_path / "x")
    with pytest.raises(ClefError, match="tasks must be"):
        S.write_au(tmp_path / "y", subjects=2, tasks=9)
    with pytest.raises(ClefError, match="test_fraction"):
        S.write_fer(tmp_path / "z", test_fraction=1.0)


# ---------------------------------------------------------------- CLI and contact sheets

def test_cli_synth_and_sheet(tmp_path):
    runner = CliRunner()
    args = ["data", "synth", "--out", str(tmp_path), "--subjects", "2", "--frames", "2",
            "--size", "48", "--seed", "3", "--json"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    rows = {r["kind"]: r for r in json.loads(res.stdout)["datasets"]}
    assert rows["synthetic-au"]["images"] == 2 * 8 * 2 and rows["synthetic-au"]["generated"]
    assert rows["synthetic-fer"]["images"] == 7 * 2 and rows["synthetic-fer"]["params"]["seed"] == 3
    assert (tmp_path / "synthetic-au" / "AUCoding" / "AU_OCC" / "M001_T8.csv").is_file()
    again = runner.invoke(cli, args[:-1] + ["--kind", "synthetic-fer"])
    assert again.exit_code == 0 and "up to date" in again.output
    for kind in ("synthetic-au", "synthetic-fer"):
        out = tmp_path / f"{kind}.png"
        res = runner.invoke(cli, ["data", "sheet", "--dataset", kind, "--root",
                                  str(tmp_path / kind), "--out", str(out), "--n", "6", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["out"] == str(out)
        with Image.open(out) as im:
            assert im.format == "PNG" and im.size[0] >= 6 * 96


def test_cli_user_error_exit_code(tmp_path):
    (tmp_path / "synthetic-au").mkdir()
    (tmp_path / "synthetic-au" / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--kind", "synthetic-au", "--out", str(tmp_path),
              "--subjects", "2", "--frames", "1"])
    assert exc.value.code == 2
