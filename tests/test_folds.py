"""Subject folds (canonical and generated), official splits and class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clefctl.data import bp4d, disfa
from clefctl.data.folds import (Fold, describe_folds, load_folds, make_folds, official_split,
                                samples_in_split, save_folds, split_samples)
from clefctl.data.records import DatasetBundle, Sample
from clefctl.data.class_weights import class_weights
from clefctl.errors import ClefError

# Literal copies of datasets.md, so the adapters' constants are checked, not reused.
BP4D_PART1 = "F001 F002 F008 F009 F010 F016 F018 F023 M001 M004 M007 M008 M012 M014".split()
BP4D_PART2 = "F003 F005 F011 F013 F020 F022 M002 M005 M010 M011 M013 M016 M017 M018".split()
BP4D_PART3 = "F004 F006 F007 F012 F014 F015 F017 F019 F021 M003 M006 M009 M015".split()
DISFA_PART1 = "SN001 SN002 SN009 SN010 SN016 SN026 SN027 SN030 SN032".split()
DISFA_PART2 = "SN006 SN011 SN012 SN013 SN018 SN021 SN024 SN028 SN031".split()
DISFA_PART3 = "SN003 SN004 SN005 SN007 SN008 SN017 SN023 SN025 SN029".split()


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def bundle_of(counts: dict[str, int], name="toy", canonical=None, task="au") -> DatasetBundle:
    samples = [Sample(id=f"{s}/{i}", subject=s, frame=i) for s, n in counts.items()
               for i in range(n)]
    return DatasetBundle(name=name, task=task, classes=[], samples=samples, root=Path("."),
                         prompts="", activities=[], canonical_folds=canonical)


def test_bp4d_canonical_folds_exact(tmp_path):
    root = tmp_path / "BP4D"
    occ = root / "AUCoding" / "AU_OCC"
    occ.mkdir(parents=True)
    header = "0," + ",".join(str(a) for a in bp4d.LITERATURE_AUS)
    for subject in BP4D_PART1 + BP4D_PART2 + BP4D_PART3:
        (occ / f"{subject}_T1.csv").write_text(header + "\n1," + ",".join("0" * 12) + "\n")
        _img(root / subject / "T1" / "1.jpg")
    b = bp4d.load(root)
    folds = make_folds(b, 3)
    assert [f.test_subjects for f in folds] == [BP4D_PART3, BP4D_PART2, BP4D_PART1]
    assert folds[0].train_subjects == sorted(BP4D_PART1 + BP4D_PART2)
    assert [f.index for f in folds] == [1, 2, 3]
    with pytest.raises(ClefError, match="3 canonical folds"):
        make_folds(b, 4)
    generated = make_folds(b, 4, allow_generated=True)
    assert len(generated) == 4 and sorted(len(f.test_subjects) for f in generated) == [10, 10, 10, 11]


def test_disfa_canonical_folds_exact(tmp_path):
    root = tmp_path / "DISFA"
    for subject in DISFA_PART1 + DISFA_PART2 + DISFA_PART3:
        for au in disfa.DISFA_AUS:
            p = root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("1,0\n")
        _img(root / subject / "1.png")
    folds = make_folds(disfa.load(root), 3)
    assert [f.test_subjects for f in folds] == [DISFA_PART3, DISFA_PART2, DISFA_PART1]


def test_canonical_restricted_to_present_subjects():
    b = bundle_of({"A": 1, "B": 1, "C": 1}, canonical=[["A", "X"], ["B"], ["C", "Y"]])
    assert [f.test_subjects for f in make_folds(b, 3)] == [["A"], ["B"], ["C"]]
    with pytest.raises(ClefError, match="Z"):
        make_folds(bundle_of({"A": 1, "B": 1, "C": 1, "Z": 1},
                             canonical=[["A"], ["B"], ["C"]]), 3)


def test_generated_folds_subject_exclusive_balanced_deterministic():
    counts = {"s1": 50, "s2": 40, "s3": 30, "s4": 20, "s5": 10, "s6": 10, "s7": 5, "s8": 5}
    b = bundle_of(counts)
    folds = make_folds(b, 3, seed=0)
    tests = [set(f.test_subjects) for f in folds]
    assert set().union(*tests) == set(counts) and sum(len(t) for t in tests) == len(counts)
    for f in folds:
        assert not set(f.train_subjects) & set(f.test_subjects)
        assert set(f.train_subjects) | set(f.test_subjects) == set(counts)
    # greedy by frames: 50 | 40 | 30, then 20 -> part 3 (30), 10 -> part 2 (40), ...
    frames = sorted(sum(counts[s] for s in t) for t in tests)
    assert frames == [55, 55, 60]
    assert [f.test_subjects for f in make_folds(b, 3, seed=0)] == [f.test_subjects for f in folds]
    train, test = split_samples(b, folds[0])
    assert len(train) + len(test) == len(b.samples)
    assert {s.subject for s in test} == set(folds[0].test_subjects)
    rows = describe_folds(b, folds)
    assert sum(r["test_frames"] for r in rows) == 170 and rows[0]["train_frames"] == 170 - rows[0]["test_frames"]


def test_generated_folds_seed_breaks_ties():
    b = bundle_of({f"s{i}": 3 for i in range(12)})
    layouts = {tuple(tuple(f.test_subjects) for f in make_folds(b, 3, seed=s)) for s in range(6)}
    assert len(layouts) > 1
    for layout in layouts:
        assert sorted(len(p) for p in layout) == [4, 4, 4]
    with pytest.raises(ClefError, match="too few"):
        make_folds(bundle_of({"a": 1, "b": 1}), 3)


def test_save_load_round_trip(tmp_path):
    folds = make_folds(bundle_of({"a": 3, "b": 2, "c": 2, "d": 1}), 2, seed=5)
    path = save_folds(folds, tmp_path / "runs" / "folds.json", dataset="toy", seed=5)
    assert load_folds(path) == folds
    assert json.loads(path.read_text())["dataset"] == "toy"
    assert list((tmp_path / "runs").iterdir()) == [path]  # no temporary file left behind
    path.write_text('{"format": "clefctl-folds", "folds": [{"index": 1}]}')
    with pytest.raises(ClefError, match="folds.json"):
        load_folds(path)
    path.write_text("{not json")
    with pytest.raises(ClefError, match=r"folds\.json:1:"):
        load_folds(path)


def test_official_split_keeps_val_apart():
    samples = [Sample(id=str(i), subject=str(i), split=sp, label=0)
               for i, sp in enumerate(["train", "train", "val", "test"])]
    b = DatasetBundle(name="ferplus", task="fer", classes=["x"], samples=samples, root=Path("."),
                      prompts="ferplus", activities=[], canonical_folds=None)
    train, test = official_split(b)
    assert [s.id for s in train] == ["0", "1"] and [s.id for s in test] == ["3"]
    assert [s.id for s in samples_in_split(b, "val")] == ["2"]
    with pytest.raises(ClefError, match="no official split"):
        official_split(bundle_of({"a": 2}))


def test_split_samples_rejects_overlap():
    with pytest.raises(ClefError, match="both"):
        split_samples(bundle_of({"a": 1}), Fold(1, ["a"], ["a"]))


def test_fer_class_weights_hand_computed():
    labels = [0] * 6 + [1] * 3 + [2] * 1
    samples = [Sample(id=str(i), subject=str(i), label=c, split="train")
               for i, c in enumerate(labels)]
    samples += [Sample(id="t", subject="t", label=2, split="test")] * 5  # test: ignored
    b = DatasetBundle(name="x", task="fer", classes=list("abcd"), samples=samples,
                      root=Path("."), prompts="", activities=[], canonical_folds=None)
    # N/(C n_c) with N=10, C=3: 10/18, 10/9, 10/3 -> mean 1: 1/3, 2/3, 2
    np.testing.assert_allclose(class_weights(b, "fer", 3), [1 / 3, 2 / 3, 2], rtol=1e-6)
    # class 3 has no samples: raw inverse = max of others (1/1) -> [1/6,1/3,1,1]/2.5*4
    w4 = class_weights(b, "fer", 4)
    np.testing.assert_allclose(w4, np.array([1 / 6, 1 / 3, 1, 1]) / 2.5 * 4, rtol=1e-6)
    assert w4.dtype == np.float32 and abs(w4.mean() - 1) < 1e-6


def test_au_class_weights_hand_computed():
    rows = [([1, 1, 0], [1, 1, 1]), ([1, 0, 0], [1, 1, 1]), ([0, 0, 0], [1, 1, 1]),
            ([0, 0, 0], [1, 1, 1]), ([0, 1, 0], [1, 0, 1])]  # last AU2 positive not coded
    samples = [Sample(id=str(i), subject="s", aus=np.array(a, np.float32),
                      au_mask=np.array(m, np.float32)) for i, (a, m) in enumerate(rows)]
    # r = 2/5, 1/4, 0 -> 1/r = 2.5, 4, (none -> max 4); sum 10.5; w = 3 * raw / 10.5
    w = class_weights(samples, "au", 3)
    np.testing.assert_allclose(w, np.array([2.5, 4, 4]) * 3 / 10.5, rtol=1e-6)
    with pytest.raises(ClefError, match="no training labels"):
        class_weights(samples[2:4], "au", 3)
