"""The YuNet face front-end on real faces (issue 21): the real model file, fetched by the real
download code from a local server on 127.0.0.1 out of ``../shared/models/yunet`` (skipped, saying
why, where that folder is absent, as on a user's clone); real face photos from scikit-image."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_cli

from clefctl.weights.registry import YUNET_FILE, YUNET_SHA256, YUNET_SIZE

MODELS = Path(os.environ.get("CLEF_TEST_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
YUNET_DIR = MODELS / "yunet"
needs_file = pytest.mark.skipif(not (YUNET_DIR / YUNET_FILE).is_file(),
                                reason=f"the YuNet file is not in {YUNET_DIR} (the project's shared/models folder)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def mirror():
    """The shared YuNet folder served on 127.0.0.1: the base URL for CLEF_WEIGHTS_MIRROR."""
    if not (YUNET_DIR / YUNET_FILE).is_file():
        pytest.skip(f"the YuNet file is not in {YUNET_DIR}")
    server, url = _serve(YUNET_DIR)
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def yunet_file(mirror, tmp_path_factory):
    """The YuNet file as the download code fetches it from the mirror (a module-wide weights folder)."""
    from unittest import mock

    from clefctl.weights import download, registry

    folder = tmp_path_factory.mktemp("weights")
    with mock.patch.dict(os.environ, {"CLEF_WEIGHTS_DIR": str(folder), "CLEF_WEIGHTS_MIRROR": mirror}):
        got = download.get(registry.entry("yunet"), progress=False)
    assert got.status == "downloaded" and got.checksum == "published"
    return folder / YUNET_FILE


@pytest.fixture
def with_yunet(yunet_file, monkeypatch):
    """This test's weights folder holds the downloaded YuNet file (so `auto` picks YuNet)."""
    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(yunet_file.parent))
    return yunet_file


