"""predict: every face of photos and videos, OpenFace's CSV schema, zero-shot, smoothing."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clefctl.engine import TrainConfig
from clefctl.finetune import FinetuneOptions, run_finetune

EXPRESSIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
BASE = ["source", "frame", "face_id", "timestamp", "confidence", "success", "face_x", "face_y", "face_w", "face_h",
        *[f"lmk_x_{i}" for i in range(5)], *[f"lmk_y_{i}" for i in range(5)]]


@pytest.fixture(scope="module")
def workspace(synth, tmp_path_factory):
    ws = str(tmp_path_factory.mktemp("ws"))
    cfg = dict(epochs=1, batch_size=16, max_steps=1, num_workers=0, progress=False)
    run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=synth["au"], workspace=ws, init=None, folds=3,
                                 train=TrainConfig(**cfg)))
    run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=synth["fer"], workspace=ws, init=None,
                                 train=TrainConfig(**cfg)))
    return ws


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A group photo of 4 faces, a no-face photo, a broken file and a 3-face scene video."""
    from clefctl.data.faces.scenes import group_photo, write_scene_video

    d = tmp_path_factory.mktemp("media")
    rgb, boxes = group_photo(4, width=640, height=300, face=110, seed=1)
    Image.fromarray(rgb).save(d / "group.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(d / "grey.png")
    (d / "broken.jpg").write_bytes(b"")
    truth = write_scene_video(d / "scene.avi", frames=60, width=480, height=270, face=96, people=3, seed=2)
    return {"dir": d, "boxes": boxes, "truth": truth}


@pytest.fixture(scope="module")
def predicted(workspace, media, tmp_path_factory):
    """One predict over everything: the photos, the broken file and the video."""
    from clefctl.predict import predict

    d = media["dir"]
    out = predict([d / "group.png", d / "grey.png", d / "broken.jpg", d / "scene.avi"],
                  tmp_path_factory.mktemp("pred") / "pred.csv", workspace=workspace, progress=False)
    return out, pd.read_csv(out["csv"])


def _iou(a, b) -> float:
    from clefctl.data.faces import iou_matrix

    return float(iou_matrix(np.array([a]), np.array([b]))[0, 0])


def test_photos_one_row_per_face_and_a_no_face_row(predicted, media):
    out, df = predicted
    d = media["dir"]
    group = df[df.source.str.endswith("group.png")]
    assert len(group) == 4 and sorted(group.face_id) == [0, 1, 2, 3]
    assert (group.success == 1).all() and (group.frame == 1).all() and (group.timestamp == 0).all()
    assert list(group.face_x) == sorted(group.face_x)  # numbered left to right
    for (_, r), truth in zip(group.iterrows(), media["boxes"]):
        assert _iou((r.face_x, r.face_y, r.face_w, r.face_h), truth) > 0.4
    assert group.AU12_p.between(0, 1).all() and set(group.AU12_c) <= {0, 1}
    assert np.allclose(group[list(EXPRESSIONS)].sum(axis=1), 1, atol=1e-3)
    assert set(group.expression) <= set(EXPRESSIONS)
    grey = df[df.source.str.endswith("grey.png")]
    assert len(grey) == 1
    g = grey.iloc[0]
    assert g.success == 0 and g.face_id == -1 and g.confidence == 0 and g.frame == 1
    assert np.isnan(g.face_x) and np.isnan(g.AU12_p) and np.isnan(g.happiness) and pd.isna(g.expression)
    assert out["unreadable"] == [str(d / "broken.jpg")] and out["skipped"] == 1
    assert out["frames"] == 2 + 60 and out["rows"] == len(df)
    assert out["no_face"][str(d / "grey.png")] == 1 and sum(out["no_face"].values()) == out["no_face_frames"]


def test_csv_reads_like_openface(predicted, media):
    """Read the way OpenFace readers (py-feat's read_openface, openFaceR) do: by name, with
    two-digit AU ids, 1-based frames and success 0/1."""
    out, _ = predicted
    header = open(out["csv"], encoding="utf-8").readline().strip().split(",")
    aus = ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
    assert header == BASE + [f"{a}_{k}" for a in aus for k in ("c", "p")] + list(EXPRESSIONS) + ["expression"]
    df = pd.read_csv(out["csv"])
    df.columns = [c.strip() for c in df.columns]
    assert all(re.fullmatch(r"AU\d\d_[cp]", c) for c in df.columns if c.startswith("AU"))
    video = df[df.source.str.endswith("scene.avi")]
    assert video.frame.dtype.kind == "i" and video.face_id.dtype.kind == "i" and video.success.dtype.kind == "i"
    assert video.frame.min() == 1 and video.frame.max() == 60 and set(video.frame) == set(range(1, 61))
    assert set(df.success) == {0, 1}
    assert np.allclose(video.timestamp, (video.frame - 1) / media["truth"].fps, atol=1e-3)
    faces = df[df.success == 1]
    assert faces.confidence.between(0, 1).all()
    for a in aus:
        assert set(faces[f"{a}_c"].astype(int)) <= {0, 1}
        assert faces[f"{a}_p"].between(0, 1).all()
        assert ((faces[f"{a}_p"] > 0.5).astype(int) == faces[f"{a}_c"]).all()
    empty = df[df.success == 0]
    assert (empty.face_id == -1).all() and empty[["face_x", "AU01_c", "AU01_p", "happiness"]].isna().all().all()
    # a frame with several faces: one row each, ids distinct
    per_frame = video[video.success == 1].groupby("frame").face_id
    assert per_frame.nunique().max() == 3 and (per_frame.nunique() == per_frame.size()).all()
    assert out["timelines"] and out["fps"] > 0 and 0 < out["detection_share"] < 1


def test_video_frames_without_faces_get_success_0(predicted, media):
    out, df = predicted
    lo, hi = media["truth"].empty
    video = df[df.source.str.endswith("scene.avi")]
    empty = video[video.frame.between(lo, hi)]
    assert len(empty) == hi - lo + 1 and (empty.success == 0).all()
    assert out["no_face"][str(media["dir"] / "scene.avi")] >= hi - lo + 1


def test_zero_shot_with_random_weights_writes_the_prompt_sets_columns(media, tmp_path, capsys):
    from clefctl.cli import main
    from clefctl.prompts import load_prompts

    d = media["dir"]
    for prompts, expect_au in (("bp4d", True), ("rafdb", False)):
        csv = tmp_path / f"{prompts}.csv"
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(d / "group.png"), "--weights", "random", "--arch", "clef-tiny", "--prompts", prompts,
                  "--out", str(csv), "--json", "--workspace", str(tmp_path / "empty")])
        assert exc.value.code == 0
        summary = json.loads(capsys.readouterr().out)
        df = pd.read_csv(csv)
        assert summary["faces"] == 4 and "zero-shot" in summary["scoring"][load_prompts(prompts).task]
        if expect_au:
            assert [c for c in df.columns if c.endswith("_p")] == ["AU01_p", "AU02_p", "AU04_p", "AU06_p", "AU07_p",
                                                                  "AU10_p", "AU12_p", "AU14_p", "AU15_p", "AU17_p",
                                                                  "AU23_p", "AU24_p"]
            assert "expression" not in df.columns
        else:
            assert not [c for c in df.columns if c.startswith("AU")]
            assert np.allclose(df[list(EXPRESSIONS)].sum(axis=1), 1, atol=1e-3) and "expression" in df.columns


