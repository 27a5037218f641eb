"""Generated scenes with known faces, for tests and benchmarks: group photos and videos of
synthetic faces (:func:`clefctl.data.synthetic.render_face`) composited on a background, with
the ground-truth box and person of every face on every frame.

The video (:func:`write_scene_video`) has ``people`` faces drifting in their own lanes with
changing expressions; person 0 walks out of the left edge and comes back into its lane after
about two seconds (a re-entry), and for a short stretch the scene cuts to an empty background
(frames without a face). Faces only partly inside the frame are marked ``ignore`` in the truth
(neither a miss nor a false positive).

Only the test suite and ``benchmarks/`` use this module; nothing in the library or the command line
imports it. It stays in the package because the benchmarks import it from an installed clefctl
(``benchmarks/`` is not a package and the tests' helpers are not installed), and it draws with the
synthetic renderer, so moving it would only split the face generator from its test data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clefctl.errors import ClefError


@dataclass
class Sprite:
    """One rendered face: RGB pixels, a feathered alpha mask and the face box in its pixels."""

    rgb: np.ndarray
    alpha: np.ndarray
    face: tuple[int, int, int, int]


@dataclass
class SceneTruth:
    """Per frame (0-based list index = frame - 1): ``(person, box, ignore)`` for each face."""

    fps: float
    width: int
    height: int
    frames: list[list[tuple[int, tuple[int, int, int, int], bool]]] = field(default_factory=list)
    leave: tuple[int, int] = (0, 0)        # frames (1-based, inclusive) without person 0
    empty: tuple[int, int] = (0, 0)        # frames (1-based, inclusive) without any face

    def to_dict(self) -> dict:
        return {"fps": self.fps, "width": self.width, "height": self.height, "leave": self.leave,
                "empty": self.empty, "frames": [[[p, list(b), ig] for p, b, ig in f] for f in self.frames]}


def _detected(sprite: Sprite, detector) -> bool:
    s = sprite.rgb.shape[0]
    canvas = np.full((2 * s, 2 * s, 3), 128, np.uint8)
    paste(canvas, sprite, s // 2, s // 2)
    return bool(detector.detect(canvas))


def face_alpha(size: int) -> np.ndarray:
    """The feathered elliptical mask (float32 0-1) that blends a ``size`` x ``size`` rendered face."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ell = ((xx - size * 0.5) / (size * 0.40)) ** 2 + ((yy - size * 0.52) / (size * 0.50)) ** 2
    return cv2.GaussianBlur(np.clip((1.15 - ell) * 4.0, 0, 1).astype(np.float32), (0, 0), size / 40)


