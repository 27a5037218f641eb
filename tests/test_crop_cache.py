"""The face-crop cache of whole-frame data sets: ``clefctl data prepare --dataset`` and its use by
training, evaluation and embedding (issue 15, item 1).

The frames are generated camera frames in the real BP4D layout (one synthetic face per frame drifting
slowly, with its true box), written by :func:`clefctl.data.faces.scenes.write_frame_dataset`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from clefctl.cli import cli
from clefctl.data import load_dataset
from clefctl.data.crops import CropSettings, crop_cache_for, prepare_dataset
from clefctl.data.crops.layout import STATUS_NAMES, Entries, cache_folder
from clefctl.data.faces.scenes import background, write_frame_dataset
from clefctl.errors import ClefError

SUBJECTS = ("F001", "F003", "F004")      # one in each canonical BP4D part: every fold has a test subject
SMALL = CropSettings(size=96)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLEF_CROP_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def frames(tmp_path, cache_env):
    """BP4D layout: 3 subjects x 2 tasks x 12 frames of 260x348; frame 5 of every run shows no face;
    F004/T2 shows no face at all (a whole run: nothing to borrow a box from); F003/T1/7.jpg is cut off."""
    root = tmp_path / "BP4D"
    truth = write_frame_dataset(root, subjects=SUBJECTS, blank=(5,))
    bg = background(260, 348, 0)
    for n in range(1, 13):
        cv2.imwrite(str(root / "F004" / "T2" / f"{n}.jpg"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
        truth.pop(f"F004/T2/{n}.jpg", None)
    broken = root / "F003" / "T1" / "7.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    truth.pop("F003/T1/7.jpg")
    return root, truth


def _entries(folder: Path) -> dict:
    e = Entries.load(folder / "index.npz")
    return {r: (STATUS_NAMES[s], tuple(b), float(a)) for r, s, b, a in zip(e.rel.tolist(), e.status, e.box, e.angle)}


def _trained(root: Path, ws: str, **kw):
    """The frames prepared at 96 px, then one fine-tuning epoch of clef-tiny on fold 1 (warnings quiet)."""
    from clefctl.engine import TrainConfig
    from clefctl.finetune import FinetuneOptions, run_finetune

    prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=str(root), init=None, workspace=ws,
                                            train=TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0,
                                                              progress=False), **kw))


def test_prepare_crops_every_frame_and_lists_the_rest(frames):
    root, truth = frames
    report = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    assert report.frames == 72 and report.cropped_now == 72 and report.reused == 0
    # 6 runs x 1 blank frame each borrow a neighbour's box, except in F004/T2 (no face anywhere in it)
    assert report.counts == {"face": 54, "neighbour": 5, "no_face": 12, "unreadable": 1}
    assert report.unreadable == ["F003/T1/7.jpg"]
    assert report.no_face == sorted(f"F004/T2/{n}.jpg" for n in range(1, 13))
    folder = Path(report.cache)
    assert folder == cache_folder(root, SMALL)
    done = json.loads((folder / "complete.json").read_text())
    assert done["entries"] == 72 and done["key"]["root"] == str(root.resolve()) and done["key"]["size"] == 96
    assert (folder / "no_face.txt").read_text().splitlines() == report.no_face
    assert (folder / "unreadable.txt").read_text().splitlines() == ["F003/T1/7.jpg"]
    entries = _entries(folder)
    ious = [iou(entries[rel][1], box) for rel, box in truth.items()]
    assert min(ious) > 0.5, min(ious)          # boxes in the frame's pixels, where the face is
    for rel, (status, _, _) in entries.items():
        crop = folder / "crops" / rel
        assert crop.is_file() == (status in ("face", "neighbour")), rel
    img = cv2.imread(str(folder / "crops" / "F001/T1/1.jpg"))
    assert img.shape == (96, 96, 3)
    again = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    assert again.reused == 72 and again.cropped_now == 0 and again.counts == report.counts
    (folder / "crops" / "F001/T2/3.jpg").unlink()             # a crop lost (a power cut): cropped again
    mended = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    assert mended.cropped_now == 1 and (folder / "crops" / "F001/T2/3.jpg").is_file()


def test_full_size_frames_are_cropped_from_a_reduced_decode(tmp_path, cache_env):
    """1040x1392 frames (BP4D's size): decoded at 1/2, detected on a copy, box back in full pixels."""
    root = tmp_path / "BP4D"
    truth = write_frame_dataset(root, subjects=("F001",), tasks=("T1",), frames=3, width=1040, height=1392,
                                face=520)
    report = prepare_dataset("bp4d", root=root, workers=1, progress=False)
    assert report.counts["face"] == 3
    entries = _entries(Path(report.cache))
    assert min(iou(entries[r][1], b) for r, b in truth.items()) > 0.5
    assert cv2.imread(str(Path(report.cache) / "crops" / "F001/T1/2.jpg")).shape == (256, 256, 3)


def test_pool_of_workers_gives_the_same_entries(frames):
    root, _ = frames
    one = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, chunk=5, progress=False)
    first = _entries(Path(one.cache))
    import shutil

    shutil.rmtree(one.cache)
    two = prepare_dataset("bp4d", root=root, settings=SMALL, workers=2, chunk=5, progress=False)
    assert two.workers == 2 and _entries(Path(two.cache)) == first