def test_zero_shot_needs_weights_and_prompts_together(media, tmp_path, capsys):
    from clefctl.cli import main

    for extra, says in ((["--weights", "random"], "--prompts"), (["--prompts", "bp4d"], "--weights")):
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(media["dir"] / "grey.png"), "--out", str(tmp_path / "x.csv"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and err[-1].startswith("error:") and says in err[-1]
    assert not (tmp_path / "x.csv").exists()


def test_smooth_averages_along_each_track_and_derives_c():
    from clefctl.predict.smooth import Row, Smoother

    sm = Smoother(0.5)
    out = []
    for i in range(20):   # face 0 alternates 0.2 / 0.8 at 10 fps; face 1 stays at 0.9
        t = i / 10
        out += sm.push(Row("v.mp4", i + 1, 0, t, 1.0, (0, 0, 10, 10), np.array([0.2 if i % 2 else 0.8]), None, True))
        out += sm.push(Row("v.mp4", i + 1, 1, t, 1.0, (50, 0, 10, 10), np.array([0.9]), None, True))
    out += sm.flush()
    assert [(r.frame, r.face_id) for r in out] == [(i + 1, k) for i in range(20) for k in (0, 1)]  # order kept
    middle = [float(r.au[0]) for r in out if r.face_id == 0 and 5 <= r.frame <= 15]
    assert all(0.4 < p < 0.6 for p in middle)         # +-0.25 s: 5 samples alternating
    assert all(abs(float(r.au[0]) - 0.9) < 1e-6 for r in out if r.face_id == 1)   # its own track only
    from clefctl.predict.schema import row_values

    r = next(r for r in out if r.face_id == 0 and r.frame == 10)
    assert row_values(r.source, r.frame, r.face_id, r.timestamp, r.confidence, r.box, r.au, None, [], 1)[-2] == 0


def test_smooth_changes_the_csv_of_a_video(workspace, predicted, media, tmp_path):
    from clefctl.predict import predict

    _, raw = predicted
    raw = raw[raw.source.str.endswith("scene.avi")].reset_index(drop=True)
    smooth = pd.read_csv(predict([media["dir"] / "scene.avi"], tmp_path / "b.csv", workspace=workspace,
                                 progress=False, smooth=1.0)["csv"])
    assert list(raw[["frame", "face_id"]].itertuples(index=False)) == \
        list(smooth[["frame", "face_id"]].itertuples(index=False))
    face = raw[raw.success == 1].face_id.mode()[0]
    a = raw[raw.face_id == face].AU12_p.to_numpy()
    b = smooth[smooth.face_id == face].AU12_p.to_numpy()
    assert np.abs(np.diff(b)).sum() < np.abs(np.diff(a)).sum()
    assert np.isclose(a.mean(), b.mean(), atol=0.05)


def test_predict_video_writes_timeline(workspace, tmp_path):
    from click.testing import CliRunner
    from skimage import data

    from clefctl.cli import cli

    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (512, 512))
    for i in range(6):
        vw.write(np.roll(frame, 3 * i, axis=1))
    vw.release()
    r = CliRunner().invoke(cli, ["predict", str(path), "--every", "2", "--out", str(tmp_path / "v.csv"),
                                 "--workspace", workspace, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["rows"] == 3 and summary["frames"] == 3 and len(summary["timelines"]) == 1
    assert (tmp_path / "v_clip_timeline.png").is_file()
    df = pd.read_csv(tmp_path / "v.csv")
    assert list(df.frame) == [1, 3, 5] and set(df.face_id) == {0}


def test_scoring_needs_no_training_module():
    """Scoring a photo (clefctl.scoring, predict) does not import the stage-2 training module."""
    import subprocess
    import sys

    code = ("import sys, clefctl.scoring, clefctl.predict; "
            "assert not {'clefctl.finetune', 'clefctl.pretrain', 'clefctl.engine'} & set(sys.modules), sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
