"""Face ids along a video: the Tracker on given boxes and features, key-frame detection, and the
whole pipeline on a generated video whose faces are known."""

from __future__ import annotations

import numpy as np
import pytest

from clefctl.data.faces import KeyframeDetector, Tracker, iter_faces
from clefctl.data.faces.detect import Detection, Detector


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


PEOPLE = [_unit(np.eye(8)[k] + 0.05) for k in range(4)]   # four clearly different appearances


def test_ids_follow_moving_faces_left_to_right():
    tr = Tracker()
    seen = []
    for i in range(30):
        boxes = [(10 + 3 * i, 50, 80, 80), (200 - 2 * i, 60, 80, 80), (400, 40 + i, 90, 90)]
        seen.append(tr.update(boxes, [PEOPLE[0], PEOPLE[1], PEOPLE[2]], t=i / 25))
    assert all(ids == [0, 1, 2] for ids in seen)
    assert tr.update([], None, t=2.0) == []


def test_a_short_gap_keeps_the_id_and_order_does_not_matter():
    tr = Tracker(max_gap=1.0)
    assert tr.update([(100, 100, 80, 80), (300, 100, 80, 80)], [PEOPLE[0], PEOPLE[1]], t=0.0) == [0, 1]
    assert tr.update([(300, 100, 80, 80)], [PEOPLE[1]], t=0.4) == [1]          # face 0 missed for a while
    assert tr.update([(305, 100, 80, 80), (104, 102, 80, 80)], [PEOPLE[1], PEOPLE[0]], t=0.8) == [1, 0]


def test_a_face_that_leaves_and_returns_gets_its_id_back():
    tr = Tracker(max_gap=1.0)
    for i in range(10):  # two people side by side calibrate the threshold
        tr.update([(100, 100, 80, 80), (300, 100, 80, 80)], [PEOPLE[0], PEOPLE[1]], t=i / 10)
    for i in range(10, 40):  # person 0 is away for 3 s
        tr.update([(300, 100, 80, 80)], [PEOPLE[1]], t=i / 10)
    back = tr.update([(300, 100, 80, 80), (500, 300, 80, 80)], [PEOPLE[1], PEOPLE[0]], t=4.0)
    assert back == [1, 0] and tr.reidentified == 1          # same id, far from where it left
    stranger = tr.update([(300, 100, 80, 80), (500, 300, 80, 80), (50, 300, 80, 80)],
                         [PEOPLE[1], PEOPLE[0], PEOPLE[3]], t=4.1)
    assert stranger == [1, 0, 2]                             # a new person: a new id
    assert tr._diff.mean < tr.threshold < tr._same.mean


def test_without_features_overlap_alone_tracks():
    tr = Tracker()
    assert tr.update([(0, 0, 50, 50)], None, 0.0) == [0]
    assert tr.update([(5, 0, 50, 50)], None, 0.1) == [0]
    assert tr.update([(400, 0, 50, 50)], None, 0.2) == [1]   # no overlap, no appearance: a new face


class _Fixed(Detector):
    """A detector that reports the boxes it is given (the pluggable interface)."""

    name = "fixed"

    def __init__(self, boxes):
        self.boxes, self.calls = boxes, 0

    def detect(self, rgb, grey=None):
        self.calls += 1
        return [Detection(b, 0.9, 1.0) for b in self.boxes]


def test_key_frames_detect_and_templates_follow_in_between():
    import cv2

    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX)  # a smooth texture with contrast
    det = _Fixed([(100.0, 60.0, 60.0, 60.0)])
    kf = KeyframeDetector(det, every=5)
    boxes = []
    for i in range(10):  # the texture moves 2 px right per frame
        moved = np.roll(frame, 2 * i, axis=1)
        found = kf(moved)
        assert len(found) == 1
        boxes.append(found[0].detection.box)
        assert found[0].keyed == (i % 5 == 0)
    assert det.calls == 2 and kf.key_frames == 2
    assert abs(boxes[3][0] - (100 + 6)) <= 1.5          # followed by template matching, not re-detected
    kf.reset()
    det.boxes = []
    assert kf(np.zeros_like(frame)) == [] and det.calls == 3


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from clefctl.data.faces.scenes import write_scene_video

    path = tmp_path_factory.mktemp("scene") / "scene.avi"
    truth = write_scene_video(path, frames=150, width=480, height=270, face=96, people=3, fps=25, seed=3)
    return path, truth


def test_generated_video_keeps_every_faces_id(scene):
    from clefctl.data.faces.scenes import score_faces

    path, truth = scene
    found = {ff.frame: [(f.face_id, f.box) for f in ff.faces] for ff in iter_faces([path], size=48)}
    assert len(found) == 150
    score = score_faces(truth, found)
    assert score["recall"] >= 0.9 and score["false_positive_frames"] <= 0.02
    assert score["id_switches"] <= score["reentries"]       # at most one switch per re-entry
    assert all(len(ids) <= 2 for ids in score["ids_per_person"].values())
    assert score["ids_per_person"][1] == [1] and score["ids_per_person"][2] == [2]
    lo, hi = truth.empty
    assert all(found[f] == [] for f in range(lo, hi + 1))   # the empty stretch has no face