def test_killed_prepare_resumes_and_is_never_used_half(frames, cache_env):
    root, _ = frames
    code = ("import sys; from clefctl.data.crops import CropSettings, prepare_dataset; "
            f"prepare_dataset('bp4d', root={str(root)!r}, settings=CropSettings(size=96), workers=1, chunk=2, "
            "progress=False)")
    folder = cache_folder(root, SMALL)
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, CLEF_CACHE=str(cache_env)))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((folder / "chunks").glob("*.npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list((folder / "chunks").glob("*.npz")))
    assert 3 <= written < 36 and not (folder / "complete.json").exists()
    bundle = load_dataset("bp4d", root=root)
    with pytest.warns(UserWarning, match="incomplete"):
        assert crop_cache_for(bundle, 64) is None
    report = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    assert report.reused >= 2 * written - 2 and report.reused + report.cropped_now == 72
    assert report.counts == {"face": 54, "neighbour": 5, "no_face": 12, "unreadable": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert crop_cache_for(bundle, 64, announce=False) is not None


def test_training_reads_the_crops_and_says_so(frames, tmp_path, capsys):
    import dataclasses

    root, _ = frames
    prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    bundle = load_dataset("bp4d", root=root)
    cache = crop_cache_for(bundle, 64)
    assert "face crops: " in capsys.readouterr().err
    with pytest.warns(UserWarning, match="13 training frames without a face crop left out"):
        samples = cache.apply(bundle.samples)
    assert len(samples) == 59 and all(s.path.startswith(str(cache.folder / "crops")) for s in samples)
    assert {s.id for s in bundle.samples} - {s.id for s in samples} == set(cache.left_out)
    by_id = {s.id: s for s in bundle.samples}
    for s in samples[:5]:                                   # every field kept but the path (and no box)
        before = by_id[s.id]
        for f in dataclasses.fields(s):
            if f.name not in ("path", "box"):
                a, b = getattr(s, f.name), getattr(before, f.name)
                assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b), f.name
        assert s.box is None

    ws = str(tmp_path / "ws")
    used, bypassed = _trained(root, ws).config(), _trained(root, ws, crop_cache=False).config()
    assert used["crop_cache"]["folder"] == str(cache.folder) and used["crop_cache"]["size"] == 96
    assert bypassed["crop_cache"] is None
    assert used["train_samples"] < bypassed["train_samples"]   # frames without a crop are left out


def test_stale_or_partial_cache_is_never_used_silently(frames):
    root, _ = frames
    prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    bundle = load_dataset("bp4d", root=root)
    frame = root / "F001" / "T1" / "1.jpg"       # the first frame: always among the ones sampled
    data = frame.read_bytes()
    frame.write_bytes(data + b"\0")
    with pytest.warns(UserWarning, match="stale.*F001/T1/1.jpg"):
        assert crop_cache_for(bundle, 64) is None
    again = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    assert again.cropped_now == 1 and again.reused == 71
    assert crop_cache_for(bundle, 64, announce=False) is not None
    # a subject added after the prepare: the cache lacks its frames
    write_frame_dataset(root / "extra", subjects=("M001",), tasks=("T1",), frames=3)
    (root / "extra" / "M001").rename(root / "M001")
    (root / "extra" / "AUCoding" / "AU_OCC" / "M001_T1.csv").rename(root / "AUCoding" / "AU_OCC" / "M001_T1.csv")
    grown = load_dataset("bp4d", root=root)
    with pytest.warns(UserWarning, match="lacks 3 of the 75 frames"):
        assert crop_cache_for(grown, 64) is None
    with pytest.warns(UserWarning, match="smaller than the model's 224 px"):
        assert crop_cache_for(bundle, 224) is None
    assert crop_cache_for(bundle, 64, enabled=False) is None


def test_prepare_refuses_data_sets_without_whole_frames(synth, cache_env):
    with pytest.raises(ClefError, match="already aligned"):
        prepare_dataset("synthetic-fer", progress=False)
    bundle = load_dataset("synthetic-au", root=synth["au"])
    assert crop_cache_for(bundle, 64) is None          # aligned sets never look for a cache


def test_cli_prepare_dataset_json_and_usage_errors(frames):
    root, _ = frames
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "prepare", "--dataset", "bp4d", "--dataset-root", str(root), "--size", "96",
                              "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["frames"] == 72 and doc["counts"]["unreadable"] == 1 and doc["frames_per_s"] > 0
    text = runner.invoke(cli, ["data", "prepare", "--dataset", "bp4d", "--dataset-root", str(root), "--size", "96"])
    assert text.exit_code == 0 and "72 cropped before" in text.output and "F004/T2/1.jpg" in text.output
    for args in ([], ["x.jpg", "--dataset", "bp4d"], ["x.jpg"], ["--dataset", "bp4d", "--out", "o"]):
        bad = runner.invoke(cli, ["data", "prepare", *args])
        assert bad.exit_code == 2, (args, bad.output)
    refused = runner.invoke(cli, ["data", "prepare", "--dataset", "rafdb", "--dataset-root", str(root)])
    assert refused.exit_code != 0
    (root.parent / "data").mkdir()
    (root.parent / "data" / "BP4D").symlink_to(root)
    listed = runner.invoke(cli, ["data", "list", "--data-root", str(root.parent / "data"), "--json"])
    rows = {r["name"]: r for r in json.loads(listed.output)}
    assert [c["size"] for c in rows["bp4d"]["crop_caches"]] == [96] and rows["bp4d"]["crop_caches"][0]["complete"]
    assert rows["rafdb"]["faces"] == "aligned" and rows["rafdb"]["crop_caches"] == []


def test_evaluate_and_embed_read_the_crops(frames, tmp_path):
    from clefctl.evaluate import evaluate_checkpoint
    from clefctl.embed.run import EmbedOptions, run_embed

    root, _ = frames
    ws = str(tmp_path / "ws")
    run = _trained(root, ws)
    held_out = json.loads((run.path / "test_metrics.json").read_text())     # fold 1 tests on F004
    assert held_out["skipped"] == 12 and held_out["n_samples"] == 12 and "F004/T2/1" in held_out["skipped_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_checkpoint(str(run.model_path), split="all", workspace=ws)
        with pytest.warns(UserWarning, match="trained on face crops but is evaluated on full frames"):
            full = evaluate_checkpoint(str(run.model_path), split="all", workspace=ws, crop_cache=False)
    assert out.result["skipped"] == 13 and "F004/T2/1" in out.result["skipped_ids"]
    assert full.result["skipped"] == 1                    # the cut-off frame only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_embed(EmbedOptions(dataset="bp4d", dataset_root=str(root), weights=str(run.model_path),
                                     workspace=ws, index="none", progress=False, workers=0))
    assert res.report.rows == 59 and "crops96" in str(res.store_path)
    assert res.run.config()["crop_cache"]["size"] == 96


def test_a_large_whole_frame_set_without_a_cache_gets_one_hint(frames, monkeypatch, capsys):
    from clefctl.data.crops import use

    root, _ = frames
    bundle = load_dataset("bp4d", root=root)
    monkeypatch.setattr(use, "HINT_MIN_FRAMES", 50)
    assert crop_cache_for(bundle, 64) is None
    err = capsys.readouterr().err
    assert f"clefctl data prepare --dataset bp4d --dataset-root {root}" in err
    bundle.samples = bundle.samples[:10]                   # a small set: no hint
    assert crop_cache_for(bundle, 64) is None and capsys.readouterr().err == ""


def test_disfa_png_frames_are_cropped_too(tmp_path, cache_env):
    """DISFA's layout: {subject}/{frame}.png and ActionUnit_Labels/{subject}/{subject}_au{k}.txt."""
    from clefctl.data.disfa import DISFA_AUS

    src = tmp_path / "src"
    truth = write_frame_dataset(src, subjects=("SN001", "SN002"), tasks=("T1",), frames=4)
    root = tmp_path / "DISFA"
    for subject in ("SN001", "SN002"):
        (root / subject).mkdir(parents=True)
        labels = root / "ActionUnit_Labels" / subject
        labels.mkdir(parents=True)
        for n in range(1, 5):
            cv2.imwrite(str(root / subject / f"{n:05d}.png"), cv2.imread(str(src / subject / "T1" / f"{n}.jpg")))
        for au in DISFA_AUS:
            (labels / f"{subject}_au{au}.txt").write_text("".join(f"{n},{n % 4}\n" for n in range(1, 5)))
    report = prepare_dataset("disfa", root=root, settings=SMALL, workers=1, progress=False)
    assert report.frames == 8 and report.counts["face"] == 8
    entries = _entries(Path(report.cache))
    assert min(iou(entries[f"{s}/{n:05d}.png"][1], truth[f"{s}/T1/{n}.jpg"]) for s in ("SN001", "SN002")
               for n in range(1, 5)) > 0.5
    bundle = load_dataset("disfa", root=root)
    cache = crop_cache_for(bundle, 64, announce=False)
    crops = cache.apply(bundle.samples)
    assert len(crops) == 8 and all(s.path.endswith(".jpg") and Path(s.path).is_file() for s in crops)


def test_a_manifest_of_photos_is_cropped_with_the_photo_setting(tmp_path, cache_env):
    from PIL import Image
    from skimage import data as skdata

    from clefctl.data.faces.scenes import group_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg")
    rgb, boxes = group_photo(3, width=480, height=240, face=110, seed=5)
    Image.fromarray(rgb).save(folder / "group.jpg")
    Image.fromarray(background(300, 200, 3)).save(folder / "empty.jpg")
    csv = folder / "list.csv"
    csv.write_text("path,subject,label\nastronaut.jpg,a,happy\ngroup.jpg,b,sad\nempty.jpg,c,happy\n")
    report = prepare_dataset("manifest", root=csv, settings=SMALL, workers=1, progress=False)
    assert report.counts == {"face": 2, "neighbour": 0, "no_face": 1, "unreadable": 0}   # no borrowed boxes
    assert report.no_face == ["empty.jpg"]
    key = json.loads((Path(report.cache) / "key.json").read_text())
    assert key["setting"] == "photos" and key["detector"]["min_face"] == round(1 / 20, 4)
    entries = _entries(Path(report.cache))
    assert max(iou(entries["group.jpg"][1], b) for b in boxes) > 0.5
    bundle = load_dataset("manifest", root=csv)
    cache = crop_cache_for(bundle, 64, announce=False)
    with pytest.warns(UserWarning, match="1 training frame without a face crop"):
        assert len(cache.apply(bundle.samples)) == 2


def test_kfold_evaluation_scores_and_tunes_on_the_crops(frames, tmp_path):
    from clefctl.evaluate import evaluate_kfold

    root, _ = frames
    ws = str(tmp_path / "ws")
    _trained(root, ws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_kfold(3, workspace=ws, tune=True, progress=False)
    # every frame is in one test fold: the 12 faceless frames of F004/T2 and the cut-off one are left out
    assert out.result["skipped"] == 13 and out.result["n_folds"] == 3 and out.result["tuned"]["n_folds"] == 3
    per_fold = json.loads((out.run.path / "results.json").read_text())["per_fold"]
    assert sorted(f["n_samples"] for f in per_fold) == [12, 23, 24]       # F004, F003, F001


def test_ctrl_c_keeps_the_finished_runs_and_says_how_to_go_on(frames, monkeypatch):
    from clefctl.data.crops import worker
    from clefctl.errors import Interrupted

    root, _ = frames
    real, calls = worker.crop_run, []

    def interrupted_on_the_third(job):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)
    monkeypatch.setattr(worker, "crop_run", interrupted_on_the_third)
    with pytest.raises(Interrupted, match="run the same clefctl data prepare again"):
        prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, chunk=4, progress=False)
    folder = cache_folder(root, SMALL)
    assert len(list((folder / "chunks").glob("*.npz"))) == 2 and not (folder / "complete.json").exists()
    monkeypatch.setattr(worker, "crop_run", real)
    again = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, chunk=4, progress=False)
    assert again.reused == 8 and again.cropped_now == 64 and (folder / "complete.json").exists()


def test_a_cache_of_an_older_version_is_stale_and_says_so(frames):
    """A cache made before the detector was part of the key (version 1: Haar only) is never read: one
    warning names it as stale and the command that rebuilds it."""
    import json

    from clefctl.data import load_dataset
    from clefctl.data.crops import crop_cache_for

    root, _ = frames
    report = prepare_dataset("bp4d", root=root, settings=SMALL, workers=1, progress=False)
    key_file = Path(report.cache) / "key.json"
    key = json.loads(key_file.read_text())
    key["version"] = 1
    key_file.write_text(json.dumps(key))
    with pytest.warns(UserWarning, match="stale: an older clefctl made it with the Haar cascades") as rec:
        assert crop_cache_for(load_dataset("bp4d", root=str(root)), 32) is None
    assert "clefctl data prepare --dataset bp4d" in str(rec[0].message)