def _rgb(grey01: np.ndarray, side: int) -> np.ndarray:
    g = cv2.resize((grey01 * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    return np.dstack([g] * 3)


@pytest.fixture(scope="module")
def group_photo():
    """scikit-image's astronaut and three LFW faces on one 1000x420 canvas: (image, 4 face boxes)."""
    from skimage import data

    canvas = np.full((420, 1000, 3), 196, np.uint8)
    canvas[60:300, 40:250] = data.astronaut()[20:260, 120:330]
    boxes = [(40, 60, 210, 240)]
    lfw = data.lfw_subset()
    for k, idx in enumerate((0, 30, 60)):
        x, y = 300 + 230 * k, 100 + 40 * (k % 2)
        canvas[y:y + 160, x:x + 160] = _rgb(lfw[idx], 160)
        boxes.append((x, y, 160, 160))
    return canvas, boxes


FACE_FREE = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "moon", "horse", "text", "clock")


def _face_free():
    from skimage import data

    out = []
    for name in FACE_FREE:
        im = getattr(data, name)()
        im = np.dstack([im] * 3) if im.ndim == 2 else im[..., :3]
        out.append((name, im.astype(np.uint8)))
    return out


# -- the file: registry, download, checksum ------------------------------------------------------

@needs_file
def test_the_shared_copy_is_the_pinned_file():
    data = (YUNET_DIR / YUNET_FILE).read_bytes()
    assert len(data) == YUNET_SIZE and hashlib.sha256(data).hexdigest() == YUNET_SHA256


def test_weights_get_fetches_yunet_checks_it_and_verify_reads_it(mirror, tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("CLEF_WEIGHTS_MIRROR", mirror)
    code, out, err = run_cli(["weights", "get", "yunet", "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["status"] == "downloaded" and got["checksum"] == "published" and got["sha256"] == YUNET_SHA256
    assert (tmp_path / "w" / YUNET_FILE).stat().st_size == YUNET_SIZE
    code, out, _ = run_cli(["weights", "get", "yunet"], capsys)
    assert code == 0 and "matches the published checksum" in out
    code, out, err = run_cli(["weights", "verify", "yunet", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["matches"] is True and rep["format"] == "onnx" and rep["checksum"] == "published"
    code, out, _ = run_cli(["weights", "list", "--json"], capsys)
    row = next(r for r in json.loads(out) if r["name"] == "yunet")
    assert row["purpose"] == "detector" and row["sha256"] == YUNET_SHA256 and row["path"]


def test_a_corrupted_copy_is_refused_from_the_first_download(mirror, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((YUNET_DIR / YUNET_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / YUNET_FILE).write_bytes(bytes(data))
    server, url = _serve(bad)
    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("CLEF_WEIGHTS_MIRROR", url)
    try:
        code, _, err = run_cli(["weights", "get", "yunet"], capsys)
    finally:
        server.shutdown()
    assert code == 2 and err.count("\n") == 1 and "refusing" in err and YUNET_SHA256 in err
    assert not (tmp_path / "w" / YUNET_FILE).exists()


def test_weights_yunet_is_not_model_weights(with_yunet, tmp_path, capsys):
    from skimage import data

    cv2.imwrite(str(tmp_path / "a.jpg"), data.astronaut())
    code, _, err = run_cli(["predict", str(tmp_path / "a.jpg"), "--weights", "yunet", "--prompts", "rafdb",
                            "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 2 and "face detector" in err and "--detector yunet" in err


# -- auto, offline, explicit ---------------------------------------------------------------------

def test_auto_offline_falls_back_to_haar_with_one_warning_and_yunet_exits_2(tmp_path, monkeypatch, recwarn, capsys):
    from clefctl.data.faces import choice

    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CLEF_OFFLINE", "1")
    monkeypatch.setattr(choice, "_state", {"tried": None, "warned": False})
    assert choice.resolve_detector("auto").kind == "haar"
    assert choice.resolve_detector("auto").kind == "haar"
    lines = [str(w.message) for w in recwarn if "YuNet" in str(w.message)]
    assert len(lines) == 1 and "clefctl weights get yunet" in lines[0]
    from skimage import data

    cv2.imwrite(str(tmp_path / "a.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    code, _, err = run_cli(["predict", str(tmp_path / "a.jpg"), "--detector", "yunet", "--weights", "random",
                            "--arch", "clef-tiny", "--prompts", "rafdb", "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "YuNet" in err and "weights get yunet" in err
    assert not (tmp_path / "p.csv").exists()


def test_auto_downloads_on_first_use_and_an_unreachable_mirror_is_tried_once_and_quickly(
        mirror, tmp_path, monkeypatch, recwarn):
    from clefctl.data.faces import choice

    monkeypatch.delenv("CLEF_OFFLINE", raising=False)
    monkeypatch.setattr(choice, "_state", {"tried": None, "warned": False})
    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "first"))
    monkeypatch.setenv("CLEF_WEIGHTS_MIRROR", mirror)
    got = choice.resolve_detector("auto")
    assert got.kind == "yunet" and Path(got.model).stat().st_size == YUNET_SIZE
    # nothing listens on this port: the one attempt fails at once, the rest of the process does not retry
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("CLEF_WEIGHTS_DIR", str(tmp_path / "second"))
    monkeypatch.setenv("CLEF_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    assert choice.resolve_detector("auto").kind == "haar"
    assert choice.resolve_detector("auto").kind == "haar"
    assert time.perf_counter() - t0 < choice.CONNECT_TIMEOUT_S + 2
    assert choice._state["tried"] and sum("YuNet is not available" in str(w.message) for w in recwarn) == 1


# -- detection and alignment on real faces --------------------------------------------------------

def test_group_photo_one_row_per_face_with_landmarks_and_no_false_face(with_yunet, group_photo, tmp_path):
    from clefctl.predict import PredictOptions, run_predict

    canvas, boxes = group_photo
    cv2.imwrite(str(tmp_path / "group.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    for name, im in _face_free()[:4]:
        cv2.imwrite(str(tmp_path / f"free_{name}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = run_predict(PredictOptions(inputs=[str(tmp_path)], out=str(tmp_path / "p.csv"), weights="random",
                                     arch="clef-tiny", prompts=("rafdb",), progress=False, timeline=False))
    assert out["detector"]["name"] == "yunet"
    df = pd.read_csv(tmp_path / "p.csv")
    group = df[df.source.str.endswith("group.png")].sort_values("face_x")
    assert len(group) == 4 and (group.success == 1).all() and (group.confidence >= 0.6).all()
    for (_, r), (x, y, w, h) in zip(group.iterrows(), sorted(boxes)):
        cx, cy = r.face_x + r.face_w / 2, r.face_y + r.face_h / 2
        assert x <= cx <= x + w and y <= cy <= y + h
        xs = np.array([r[f"lmk_x_{i}"] for i in range(5)])
        ys = np.array([r[f"lmk_y_{i}"] for i in range(5)])
        assert ((xs >= r.face_x) & (xs <= r.face_x + r.face_w)).all()
        assert ((ys >= r.face_y) & (ys <= r.face_y + r.face_h)).all()
        assert xs[0] < xs[1] and xs[3] < xs[4]      # the subject's right eye and mouth corner: image left
        assert ys[0] < ys[2] < ys[3] and ys[1] < ys[2] < ys[4]
    free = df[df.source.str.contains("free_")]
    assert len(free) == 4 and (free.success == 0).all() and free.lmk_x_0.isna().all()


def test_face_free_images_give_no_face(with_yunet):
    from clefctl.data.faces.choice import resolve_detector

    det = resolve_detector("yunet").make("photos")
    found = {name: len(det.detect(im)) for name, im in _face_free()}
    assert sum(found.values()) == 0, found


@pytest.mark.parametrize("angle", [-20, 20])
def test_a_rotated_face_gives_a_level_crop(with_yunet, angle):
    from skimage import data

    from clefctl.data.faces import FaceCropper
    from clefctl.data.faces.template import align_matrix, eye_angle, map_points

    a = data.astronaut()
    cropper = FaceCropper(size=224, detector="yunet")
    truth = cropper.crop(a).landmarks
    turn = cv2.getRotationMatrix2D((256, 256), angle, 1.0)
    rotated = cv2.warpAffine(a, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    res = cropper.crop(rotated)
    assert res.found and res.aligned and res.image.size == (224, 224)
    true_points = map_points(turn, truth)
    assert abs(eye_angle(true_points)) > 15                       # the face really is tilted
    in_crop = map_points(align_matrix(res.landmarks, 224), true_points)
    assert abs(eye_angle(in_crop)) < 8                            # ... and its crop is level
    assert 0.3 * 224 < in_crop[:, 0].mean() < 0.7 * 224            # and centred


def test_video_landmarks_follow_the_face_on_every_frame(with_yunet, tmp_path):
    """A slowly moving astronaut: every frame's face has landmarks (followed between key frames),
    and the steady face's eye landmarks do not jitter by more than a few pixels."""
    from skimage import data

    from clefctl.data.faces import iter_faces

    a = data.astronaut()
    path = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (480, 360))
    for t in range(30):
        frame = np.full((360, 480, 3), 180, np.uint8)
        x = 100 + 2 * t
        frame[40:320, x:x + 260] = a[0:280, 110:370]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    frames = list(iter_faces([path], size=96))
    assert len(frames) == 30 and all(len(ff.faces) == 1 for ff in frames)
    eyes = np.array([ff.faces[0].landmarks[0] for ff in frames])
    assert all(ff.faces[0].landmarks is not None for ff in frames)
    moved = eyes[:, 0] - (100 + 2 * np.arange(30))               # the eye, less the known motion
    assert np.ptp(moved) < 8 and np.ptp(eyes[:, 1]) < 6
    assert not all(ff.faces[0].keyed for ff in frames)           # followed between key frames


# -- the crop cache --------------------------------------------------------------------------------

def _iou(a, b) -> float:
    from clefctl.data.faces import iou_matrix

    return float(iou_matrix(np.array([a]), np.array([b]))[0, 0])


def test_the_crop_cache_rebuilds_when_the_detector_changes(with_yunet, tmp_path, monkeypatch):
    """BP4D-sized 1040x1392 frames: prepared with Haar, then with YuNet (a new cache, every frame
    cropped again, boxes on the faces, landmarks kept); a job then reads YuNet's crops."""
    from clefctl.data import load_dataset
    from clefctl.data.crops import CropSettings, crop_cache_for, prepare_dataset
    from clefctl.data.crops.layout import Entries
    from clefctl.data.faces.choice import resolve_detector
    from clefctl.data.faces.scenes import write_frame_dataset

    monkeypatch.setenv("CLEF_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "BP4D"
    truth = write_frame_dataset(root, subjects=("F001", "M001"), tasks=("T1",), frames=3, width=1040, height=1392,
                                face=480)
    haar = prepare_dataset("bp4d", root=root, settings=CropSettings(), workers=1, progress=False)
    assert haar.cropped_now == haar.frames == 6
    yn = resolve_detector("yunet")
    settings = CropSettings(detector="yunet", model=yn.model)
    first = prepare_dataset("bp4d", root=root, settings=settings, workers=1, progress=False)
    assert first.cache != haar.cache and first.cropped_now == first.frames      # a new cache, every frame again
    assert first.counts["face"] == 6
    entries = Entries.load(Path(first.cache) / "index.npz")
    for rel, box, lm in zip(entries.rel, entries.box, entries.landmarks):
        assert _iou(tuple(box), truth[str(rel)]) > 0.5 and np.isfinite(lm).all()
    assert cv2.imread(str(Path(first.cache) / "crops" / "F001/T1/2.jpg")).shape == (256, 256, 3)
    again = prepare_dataset("bp4d", root=root, settings=settings, workers=1, progress=False)
    assert again.cache == first.cache and again.cropped_now == 0
    cache = crop_cache_for(load_dataset("bp4d", root=str(root)), 224, announce=False)
    assert cache is not None and str(cache.folder) == first.cache and cache.describe()["detector"] == "yunet"


def test_embed_stores_landmarks_and_the_explorer_shows_the_aligned_face(with_yunet, group_photo, tmp_path):
    """`embed PATH...` with YuNet keeps each face's landmarks in the store; the explorer's crop of a row
    is the face on the alignment template (the eyes level, where the template puts them)."""
    from clefctl.data.faces.template import template_points
    from clefctl.serve.media import RowMedia, SourceGuard, face_image
    from clefctl.embed.run import EmbedOptions, run_embed
    from clefctl.store.format import EmbeddingStore

    canvas, _ = group_photo
    path = tmp_path / "group.png"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    res = run_embed(EmbedOptions(paths=(str(path),), weights="random", arch="clef-tiny", out=str(tmp_path / "s.h5"),
                                 index="none", progress=False))
    assert res.summary["detector"]["name"] == "yunet" and res.summary["faces"] == 4
    store = EmbeddingStore.open(tmp_path / "s.h5")
    try:
        df = store.metadata()
    finally:
        store.close()
    lm = df[[f"lmk_x_{i}" for i in range(5)] + [f"lmk_y_{i}" for i in range(5)]].to_numpy()
    assert np.isfinite(lm).all()
    assert ((lm[:, :5] >= df.box_x.to_numpy()[:, None]) & (lm[:, :5] <= (df.box_x + df.box_w).to_numpy()[:, None])).all()
    row = int(df.box_x.to_numpy().argmin())          # the astronaut
    points = np.stack([lm[row, :5], lm[row, 5:]], axis=1)
    media = RowMedia(row, str(path), None, tuple(int(df[c][row]) for c in ("box_x", "box_y", "box_w", "box_h")),
                     points)
    face = np.asarray(face_image(media, SourceGuard([str(path)]), 160))
    assert face.shape == (160, 160, 3)
    from clefctl.data.faces.choice import resolve_detector

    again = resolve_detector("yunet").make("photos").detect(face)
    assert again and np.abs(again[0].landmarks[:2] - template_points(160)[:2]).max() < 10


def test_the_command_line_offers_the_detectors_the_library_knows():
    from clefctl.commands.options import DETECTOR_CHOICES
    from clefctl.data.faces.choice import DETECTORS

    assert DETECTOR_CHOICES == DETECTORS