def face_sprites(people: int, *, size: int = 112, variants: int = 4, seed: int = 0,
                 detectable: bool = True) -> list[list[Sprite]]:
    """``variants`` renders (from neutral to a broad smile with dropped jaw) of ``people``
    synthetic identities, each ``size`` pixels square with an elliptical alpha mask.

    ``detectable``: keep only identities whose every render OpenCV's frontal-face cascade finds
    on a plain grey background at the video setting (:meth:`HaarDetector.for_video`). The
    cascade misses many of the renderer's darker-skinned faces (a known bias of the Haar
    cascades, see docs/predict.md); screening them out makes a scene measure the pipeline
    (reduction, key frames, tracking), not that bias."""
    from clefctl.data.faces.detect import HaarDetector
    from clefctl.data.synthetic.identity import Pose, make_identity
    from clefctl.data.synthetic.render import render_face

    rng = np.random.default_rng(seed)
    alpha = face_alpha(size)
    detector = HaarDetector.for_video(dark=False) if detectable else None  # the screening of the first scenes
    out: list[list[Sprite]] = []
    tried = 0
    while len(out) < people:
        tried += 1
        if tried > 40 * people:
            raise ClefError(f"could not draw {people} detectable synthetic faces of {size} pixels")
        idn = make_identity(f"P{tried:03d}", rng)
        renders = []
        for v in range(variants):
            k = v / max(1, variants - 1)
            img, parts = render_face(idn, aus={6: 2.5 * k, 12: 3.0 * k, 25: 2.0 * k, 26: 1.5 * k},
                                     pose=Pose(), size=size, seed=seed * 100 + tried * 10 + v)
            keys = ("forehead", "brows", "eyes", "cheeks", "mouth", "chin", "jaw")
            pts = np.array([b for k2 in keys for b in parts.get(k2, [])])
            x0, y0, x1, y1 = pts[:, 0].min(), pts[:, 1].min(), pts[:, 2].max(), pts[:, 3].max()
            side = max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            face = (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side)))
            renders.append(Sprite(np.asarray(img), alpha, face))
        if detector is None or all(_detected(r, detector) for r in renders):
            out.append(renders)
    return out


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour field with soft stripes and a few blurred shapes (RGB uint8)."""
    from clefctl.data.synthetic.identity import background as square

    rng = np.random.default_rng(seed)
    bg = np.asarray(square(rng, max(width, height)).resize((width, height))).astype(np.float32)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(bg, (x, y), (x + int(rng.integers(20, 120)), y + int(rng.integers(20, 80))), c, -1)
    return np.clip(cv2.GaussianBlur(bg, (0, 0), 2.0), 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, sprite: Sprite, x: int, y: int) -> tuple[int, int, int, int]:
    """Alpha-blend ``sprite`` with its top-left corner at (x, y) (clipped); return the face box."""
    H, W = canvas.shape[:2]
    s = sprite.rgb.shape[0]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + s), min(H, y + s)
    if x1 > x0 and y1 > y0:
        a = sprite.alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        canvas[y0:y1, x0:x1] = (a * sprite.rgb[y0 - y:y1 - y, x0 - x:x1 - x] + (1 - a) * region).astype(np.uint8)
    fx, fy, fw, fh = sprite.face
    return x + fx, y + fy, fw, fh


def group_photo(people: int = 4, *, width: int = 800, height: int = 360, face: int = 120,
                seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A photo of ``people`` faces side by side on a background; returns (RGB, face boxes left
    to right)."""
    if people * face > width:
        raise ClefError(f"{people} faces of {face} pixels do not fit side by side in {width} pixels")
    sprites = face_sprites(people, size=face, variants=2, seed=seed)
    canvas = background(width, height, seed)
    rng = np.random.default_rng(seed + 1)
    gap = (width - people * face) / (people + 1)
    boxes = []
    for p in range(people):
        x = int(gap + p * (face + gap))
        y = int((height - face) / 2 + rng.integers(-height // 10, height // 10 + 1))
        boxes.append(paste(canvas, sprites[p][p % 2], x, y))
    return canvas, boxes


def _writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    fourcc = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not vw.isOpened():
        raise ClefError(f"OpenCV cannot write {fourcc} video here", path=path, hint="write an .avi (MJPG)")
    return vw


def write_scene_video(path: str | os.PathLike, *, frames: int = 150, width: int = 640, height: int = 360,
                      fps: float = 25.0, people: int = 3, face: int = 112, seed: int = 0) -> SceneTruth:
    """Write the scene video (see the module docstring) to ``path`` (.mp4: mp4v, .avi: MJPG) and
    return its ground truth. Person 0 is out from about 30% to 50% of the clip (entering and
    leaving over 0.4 s), no face is shown from about 70% to 76%."""
    path = Path(path)
    if frames < 20 or people < 1 or people * face > width:
        raise ClefError("a scene video needs at least 20 frames and faces that fit side by side")
    sprites = face_sprites(people, size=face, variants=4, seed=seed)
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 2)
    lanes = [(p + 0.5) * width / people - face / 2 for p in range(people)]
    phase = rng.uniform(0, 2 * np.pi, (people, 2))
    walk = max(2, int(round(0.4 * fps)))
    out_from, back_at = int(0.30 * frames), int(0.50 * frames)
    empty = (int(0.70 * frames), int(0.76 * frames))
    truth = SceneTruth(fps, width, height, leave=(out_from + walk + 1, back_at), empty=(empty[0] + 1, empty[1]))
    vw = _writer(path, fps, width, height)
    noise = np.random.default_rng(seed + 3)
    try:
        for i in range(frames):
            canvas = bg.copy()
            faces = []
            if not empty[0] <= i < empty[1]:
                for p in range(people):
                    t = i / fps
                    x = lanes[p] + 0.25 * (width / people - face) * np.sin(0.6 * t + phase[p, 0])
                    y = (height - face) / 2 + 0.12 * height * np.sin(0.8 * t + phase[p, 1])
                    if p == 0 and out_from <= i < back_at + walk:
                        if i < out_from + walk:          # walking out to the left
                            x -= (x + face) * (i - out_from + 1) / walk
                        elif i < back_at:
                            continue
                        else:                            # walking back in
                            x -= (x + face) * (1 - (i - back_at + 1) / walk)
                    variant = int((i // max(1, int(fps))) + p) % len(sprites[p])
                    box = paste(canvas, sprites[p][variant], int(round(x)), int(round(y)))
                    inside = box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= width and box[1] + box[3] <= height
                    faces.append((p, box, not inside))
            canvas = np.clip(canvas.astype(np.int16) + noise.integers(-4, 5, canvas.shape), 0, 255).astype(np.uint8)
            vw.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
            truth.frames.append(faces)
    finally:
        vw.release()
    return truth


def score_faces(truth: SceneTruth, found: dict[int, list[tuple[int, tuple]]], *, iou: float = 0.3) -> dict:
    """Detection and tracking against the truth. ``found``: frame (1-based) -> [(face_id, box)].

    A found box matches a true face when their IoU is at least ``iou`` (one to one, best overlap
    first). ``recall``: matched / true faces on the frames that show one (faces marked ignore left
    out); ``false_positive_frames``: share of frames with a found box that matches no face (boxes
    over an ignored face excepted); ``id_switches``: times a person's matched face id differs from
    the id it last had; ``reentries``: times person 0 came back."""
    from clefctl.data.faces.track import iou_matrix

    true_faces = matched = fp_frames = switches = 0
    last_id: dict[int, int] = {}
    ids_of: dict[int, set] = {}
    for i, faces in enumerate(truth.frames):
        boxes = found.get(i + 1, [])
        counted = [(p, b) for p, b, ig in faces if not ig]
        ignored = [b for p, b, ig in faces if ig]
        true_faces += len(counted)
        rows: set[int] = set()
        used: set[int] = set()
        if counted and boxes:
            m = iou_matrix(np.array([b for _, b in counted]), np.array([b for _, b in boxes]))
            for flat in np.argsort(-m, axis=None, kind="stable"):
                r, c = divmod(int(flat), m.shape[1])
                if m[r, c] < iou:
                    break
                if r in rows or c in used:
                    continue
                rows.add(r)
                used.add(c)
                matched += 1
                person, fid = counted[r][0], boxes[c][0]
                if person in last_id and last_id[person] != fid:
                    switches += 1
                last_id[person] = fid
                ids_of.setdefault(person, set()).add(fid)
        stray = [b for j, (_, b) in enumerate(boxes) if j not in used]
        if ignored and stray:
            m = iou_matrix(np.array(stray), np.array(ignored))
            stray = [b for k, b in enumerate(stray) if m[k].max() < 0.1]
        fp_frames += bool(stray)
    n = len(truth.frames)
    return {"frames": n, "true_faces": true_faces, "recall": matched / true_faces if true_faces else float("nan"),
            "false_positive_frames": fp_frames / n if n else 0.0, "id_switches": switches,
            "reentries": 1 if truth.leave[1] > truth.leave[0] else 0,
            "ids_per_person": {p: sorted(v) for p, v in sorted(ids_of.items())}}


FRAME_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)   # the BP4D label files' literature AUs


def write_frame_dataset(root: str | os.PathLike, *, subjects: tuple[str, ...] = ("F001", "M001"),
                        tasks: tuple[str, ...] = ("T1", "T2"), frames: int = 12, width: int = 260,
                        height: int = 348, face: int = 150, seed: int = 0, quality: int = 90,
                        blank: tuple[int, ...] = (), noise: int = 0) -> dict[str, tuple[int, int, int, int]]:
    """Whole camera frames in the BP4D layout, one synthetic face per frame drifting slowly, with AU
    labels: ``AUCoding/AU_OCC/{subject}_{task}.csv`` and ``{subject}/{task}/{frame}.jpg`` (frames
    numbered from 1). Frames whose number is in ``blank`` show the background only (no face). ``noise``:
    uniform sensor noise of +-noise grey levels (camera frames' JPEGs are larger and slower to decode). Returns
    the face box (x, y, w, h) of each frame with a face, keyed by its path relative to ``root``."""
    root = Path(root)
    sprites = face_sprites(len(subjects), size=face, variants=3, seed=seed)
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 5)
    truth: dict[str, tuple[int, int, int, int]] = {}
    for p, subject in enumerate(subjects):
        for task in tasks:
            folder = root / subject / task
            folder.mkdir(parents=True, exist_ok=True)
            x0 = (width - face) / 2 + rng.uniform(-0.1, 0.1) * width
            y0 = (height - face) / 2 + rng.uniform(-0.1, 0.1) * height
            lines = ["0," + ",".join(str(a) for a in FRAME_AUS)]
            for n in range(1, frames + 1):
                canvas = bg.copy()
                if n not in blank:
                    x = int(round(x0 + 0.04 * width * np.sin(0.3 * n)))
                    y = int(round(y0 + 0.03 * height * np.cos(0.2 * n)))
                    truth[f"{subject}/{task}/{n}.jpg"] = paste(canvas, sprites[p][n % 3], x, y)
                if noise:
                    canvas = np.clip(canvas.astype(np.int16) + rng.integers(-noise, noise + 1, canvas.shape),
                                     0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{n}.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
                lines.append(f"{n}," + ",".join(str(int(v)) for v in rng.integers(0, 2, len(FRAME_AUS))))
            occ = root / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv"
            occ.parent.mkdir(parents=True, exist_ok=True)
            occ.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def skin_tone_photos(n: int, *, face: int = 120, width: int = 360, height: int = 300,
                     seed: int = 1) -> list[tuple[float, np.ndarray, tuple[int, int, int, int]]]:
    """``n`` photos of one synthetic face each, identities drawn over the renderer's whole range of
    skin tones (none screened out): ``(skin luminance 0-255, RGB photo, face box)``. For measuring
    detection by skin tone (``benchmarks/detect_skin.py``)."""
    from clefctl.data.synthetic.identity import Pose, make_identity
    from clefctl.data.synthetic.render import render_face

    rng = np.random.default_rng(seed)
    alpha = face_alpha(face)
    bg = background(width, height, 0)
    x, y = (width - face) // 2, (height - face) // 2
    out = []
    for k in range(n):
        idn = make_identity(f"P{k:03d}", rng)
        img, _ = render_face(idn, aus={12: 1.0 * (k % 3)}, pose=Pose(), size=face, seed=k)
        canvas = bg.copy()
        paste(canvas, Sprite(np.asarray(img), alpha, (0, 0, face, face)), x, y)
        r, g, b = idn.skin
        out.append((0.299 * r + 0.587 * g + 0.114 * b, canvas, (x, y, face, face)))
    return out
