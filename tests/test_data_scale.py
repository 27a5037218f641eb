"""Data sets at BP4D+'s scale (issue 15): compact sample tables, the column-wise AU label reader
(same result as the row reader, same errors), the index cache (reused while label files and frame
folders are unchanged, rebuilt when they change) and reduced JPEG decoding. The 1.5M-frame timing
is benchmarks/index_scale.py's."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
from PIL import Image

from clefctl.data import bp4d, load_dataset, sample_index
from clefctl.data.images import decode_size_for, read_cropped, read_reduced, read_rgb
from clefctl.data.dataset import SampleDataset
from clefctl.data.records import Sample, open_image
from clefctl.data.table import SampleTable
from clefctl.errors import ClefError


def _same(a: Sample, b: Sample) -> None:
    for f in dataclasses.fields(Sample):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y and type(x) is type(y), (f.name, x, y)


def _mixed_samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(300):
        out.append(Sample(id=f"F{i % 7:03d}/T{i % 3}/{i}", subject=f"F{i % 7:03d}", path=f"/d/F{i % 7:03d}/{i}.jpg",
                          activity=f"T{i % 3}" if i % 5 else None, frame=i if i % 4 else None,
                          split=("train", "test", None)[i % 3], label=i % 6 if i % 2 else None,
                          aus=(rng.random(12) > 0.5).astype(np.float32), au_mask=np.ones(12, np.float32),
                          box=(i, i + 1, 30, 40) if i % 3 == 0 else None))
    out.append(Sample(id="pix-a", subject="", pixels=rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)))
    out.append(Sample(id="pix-b", subject="", pixels=rng.integers(0, 255, (3, 4), dtype=np.uint8)))
    return out


def test_a_sample_reading_another_file_keeps_every_other_field():
    for a in _mixed_samples():
        b = a.reading("/cache/crops/x.jpg")
        assert b.path == "/cache/crops/x.jpg" and b.box is None
        _same(dataclasses.replace(a, path=b.path, box=None), b)


def test_sample_table_gives_back_every_field_and_is_compact(tmp_path):
    samples = _mixed_samples()
    table = SampleTable.from_samples(samples)
    for a, b, c in zip(samples, table, table.to_samples()):
        _same(a, b)
        _same(a, c)
    table.save(tmp_path / "t.npz", extra={"note": 1})
    loaded, extra = SampleTable.load(tmp_path / "t.npz")
    assert extra == {"note": 1} and len(loaded) == len(samples)
    for a, b in zip(samples, loaded):
        _same(a, b)
    shared = table.to_samples()
    assert not shared[0].aus.flags.writeable            # equal AU patterns share one read-only array
    bp4d_like = [Sample(id=f"F{i % 140:03d}/T{i % 10}/{i}", subject=f"F{i % 140:03d}",
                        path=f"/data/BP4D+/F{i % 140:03d}/T{i % 10}/{i}.jpg", activity=f"T{i % 10}", frame=i,
                        aus=np.zeros(12, np.float32), au_mask=np.ones(12, np.float32)) for i in range(5000)]
    assert SampleTable.from_samples(bp4d_like).nbytes / 5000 < 120   # vs ~660 bytes as Sample objects
    ds = SampleDataset(bp4d_like, classes_count=12)
    assert isinstance(ds.samples, SampleTable) and ds.activities == [f"T{i}" for i in range(10)]


def _write_occ(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize("rows", [
    ["1,1,0,9", "2,0,1,0", "", "3,9,9,9", "4,,1,0", "5.0,1,1,1"],   # blank line, uncoded row, empty cell
    ["1,1,0,9,", "2,0,1,0,"],                                          # trailing commas: the row reader's trim
    ["1, 1 ,0,9", "2,0,1 ,0"],                                         # spaces
])
def test_the_column_reader_reads_what_the_row_reader_reads(tmp_path, rows):
    path = tmp_path / "F001_T1.csv"
    _write_occ(path, "0,1,2,4", rows)
    frames, codes, mask = bp4d._read_occ_csv(path, [1, 2, 4])
    ref = bp4d._read_occ_rows(path, [1, 2, 4])
    assert frames.tolist() == [r[0] for r in ref]
    assert np.array_equal(codes, np.stack([r[1] for r in ref])) and np.array_equal(mask, np.stack([r[2] for r in ref]))
    assert codes.dtype == mask.dtype == np.float32


@pytest.mark.parametrize("rows, line", [(["1,1,0,9", "2,0,1"], 3), (["1,1,0,9", "2,0,7,1"], 3),
                                        (["1,1,0,9", "x,0,1,1"], 3), (["1,1,0,9", "2,0,1,1,1"], 3)])
def test_a_bad_label_line_is_named_whichever_reader_meets_it(tmp_path, rows, line):
    path = tmp_path / "F001_T1.csv"
    _write_occ(path, "0,1,2,4", rows)
    with pytest.raises(ClefError) as err:
        bp4d._read_occ_csv(path, [1, 2, 4])
    assert err.value.line == line and "malformed line" in str(err.value)


def _tree(root, subjects=("F001", "M001"), tasks=("T1", "T2"), frames=6):
    for s in subjects:
        for t in tasks:
            _write_occ(root / "AUCoding" / "AU_OCC" / f"{s}_{t}.csv", "0,1,2,4,6,7,10,12,14,15,17,23,24",
                       [f"{f}," + ",".join("1" if (f + k) % 3 == 0 else "0" for k in range(12))
                        for f in range(1, frames + 1)])
            d = root / s / t
            d.mkdir(parents=True, exist_ok=True)
            for f in range(1, frames + 1):
                (d / f"{f:04d}.jpg").touch()
    return root


@pytest.mark.filterwarnings("ignore:.*missing on disk")
def test_the_index_cache_is_reused_until_a_label_file_or_a_frame_folder_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sample_index, "MIN_SAMPLES", 1)
    root = _tree(tmp_path / "BP4D")
    calls = []
    parse = bp4d._read_occ_csv
    monkeypatch.setattr(bp4d, "_read_occ_csv", lambda *a: calls.append(a) or parse(*a))

    first = load_dataset("bp4d", root=root)
    assert len(first) == 24 and len(calls) == 4 and len(list((tmp_path / "cache" / "index").glob("*.npz"))) == 1
    again = load_dataset("bp4d", root=root)
    assert len(calls) == 4                                   # read from the cache: no label file parsed
    for a, b in zip(first.samples, again.samples):
        _same(a, b)
    assert (again.classes, again.activities, again.canonical_folds) == \
        (first.classes, first.activities, first.canonical_folds)

    (root / "F001" / "T1" / "0003.jpg").unlink()            # a frame removed: its folder changed
    fewer = load_dataset("bp4d", root=root)
    assert len(calls) == 8 and len(fewer) == 23 and fewer.missing == [f"{root / 'F001' / 'T1'} frame 3"]
    occ = root / "AUCoding" / "AU_OCC" / "M001_T2.csv"      # a label file rewritten
    occ.write_text(occ.read_text().replace("\n6,", "\n16,"))
    os.utime(occ, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    changed = load_dataset("bp4d", root=root)
    assert len(calls) == 12 and len(changed) == 22
    assert len(load_dataset("bp4d", root=root, aus=[1, 2]).samples[0].aus) == 2   # other options, other entry
    for p in (tmp_path / "cache" / "index").glob("*.npz"):  # a damaged file is rebuilt, not trusted
        p.write_bytes(b"not an index")
    assert len(load_dataset("bp4d", root=root)) == 22

    pre = load_dataset("bp4d", root=root, mode="pretrain", max_frames=10)
    n = len(calls)
    again = load_dataset("bp4d", root=root, mode="pretrain", max_frames=10)
    assert [s.id for s in pre.samples] == [s.id for s in again.samples] and len(pre) == 10 and len(calls) == n


def test_small_indexes_are_not_written_and_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "BP4D")
    load_dataset("bp4d", root=root)                          # 24 samples < MIN_SAMPLES
    assert not list((tmp_path / "cache").rglob("*.npz"))
    monkeypatch.setattr(sample_index, "MIN_SAMPLES", 1)
    monkeypatch.setenv("CLEF_INDEX_CACHE", "0")
    load_dataset("bp4d", root=root)
    assert not list((tmp_path / "cache").rglob("*.npz"))


def _jpeg(path, w, h, seed=0):
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC)
    face.save(path, quality=95)
    return path


def test_reduced_decoding_keeps_small_images_identical_and_crops_the_same_face(tmp_path):
    small = _jpeg(tmp_path / "small.jpg", 120, 100)
    with Image.open(small) as im:
        full = np.asarray(im.convert("RGB"))
    assert np.array_equal(np.asarray(read_rgb(small, min_side=64)), full)   # < 2x the size: decoded in full
    synthetic_au = _jpeg(tmp_path / "au.jpg", 128, 128)                    # the synthetic sets for clef-tiny
    with Image.open(synthetic_au) as im:
        assert np.array_equal(np.asarray(read_rgb(synthetic_au, decode_size_for(64))), np.asarray(im.convert("RGB")))
    assert decode_size_for(224) == 448 and read_reduced(_jpeg(tmp_path / "f.jpg", 1392, 1040), 448)[1] == 0.5
    big = _jpeg(tmp_path / "big.jpg", 1392, 1040)
    img, scale = read_reduced(big, 224)
    assert scale == 0.25 and img.size == (348, 260)                          # 1040 / 4 >= 224
    assert read_reduced(big, 224, box=(400, 200, 500, 500))[1] == 0.5         # the face keeps >= 224 px
    assert read_reduced(_png(tmp_path), 10)[1] == 1.0                          # not a JPEG: in full
    sample = Sample(id="a", subject="", path=str(big), box=(400, 200, 480, 520))
    reduced = open_image(sample, min_side=112)                                # factor 4: 120 x 130
    whole = open_image(sample).resize(reduced.size, Image.BICUBIC)
    assert reduced.size == (120, 130)
    assert np.abs(np.asarray(reduced, np.float32) - np.asarray(whole, np.float32)).mean() < 6
    # thumbnails (serve, contact sheets): the same face from a reduced decode, or None outside the image
    thumb = read_cropped(big, (400, 200, 480, 520), min_side=112)
    assert thumb.size == (120, 130) and np.array_equal(np.asarray(thumb), np.asarray(reduced))
    assert read_cropped(big, (5000, 5000, 10, 10), 64) is None and read_cropped(big, None, 224).size == (348, 260)
    with pytest.raises(ClefError, match="lies outside the image"):
        open_image(Sample(id="b", subject="", path=str(big), box=(5000, 5000, 10, 10)))


def _png(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (400, 300), (10, 20, 30)).save(p)
    return p


def test_the_training_data_set_decodes_reduced_only_when_told(tmp_path):
    big = _jpeg(tmp_path / "big.jpg", 1392, 1040)
    s = [Sample(id="a", subject="", path=str(big), label=0)]
    sizes = [tuple(SampleDataset(s, transform=lambda im: im.size, task="fer", decode_size=d)[0]["image"])
             for d in (None, 224)]
    assert sizes == [(1392, 1040), (348, 260)]
