"""clefctl.data.faces on real photos shipped with scikit-image, plus prepare and the CLI."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import data as skdata

from clefctl.cli import cli, main
from clefctl.data.faces import (CSV_COLUMNS, FaceCropper, expand_inputs, iter_video_frames,
                                prepare, read_image)
from clefctl.errors import ClefError


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper(size=96)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def _write_rgb(path, rgb) -> None:
    Image.fromarray(rgb).save(path)


def _write_video(path, rgb, frames: int, fourcc: str = "MJPG", fps: float = 10.0) -> None:
    small = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (256, 256))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    writer.release()


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


# -- detection and cropping ------------------------------------------------------------

def test_astronaut_one_face_in_the_face_region(cropper, astronaut):
    boxes = cropper.detect(astronaut)
    assert len(boxes) == 1
    x, y, w, h, score = boxes[0]
    # Eileen Collins' face spans about x 180-270, y 60-165 of the 512x512 photo
    assert 195 <= x + w / 2 <= 255
    assert 85 <= y + h / 2 <= 140
    assert 60 <= w <= 150 and 60 <= h <= 150
    assert score > 0

    result = cropper.crop(astronaut)
    assert result.found and result.box == tuple(boxes[0][:4])
    assert result.image.size == (96, 96) and result.image.mode == "RGB"
    # the head is upright: both eyes found and the correction is small
    assert result.aligned
    assert abs(result.angle) < 8
    (lx, ly), (rx, ry) = result.eyes
    assert x <= lx < x + w / 2 < rx <= x + w
    assert y <= ly <= y + h / 2 and y <= ry <= y + h / 2


def test_tilted_face_is_levelled(cropper, astronaut):
    upright = cropper.crop(astronaut).angle
    angles = {}
    for tilt in (-12, 12):
        m = cv2.getRotationMatrix2D((224, 113), tilt, 1.0)
        rotated = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
        result = cropper.crop(rotated)
        assert result.found and result.aligned
        angles[tilt] = result.angle
        # the applied rotation undoes the tilt (OpenCV sign convention: + = counter-clockwise)
        assert abs(result.angle - (upright - tilt)) < 5
    assert angles[-12] > 5 > -5 > angles[12]


def test_no_alignment_when_disabled(astronaut):
    result = FaceCropper(size=64, align=False).crop(astronaut)
    assert result.found and not result.aligned and result.angle == 0.0 and result.eyes is None


def test_lfw_faces_found_after_upscaling(cropper):
    images = skdata.lfw_subset()  # 200 grey 25x25 crops: 100 faces, then 100 non-faces
    assert images.shape == (200, 25, 25)
    faces = [cropper.crop(im) for im in images[:100]]
    rate = sum(r.found for r in faces) / 100
    assert rate >= 0.85, f"face detection rate on LFW faces {rate:.2f}"  # measured: 0.99
    found = next(r for r in faces if r.found)
    assert found.image.size == (96, 96)  # tiny input upscaled to the crop size
    x, y, w, h = found.box
    assert 0 <= x and 0 <= y and x + w <= 25 and y + h <= 25
    non_face_hits = sum(cropper.crop(im).found for im in images[100:150])
    assert non_face_hits <= 5  # measured: 1 of these 50


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_face_reported(cropper, name):
    result = cropper.crop(getattr(skdata, name)())
    assert not result.found
    assert result.image is None and result.box is None and result.angle == 0.0


def test_flat_image_has_no_face(cropper):
    assert cropper.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    assert not cropper.crop(np.full((120, 160), 0.5)).found


def test_crop_box_clamps_and_pads():
    rgb = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    rgb[..., 0] = 200
    fc = FaceCropper(margin=0.25, size=30)
    # 20x20 box at the corner: the 30x30 square fits, so it is shifted inside the image
    out = np.asarray(fc.crop_box(rgb, (0, 0, 20, 20)))
    assert out.shape == (30, 30, 3)
    assert np.array_equal(out, rgb[:30, :30])
    # a box larger than the image: the square cannot fit, the rest is black padding
    big = np.asarray(FaceCropper(margin=0.5, size=200).crop_box(rgb, (0, 0, 100, 100)))
    assert big.shape == (200, 200, 3)
    assert big[:40, :40].max() == 0 and big[100, 100, 0] == 200


# -- video frames ------------------------------------------------------------------------

def test_iter_video_frames_every_and_max(tmp_path, astronaut):
    video = tmp_path / "clip.avi"
    _write_video(video, astronaut, frames=7, fps=10.0)
    got = list(iter_video_frames(video, every=2))
    assert [i for i, _, _ in got] == [0, 2, 4, 6]
    assert [t for _, t, _ in got] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert got[0][2].shape == (256, 256, 3) and got[0][2].dtype == np.uint8
    assert len(list(iter_video_frames(video, every=1, max_frames=3))) == 3
    assert len(list(iter_video_frames(video))) == 7


def test_unopenable_video_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ClefError, match="broken.mp4"):
        list(iter_video_frames(bad))


# -- prepare -----------------------------------------------------------------------------

@pytest.fixture
def mixed_folder(tmp_path, astronaut):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    _write_rgb(folder / "astronaut.png", astronaut)
    _write_rgb(folder / "sub" / "coffee.jpg", skdata.coffee())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is a text file, not a PNG\n")
    (folder / "readme.txt").write_text("ignored: not an image extension\n")
    return folder


def test_prepare_folder_counts_and_csv(tmp_path, mixed_folder):
    out = tmp_path / "out"
    report = prepare([mixed_folder], out, size=64)
    assert report.images == 2 and report.faces == 1 and report.processed == 2
    assert report.no_face == [str(mixed_folder / "sub" / "coffee.jpg")]
    assert sorted(report.unreadable) == sorted([str(mixed_folder / "empty.jpg"),
                                                str(mixed_folder / "notes.png")])
    assert report.videos == 0 and report.frames == 0

    rows = _read_csv(out / "faces.csv")
    assert len(rows) == 2
    by_source = {r["source"]: r for r in rows}
    face = by_source[str(mixed_folder / "astronaut.png")]
    assert face["found"] == "1" and face["frame"] == "" and face["timestamp"] == ""
    assert 195 <= int(face["x"]) + int(face["w"]) / 2 <= 255
    crop = Image.open(out / face["crop_path"])
    assert crop.size == (64, 64) and crop.format == "JPEG"
    none = by_source[str(mixed_folder / "sub" / "coffee.jpg")]
    assert none["found"] == "0" and none["crop_path"] == "" and none["x"] == ""
    assert sorted(p.name for p in (out / "crops").iterdir()) == [face["crop_path"].split("/")[-1]]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_prepare_video_every_two(tmp_path, astronaut):
    video = tmp_path / "talk.avi"
    _write_video(video, astronaut, frames=7)
    out = tmp_path / "vout"
    report = prepare(video, out, size=48, every=2)
    assert report.videos == 1 and report.frames == 4 and report.images == 0
    assert report.faces == 4 and report.no_face == [] and report.unreadable == []
    rows = _read_csv(out / "faces.csv")
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6]
    assert [float(r["timestamp"]) for r in rows] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert all(r["found"] == "1" and (out / r["crop_path"]).is_file() for r in rows)
    assert len({r["crop_path"] for r in rows}) == 4
    capped = prepare([video], tmp_path / "capped", size=48, every=2, max_frames=2)
    assert capped.frames == 2


def test_prepare_counts_broken_video_as_unreadable(tmp_path, astronaut):
    _write_rgb(tmp_path / "a.png", astronaut)
    (tmp_path / "bad.webm").write_bytes(b"\x00" * 64)
    report = prepare([tmp_path / "a.png", tmp_path / "bad.webm"], tmp_path / "o", size=32)
    assert report.faces == 1 and report.unreadable == [str(tmp_path / "bad.webm")]


def test_expand_inputs_globs_dirs_and_missing(tmp_path, astronaut):
    _write_rgb(tmp_path / "b.png", astronaut[:64, :64])
    _write_rgb(tmp_path / "a.jpg", astronaut[:64, :64])
    (tmp_path / "c.txt").write_text("x")
    assert [p.name for p in expand_inputs(str(tmp_path / "*.png"))] == ["b.png"]
    assert [p.name for p in expand_inputs([tmp_path, tmp_path / "a.jpg"])] == ["a.jpg", "b.png"]
    with pytest.raises(ClefError, match="nope.jpg"):
        expand_inputs([tmp_path / "nope.jpg"])
    with pytest.raises(ClefError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.gif")])
    assert read_image(tmp_path / "c.txt") is None
    assert read_image(tmp_path / "b.png").shape == (64, 64, 3)


# -- CLI ---------------------------------------------------------------------------------

def test_cli_prepare_json(tmp_path, mixed_folder):
    out = tmp_path / "cli_out"
    res = CliRunner().invoke(cli, ["data", "prepare", str(mixed_folder), "--out", str(out),
                                   "--size", "48", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["images"] == 2 and summary["faces"] == 1
    assert len(summary["unreadable"]) == 2 and len(summary["no_face"]) == 1
    assert len(_read_csv(out / "faces.csv")) == 2


def test_cli_prepare_text_summary(tmp_path, mixed_folder):
    res = CliRunner().invoke(cli, ["data", "prepare", str(mixed_folder / "astronaut.png"),
                                   str(mixed_folder / "sub"), "--out", str(tmp_path / "t"),
                                   "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "faces found: 1/2" in res.output and "unreadable: 0" in res.output
    assert "coffee.jpg" in res.output and "faces.csv" in res.output


def test_cli_missing_input_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "missing.jpg" in capsys.readouterr().err


# -- the face pipeline (iter_faces) ------------------------------------------------------

def test_group_photo_every_face_numbered_left_to_right(tmp_path):
    from clefctl.data.faces import iou_matrix, iter_faces
    from clefctl.data.faces.scenes import group_photo

    rgb, truth = group_photo(5, width=800, height=300, face=110, seed=7)
    _write_rgb(tmp_path / "group.png", rgb)
    (frame,) = list(iter_faces([tmp_path / "group.png"], size=64))
    assert frame.frame == 1 and frame.timestamp == 0 and not frame.video and (frame.width, frame.height) == (800, 300)
    assert [f.face_id for f in frame.faces] == [0, 1, 2, 3, 4]
    assert iou_matrix(np.array([f.box for f in frame.faces]), np.array(truth)).diagonal().min() > 0.4
    assert all(f.crop.shape == (64, 64, 3) and 0 < f.confidence <= 1 for f in frame.faces)


def test_pipeline_takes_any_detector_and_reports_unreadable_inputs(tmp_path, astronaut):
    from clefctl.data.faces import Detection, Detector, PipelineStats, iter_faces

    class Corners(Detector):
        name = "corners"

        def detect(self, rgb, grey=None):
            return [Detection((0, 0, 40, 40), 0.5, 1.0), Detection((100, 100, 60, 60), 0.9, 2.0)]

    _write_rgb(tmp_path / "a.png", astronaut)
    (tmp_path / "b.png").write_bytes(b"not an image")
    stats = PipelineStats()
    calls = []

    def encoder(crops):
        calls.append(len(crops))
        return np.ones((len(crops), 3), np.float32) / np.sqrt(3)

    out = list(iter_faces([tmp_path / "a.png", tmp_path / "b.png"], detector=Corners(), size=32,
                          encoders=[encoder], stats=stats))
    assert [f.box for f in out[0].faces] == [(0, 0, 40, 40), (100, 100, 60, 60)]
    assert out[0].faces[1].feature.shape == (3,) and calls == [2]
    assert out[1].unreadable and out[1].faces == [] and stats.unreadable == [str(tmp_path / "b.png")]
    assert stats.frames == 1 and stats.faces == 2 and stats.photos == 1


def test_video_detection_searches_a_reduced_copy():
    from clefctl.data.faces import HaarDetector

    det = HaarDetector.for_video()
    work, scale, pad = det.detection_image(np.zeros((360, 640), np.uint8))
    assert pad == 0 and work.shape == (round(360 * scale), round(640 * scale)) and scale < 0.65
    # the smallest face wanted (1/8 of 360 = 45 px) spans about one 24-px cascade window
    assert 24 <= 45 * scale <= 30
    photo, s2, _ = HaarDetector.for_photos().detection_image(np.zeros((360, 640), np.uint8))
    assert s2 == 1.0 and photo.shape == (360, 640)


def test_read_frame_gives_the_frame_the_pipeline_numbered(tmp_path, astronaut):
    from clefctl.data.faces import read_frame

    video = tmp_path / "clip.avi"
    frames = [np.roll(cv2.resize(astronaut, (128, 128)), 20 * i, axis=1) for i in range(5)]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    got = read_frame(video, 4)
    errors = [np.abs(got.astype(int) - f.astype(int)).mean() for f in frames]
    assert int(np.argmin(errors)) == 3
    with pytest.raises(ClefError, match="no frame 9"):
        read_frame(video, 9)


def test_the_dark_face_search_finds_faces_the_cascade_misses_and_loses_none():
    from clefctl.data.faces.detect import HaarDetector
    from clefctl.data.faces.scenes import skin_tone_photos
    from clefctl.errors import ClefError

    def hit(det, rgb, box):
        return any(abs(d.box[0] - box[0]) < box[2] / 2 and abs(d.box[1] - box[1]) < box[3] / 2
                   for d in det.detect(rgb))
    photos = skin_tone_photos(20)
    plain, dark = HaarDetector.for_photos(), HaarDetector.for_photos()
    plain.dark = "off"
    assert dark.describe()["dark"] == "merge" and HaarDetector.for_frames().dark == "fallback"
    seen = [hit(plain, rgb, box) for _, rgb, box in photos]
    assert not all(seen)                                   # the cascade misses some (the darker ones)
    missed = [(lum, rgb, box) for (lum, rgb, box), s in zip(photos, seen) if not s]
    assert max(lum for lum, _, _ in missed) < 150          # ... and they are darker-skinned
    assert any(hit(dark, rgb, box) for _, rgb, box in missed)
    assert all(hit(dark, rgb, box) for (_, rgb, box), s in zip(photos, seen) if s)   # nothing lost
    with pytest.raises(ClefError, match="dark-face search"):
        HaarDetector(dark="sometimes")
