"""Procedural synthetic faces driven by FACS action units, written in the BP4D and RAF-DB layouts.

Owns the embedded default data (``synthetic-au``, ``synthetic-fer``): numpy + Pillow only, no
external assets. Each subject/identity has fixed face parameters drawn from a seed; each image
has AU intensities in [0, 1], each AU drawn as a visible, anatomically placed change; per-frame
nuisances (head rotation, scale, shift, lighting, noise, background) vary independently.

Conventions:

* Occurrence label = intensity >= :data:`OCCURRENCE_THRESHOLD` (0.5). Intensities are drawn as a
  mixture: inactive AUs lie in [0, 0.2] (mostly near 0), active ones in [0.6, 1.0], so labels are
  learnable from pixels (an expression image may also carry one faint extra AU at 0.2-0.4).
  Every AU also occurs at BASE_RATE in every task, so AUs are not given away by the task.
* ``write_au``: BP4D layout. ``AUCoding/AU_OCC/{subject}_{task}.csv`` (header ``0`` then the AU
  numbers of :data:`AU_IDS`, integer 0/1 values) and frames ``{subject}/{task}/{frame:04d}.jpg``;
  frame numbers start at :data:`FIRST_FRAME` (1000) and count up by one per frame in each task.
* ``write_fer``: RAF-DB layout. ``EmoLabel/list_patition_label.txt`` with ``train_00001.jpg 4``
  lines (labels 1-7 = :data:`EXPRESSIONS`), images ``Image/aligned/{stem}_aligned.jpg``. Test
  images come from identities never used for training; name numbers are assigned in shuffled order.
* Both write ``synthetic.json``: generator version, parameters, identities, and per image the AU
  intensities, identity, pose and face-part boxes ``[x0, y0, x1, y1]`` in pixels of the written
  image (after the nuisance transform). :func:`au_regions` maps each AU to the parts it changes.
* Same seed and sizes -> byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clefctl.errors import ClefError
from clefctl.paths import atomic_path, cache_dir

GENERATOR_VERSION = 1
SIDECAR = "synthetic.json"
OCCURRENCE_THRESHOLD = 0.5
FIRST_FRAME = 1000
JPEG_QUALITY = 92
SUPERSAMPLE = 3

#: Every AU the generator draws, sorted by number (the BP4D CSV columns after ``0``).
AU_IDS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    12: "lip corner puller", 14: "dimpler", 15: "lip corner depressor", 17: "chin raiser",
    20: "lip stretcher", 23: "lip tightener", 24: "lip pressor", 25: "lips part", 26: "jaw drop",
}
#: RAF-DB order; the label file uses 1 + the index.
EXPRESSIONS: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                "neutral")
TASKS: tuple[str, ...] = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8")
TASK_EMOTIONS: dict[str, str] = {
    "T1": "happiness (joke)", "T2": "sadness (documentary)", "T3": "surprise (startle)",
    "T4": "embarrassment (silly song)", "T5": "fear (physical threat)", "T6": "pain (ice water)",
    "T7": "anger (insult)", "T8": "disgust (smell)",
}
#: Probability that an AU is active in a frame of the task; other AUs use BASE_RATE.
TASK_PROFILES: dict[str, dict[int, float]] = {
    "T1": {6: 0.70, 12: 0.80, 25: 0.45},
    "T2": {1: 0.60, 4: 0.60, 15: 0.60, 17: 0.40},
    "T3": {1: 0.70, 2: 0.70, 5: 0.45, 25: 0.70, 26: 0.60},
    "T4": {12: 0.65, 14: 0.60, 24: 0.55, 6: 0.40},
    "T5": {1: 0.60, 2: 0.55, 4: 0.55, 7: 0.60, 25: 0.55, 5: 0.35, 20: 0.40},
    "T6": {4: 0.65, 6: 0.60, 7: 0.65, 9: 0.50, 10: 0.60},
    "T7": {4: 0.70, 7: 0.60, 23: 0.60, 24: 0.55, 17: 0.40},
    "T8": {9: 0.65, 10: 0.65, 15: 0.55, 17: 0.50},
}
BASE_RATE = 0.10
#: Prototype AUs per expression: (core, optional). Core AUs are drawn active (kept with p=0.9),
#: optional ones with p=0.5, any other AU at most a faint extra.
EXPRESSION_PROTOTYPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "surprise": ((1, 2, 5, 25, 26), ()),
    "fear": ((1, 2, 4, 5, 7, 20, 25), ()),
    "disgust": ((9, 10, 15), (17,)),
    "happiness": ((6, 12), (25,)),
    "sadness": ((1, 4, 15), (17,)),
    "anger": ((4, 7, 23, 24), (17,)),
    "neutral": ((), ()),
}
#: AU pairs that pull the same feature in opposite directions: never both active.
EXCLUSIVE: tuple[tuple[int, int], ...] = ((12, 15), (24, 25), (24, 26), (20, 23), (14, 20))

PARTS: tuple[str, ...] = ("forehead", "brows", "inner_brows", "outer_brows", "glabella", "eyes",
                          "cheeks", "nose", "nasolabial", "mouth", "mouth_corners", "chin", "jaw",
                          "neck")

_AU_REGIONS: dict[int, tuple[str, ...]] = {
    1: ("inner_brows", "forehead"),
    2: ("outer_brows", "forehead"),
    4: ("brows", "glabella"),
    5: ("eyes",),
    6: ("cheeks", "eyes"),
    7: ("eyes",),
    9: ("nose", "glabella"),
    10: ("nasolabial", "mouth"),
    12: ("mouth_corners", "nasolabial", "cheeks"),
    14: ("mouth_corners",),
    15: ("mouth_corners", "mouth", "chin"),
    17: ("chin", "mouth"),
    20: ("mouth_corners", "mouth", "neck"),
    23: ("mouth",),
    24: ("mouth",),
    25: ("mouth",),
    26: ("mouth", "jaw", "chin"),
}

KINDS = ("synthetic-au", "synthetic-fer")
AU_DEFAULTS: dict[str, Any] = {"subjects": 12, "tasks": 8, "frames_per_task": 24, "size": 128,
                               "seed": 0}
FER_DEFAULTS: dict[str, Any] = {"subjects": 40, "images_per_class": 200, "size": 100, "seed": 0,
                                "test_fraction": 0.2}

_SALT_AU_IDENTITY = 11
_SALT_FER_IDENTITY = 12
_SALT_SEQUENCE = 21
_SALT_FER = 31


def au_regions() -> dict[str, list[str]]:
    """Map each AU id (``"AU12"``) to the face parts (sidecar region keys) it changes.

    Parts: forehead, brows, inner_brows, outer_brows, glabella (between the brows), eyes, cheeks,
    nose, nasolabial (folds from nose wings to mouth corners), mouth (lips and the skin just
    above and below them), mouth_corners, chin, jaw, neck.
    Example: ``au_regions()["AU12"] == ["mouth_corners", "nasolabial", "cheeks"]``.
    """
    return {f"AU{a}": list(parts) for a, parts in _AU_REGIONS.items()}


# --------------------------------------------------------------------------------------------
# identities and nuisances

_SKIN_TONES = np.array([(244, 214, 192), (228, 184, 152), (205, 150, 112), (168, 112, 76),
                        (124, 82, 56), (100, 66, 48)], dtype=float)
_HAIR_COLOURS = np.array([(28, 24, 22), (58, 40, 28), (102, 68, 44), (196, 160, 98),
                          (146, 72, 38), (150, 148, 145)], dtype=float)
_IRIS_COLOURS = np.array([(70, 45, 30), (40, 30, 25), (70, 110, 150), (90, 120, 80)], dtype=float)


@dataclass(frozen=True)
class Identity:
    """Face parameters fixed per subject (face units: half the face width is about 1)."""

    name: str
    sex: str
    face_w: float
    face_top: float
    face_bottom: float
    jaw: float
    skin: tuple[int, int, int]
    eye_sep: float
    eye_w: float
    eye_up: float
    eye_lo: float
    iris: tuple[int, int, int]
    brow_y: float
    brow_thick: float
    brow_arch: float
    brow_colour: tuple[int, int, int]
    nose_size: float
    nose_y: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    lip_colour: tuple[int, int, int]
    hair_colour: tuple[int, int, int]
    hair_style: str
    fringe: bool
    hairline: float
    glasses: bool
    glasses_colour: tuple[int, int, int]
    clothes: tuple[int, int, int]
    fold: float


def _rgb(a) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(a), 0, 255))


def make_identity(name: str, rng: np.random.Generator) -> Identity:
    """Draw one subject's face parameters; ``name`` starting with ``F`` or ``M`` sets the sex."""
    sex = "F" if name.startswith("F") else "M"
    female = sex == "F"
    u = rng.uniform
    t = u(0, len(_SKIN_TONES) - 1)
    i = int(t)
    skin = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[min(i + 1, len(_SKIN_TONES) - 1)] * (t - i)
    skin = skin + rng.normal(0, 5, 3)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=[.3, .25, .18, .12, .07, .08])]
    hair = hair * u(0.85, 1.15)
    if female:
        style = str(rng.choice(["long", "short"], p=[0.75, 0.25]))
    else:
        style = str(rng.choice(["short", "long", "bald"], p=[0.7, 0.1, 0.2]))
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([40, 0, 5]) * u(0.6, 1.2)
    if female:
        lip = lip * np.array([1.05, 0.85, 0.9])
    brow_colour = np.minimum(hair, skin) * 0.55 if style != "bald" else skin * 0.35
    return Identity(
        name=name, sex=sex,
        face_w=u(0.92, 1.06), face_top=u(1.20, 1.30), face_bottom=u(1.22, 1.38),
        jaw=u(2.0, 2.7) if not female else u(1.7, 2.3),
        skin=_rgb(skin),
        eye_sep=u(0.40, 0.46), eye_w=u(0.19, 0.23), eye_up=u(0.085, 0.105), eye_lo=u(0.05, 0.065),
        iris=_rgb(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.8, 1.2)),
        brow_y=u(-0.36, -0.30), brow_thick=u(0.05, 0.07) if female else u(0.065, 0.09),
        brow_arch=u(0.03, 0.07), brow_colour=_rgb(brow_colour),
        nose_size=u(0.85, 1.15), nose_y=u(0.50, 0.58),
        mouth_y=u(0.88, 0.95), mouth_w=u(0.27, 0.34),
        lip_up=u(0.055, 0.075) * (1.15 if female else 1.0),
        lip_lo=u(0.07, 0.09) * (1.15 if female else 1.0),
        lip_colour=_rgb(lip), hair_colour=_rgb(hair), hair_style=style,
        fringe=bool(style != "bald" and rng.random() < 0.4), hairline=u(-0.98, -0.88),
        glasses=bool(rng.random() < 0.2), glasses_colour=_rgb(rng.uniform(10, 120, 3)),
        clothes=_rgb(rng.uniform(20, 230, 3)), fold=u(0.05, 0.2),
    )


@dataclass(frozen=True)
class Pose:
    """Per-frame nuisances: rotation (deg), scale, shift (fraction of image), lighting, noise."""

    angle: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    light_angle: float = 0.0
    light_amp: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    noise: float = 0.0
    gaze: float = 0.0


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Smoothed white noise with unit marginal variance (length n)."""
    pad = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / sigma) ** 2)
    k /= np.sqrt((k ** 2).sum())
    return np.convolve(rng.standard_normal(n + 2 * pad), k, mode="valid")


def _pose_sequence(rng: np.random.Generator, n: int, sigma: float) -> list[Pose]:
    def track(lo, hi):
        z = np.clip(_smooth_noise(rng, n, sigma) / 2.2, -1, 1)
        return lo + (hi - lo) * (z + 1) / 2

    angle, scale = track(-8, 8), track(0.92, 1.08)
    dx, dy = track(-5 / 128, 5 / 128), track(-5 / 128, 5 / 128)
    gaze = track(-0.025, 0.025)
    la = float(rng.uniform(0, 2 * np.pi))
    amp, bri = track(0.0, 0.35), track(0.85, 1.12)
    con, noi = track(0.8, 1.15), float(rng.uniform(1.0, 5.0))
    return [Pose(angle=float(angle[i]), scale=float(scale[i]), dx=float(dx[i]), dy=float(dy[i]),
                 light_angle=la, light_amp=float(amp[i]), brightness=float(bri[i]),
                 contrast=float(con[i]), noise=noi, gaze=float(gaze[i])) for i in range(n)]


def _random_pose(rng: np.random.Generator) -> Pose:
    return _pose_sequence(rng, 1, 1.0)[0]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random colour field, sometimes with soft stripes (drawn at ``size`` pixels)."""
    grey = rng.uniform(50, 210)
    base = grey + rng.uniform(-45, 45, 3)
    field = base + rng.normal(0, 22, (4, 4, 3))
    small = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
    bg = small.resize((size, size), Image.BICUBIC)
    if rng.random() < 0.35:
        arr = np.asarray(bg).astype(np.float32)
        period = rng.uniform(0.08, 0.25) * size
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
        arr *= (1 + 0.08 * stripes)[..., None]
        bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return bg


# --------------------------------------------------------------------------------------------
# AU intensities

def _au_vector(aus: Mapping[int, float] | Sequence[float] | np.ndarray | None) -> dict[int, float]:
    if aus is None:
        return {a: 0.0 for a in AU_IDS}
    if isinstance(aus, Mapping):
        out = {a: 0.0 for a in AU_IDS}
        for k, v in aus.items():
            key = int(str(k).upper().removeprefix("AU"))
            if key not in out:
                raise ClefError(f"AU{key} is not drawn by the synthetic generator "
                                f"(drawn: {', '.join(f'AU{a}' for a in AU_IDS)})")
            out[key] = float(np.clip(v, 0.0, 1.0))
        return out
    arr = np.asarray(aus, dtype=float)
    if arr.shape != (len(AU_IDS),):
        raise ClefError(f"AU intensity vector must have {len(AU_IDS)} values in AU_IDS order, "
                        f"got shape {arr.shape}")
    return {a: float(np.clip(v, 0.0, 1.0)) for a, v in zip(AU_IDS, arr)}


def _intensity_from_margin(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Margin above the activation threshold -> intensity: active 0.6-1.0, inactive 0-0.2."""
    active = 0.6 + 0.4 * (1 - np.exp(-np.maximum(m, 0) / 0.5))
    inactive = 0.2 * np.exp(np.minimum(m, 0) / 0.35) * rng.uniform(0.3, 1.0)
    return np.where(m > 0, active, inactive)


def au_sequence(task: str, n_frames: int, rng: np.random.Generator,
                propensity: float = 1.0, sigma: float = 2.5) -> np.ndarray:
    """Smooth AU intensity trajectories (n_frames, len(AU_IDS)) for one recording task.

    Each AU follows smoothed noise; the fraction of frames where it is active equals the task's
    probability (TASK_PROFILES, else BASE_RATE) times the subject's propensity. AU26 brings AU25
    along in most sequences; EXCLUSIVE pairs are never active together.
    """
    if task not in TASK_PROFILES:
        raise ClefError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    profile = TASK_PROFILES[task]
    margins = np.empty((n_frames, len(AU_IDS)))
    for j, a in enumerate(AU_IDS):
        p = float(np.clip(profile.get(a, BASE_RATE) * propensity, 0.02, 0.95))
        theta = NormalDist().inv_cdf(1 - p)
        margins[:, j] = _smooth_noise(rng, n_frames, sigma) - theta
    idx = {a: j for j, a in enumerate(AU_IDS)}
    if rng.random() < 0.85:  # jaw drop usually parts the lips
        j25, j26 = idx[25], idx[26]
        margins[:, j25] = np.where(margins[:, j26] > 0,
                                   np.maximum(margins[:, j25], margins[:, j26] + 0.2),
                                   margins[:, j25])
    for a, b in EXCLUSIVE:
        ja, jb = idx[a], idx[b]
        both = (margins[:, ja] > 0) & (margins[:, jb] > 0)
        lose_a = both & (margins[:, ja] < margins[:, jb])
        lose_b = both & ~lose_a
        margins[lose_a, ja] = -0.3
        margins[lose_b, jb] = -0.3
    return _intensity_from_margin(margins, rng)


def expression_aus(expression: str, rng: np.random.Generator) -> np.ndarray:
    """AU intensities (len(AU_IDS),) for one image of an expression: prototype plus jitter."""
    if expression not in EXPRESSION_PROTOTYPES:
        raise ClefError(f"unknown expression {expression!r}: use one of {', '.join(EXPRESSIONS)}")
    core, optional = EXPRESSION_PROTOTYPES[expression]
    out = {a: float(0.15 * rng.beta(1.0, 4.0)) for a in AU_IDS}
    keep = [a for a in core if rng.random() < 0.9]
    if len(keep) < math.ceil(0.6 * len(core)):
        keep = list(core)
    for a in keep:
        out[a] = float(rng.uniform(0.6, 1.0))
    for a in optional:
        if rng.random() < 0.5:
            out[a] = float(rng.uniform(0.6, 0.95))
    if rng.random() < 0.3:  # a faint extra AU that does not clash with the active ones
        active = {a for a, v in out.items() if v >= OCCURRENCE_THRESHOLD}
        clash = {b for a in active for p in EXCLUSIVE for b in p if a in p}
        pool = [a for a in AU_IDS if a not in active and a not in clash]
        if pool:
            out[int(rng.choice(pool))] = float(rng.uniform(0.2, 0.4))
    return np.array([out[a] for a in AU_IDS])


# --------------------------------------------------------------------------------------------
# drawing

class _Canvas:
    """Face-unit drawing on a supersampled canvas through a similarity transform."""

    def __init__(self, img: Image.Image, pose: Pose, zoom: float, anchor: tuple[float, float]):
        self.img = img
        self.draw = ImageDraw.Draw(img, "RGBA")
        S = img.size[0]
        self.S = S
        self.unit = S * 0.27 * zoom * pose.scale
        a = math.radians(pose.angle)
        self.R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.c = np.array([S / 2 + pose.dx * S, S / 2 + pose.dy * S])
        self.anchor = np.array(anchor)

    def px(self, uv) -> np.ndarray:
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        return (uv - self.anchor) @ self.R.T * self.unit + self.c

    def poly(self, uv, fill) -> None:
        self.draw.polygon(self.px(uv).ravel().tolist(), fill=fill)

    def line(self, uv, fill, width: float) -> None:
        w = max(1, int(round(width * self.unit)))
        self.draw.line(self.px(uv).ravel().tolist(), fill=fill, width=w, joint="curve")

    def dot(self, u, v, r, fill) -> None:
        x, y = self.px([u, v])[0]
        rr = max(0.5, r * self.unit)
        self.draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fill)


def _ellipse(cx, cy, rx, ry, n=36, a0=0.0, a1=2 * np.pi) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _side_arc(cx, cy, rx, ry, s, a0=-0.5 * np.pi, a1=0.5 * np.pi, n=12) -> np.ndarray:
    """Half-ellipse arc bulging outwards on side ``s`` (-1 image left, +1 image right)."""
    t = np.linspace(a0, a1, n)
    return np.stack([cx + s * rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _rgba(rgb, alpha: float) -> tuple[int, int, int, int]:
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]), int(min(1.0, max(0.0, float(alpha))) * 255))


def _shade(rgb, k: float, add: float = 0.0) -> tuple[int, int, int]:
    return _rgb(np.asarray(rgb, dtype=float) * k + add)


def _box(points: np.ndarray, margin: float) -> np.ndarray:
    lo, hi = points.min(0) - margin, points.max(0) + margin
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])


def _visibility(intensity: float) -> float:
    """How strongly an AU intensity is drawn: 0.2 (the most an inactive AU gets) -> 0.2,
    0.6 (the least an active AU gets) -> 0.73, 1 -> 1; widens the gap between the two."""
    return min(1.0, max(0.0, (intensity - 0.05) / 0.75))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def render_face(identity: Identity, aus=None, pose: Pose | None = None, size: int = 128,
                seed: int = 0, background: Image.Image | None = None, zoom: float = 1.2,
                anchor: tuple[float, float] = (0.0, 0.25),
                supersample: int = SUPERSAMPLE) -> tuple[Image.Image, dict[str, list[list[float]]]]:
    """Draw one face; return the RGB image (``size`` square) and the part boxes in its pixels.

    ``aus``: mapping AU number (or ``"AU12"``) -> intensity, or a vector in AU_IDS order.
    ``seed`` drives the pixel noise (and the background when none is given). ``zoom`` and
    ``anchor`` (the face point put at the image centre) frame the face: AU_FRAMING (default) or
    FER_FRAMING. Intensities are drawn through a visibility curve (see ``_visibility``).
    """
    a = {k: _visibility(v) for k, v in _au_vector(aus).items()}
    pose = pose or Pose()
    S = size * supersample
    if background is None:
        background = _background(np.random.default_rng(seed), S)
    if background.size != (S, S):
        img = background.resize((S, S), Image.BICUBIC)
    else:
        img = background.copy()
    cv = _Canvas(img, pose, zoom, anchor)
    idn = identity
    skin = np.array(idn.skin, dtype=float)
    dark = _shade(skin, 0.4)
    regions: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    W = idn.face_w
    cy = 0.05  # centre line between the skull (top) ellipse and the jaw (bottom)
    chin0 = cy + idn.face_bottom
    jaw_drop = 0.3 * a[26]

    def jaw_shift(v):
        return jaw_drop * _smoothstep((np.asarray(v) - idn.mouth_y) / (chin0 - idn.mouth_y))

    # ---- body, hair behind, ears, face
    cv.poly(_ellipse(0, 2.75, 2.3, 1.1), _rgba(idn.clothes, 1))
    if idn.hair_style == "long":
        top = _ellipse(0, cy, W * 1.14, idn.face_top * 1.12, 40, np.pi, 2 * np.pi)
        back = np.concatenate([[[-W * 1.3, 1.75]], top, [[W * 1.3, 1.75]]])
        cv.poly(back, _rgba(_shade(idn.hair_colour, 0.85), 1))
    cv.poly([[-0.42 * W, 0.8], [0.42 * W, 0.8], [0.5 * W, 2.2], [-0.5 * W, 2.2]],
            _rgba(_shade(skin, 0.82), 1))
    neck_top = cy + idn.face_bottom + jaw_drop - 0.15
    for s in (-1, 1):  # platysma cords (AU20)
        for x0, x1 in ((0.12, 0.3), (0.3, 0.48)):
            cv.line([[s * x0 * W, neck_top], [s * x1 * W, neck_top + 0.9]],
                    _rgba(_shade(skin, 0.5), 0.9 * a[20]), 0.035)
    regions["neck"].append(np.array([[-0.5 * W, neck_top + 0.1], [0.5 * W, neck_top + 0.9]]))
    for s in (-1, 1):
        ear = _ellipse(s * (W + 0.03), 0.12, 0.13, 0.24)
        cv.poly(ear, _rgba(_shade(skin, 0.93), 1))
        cv.line(_side_arc(s * (W + 0.04), 0.12, 0.05, 0.14, s), _rgba(dark, 0.35), 0.02)
    upper = _ellipse(0, cy, W, idn.face_top, 40, np.pi, 2 * np.pi)
    t = np.linspace(0, np.pi, 41)
    c, sn = np.cos(t), np.sin(t)
    n = idn.jaw
    lx = W * np.sign(c) * np.abs(c) ** (2 / n)
    ly = cy + idn.face_bottom * np.abs(sn) ** (2 / n)
    lower = np.stack([lx, ly + jaw_shift(ly)], 1)
    outline = np.concatenate([upper, lower])
    cv.poly(outline, _rgba(skin, 1))
    chin_v = float(cy + idn.face_bottom + jaw_drop)
    regions["jaw"].append(lower[(lower[:, 1] > idn.mouth_y)])

    # ---- eyes (geometry)
    eu = idn.eye_up * (1 + 0.8 * a[5] - 0.45 * a[7] - 0.15 * a[6])
    el = idn.eye_lo * (1 - 0.7 * a[7] - 0.55 * a[6]) + 0.004
    ew = idn.eye_w
    tt = np.linspace(-1, 1, 25)
    eyes = {}
    for s in (-1, 1):
        ex = s * idn.eye_sep
        xs = ex + ew * tt
        tilt = -0.015 * (tt * s)  # outer corner slightly up
        up = -eu * (1 - tt ** 2) ** 0.7 + tilt
        lo = el * (1 - tt ** 2) ** 0.9 + tilt
        eyes[s] = (ex, xs, up, lo, tilt)

    # ---- cheeks (AU6 raises them), nasolabial folds (AU10, AU12), dimples (AU14)
    for s in (-1, 1):
        ex = s * idn.eye_sep
        ch = _ellipse(s * 0.55, 0.47 - 0.15 * a[6], 0.22, 0.15 - 0.02 * a[6])
        cv.poly(ch, _rgba(_shade(skin, 1.0, 22), 0.2 + 0.6 * a[6]))
        cv.line(_ellipse(s * 0.55, 0.47 - 0.15 * a[6], 0.24, 0.17, 14, 0.1 * np.pi, 0.9 * np.pi),
                _rgba(dark, 0.6 * a[6]), 0.025)
        regions["cheeks"].append(ch)
        arc = _ellipse(ex, el + 0.05, ew * 1.05, 0.05 + 0.02 * a[6], 15, 0.15 * np.pi, 0.85 * np.pi)
        cv.line(arc, _rgba(dark, 0.9 * a[6]), 0.03)
        ox = ex + s * (ew + 0.02)
        for ang in (-0.45, 0.0, 0.45):
            d = np.array([s * math.cos(ang), math.sin(ang)])
            cv.line([[ox, 0.0] + d * 0.03, [ox, 0.0] + d * 0.19], _rgba(dark, 0.95 * a[6]), 0.028)

    # ---- mouth geometry
    mw = idn.mouth_w * (1 + 0.28 * a[12] + 0.4 * a[20] - 0.2 * a[14] - 0.3 * a[23]
                        - 0.05 * a[15])
    my = idn.mouth_y + 0.02 * a[26] * (1 - a[25])
    corner_dy = -0.14 * a[12] + 0.13 * a[15] - 0.03 * a[14] + 0.02 * a[20]
    center_dy = -0.05 * a[17] - 0.02 * a[10]
    gap = 0.07 * a[25] + 0.22 * a[26] * min(1.0, a[25] / 0.5)
    thin = float(np.clip(1 - 0.5 * a[23] - 0.75 * a[24] - 0.35 * a[20], 0.12, 1))
    ut = idn.lip_up * thin
    lt = idn.lip_lo * float(np.clip(thin + 0.2 * a[17], 0.15, 1.2))
    mt = np.linspace(-1, 1, 31)
    mx = mw * mt
    contact = my + corner_dy * mt ** 2 + center_dy * (1 - mt ** 2)
    op = gap * (1 - mt ** 2) ** 0.7
    up_in = contact - 0.3 * op - 0.02 * a[10] * (1 - mt ** 2) * (gap > 0.01)
    lo_in = contact + 0.7 * op
    bow = (1 - mt ** 2) ** 0.5 * (1 - 0.25 * np.exp(-(mt / 0.18) ** 2))
    up_out = up_in - ut * bow - 0.1 * a[10] * (1 - mt ** 4)
    lo_out = lo_in + lt * (1 - mt ** 2) ** 0.5
    corners = {-1: np.array([mx[0], contact[0]]), 1: np.array([mx[-1], contact[-1]])}

    for s in (-1, 1):
        top = np.array([s * 0.2 * idn.nose_size, idn.nose_y - 0.03 - 0.04 * a[9]])
        cx_, cy_ = corners[s]
        end = np.array([cx_ + s * 0.1, cy_ + 0.1 - 0.05 * a[12]])
        mid = np.array([s * (0.3 + 0.3 * mw + 0.06 * a[12]), (top[1] + end[1]) / 2 + 0.02])
        tq = np.linspace(0, 1, 14)[:, None]
        fold = (1 - tq) ** 2 * top + 2 * (1 - tq) * tq * mid + tq ** 2 * end
        cv.line(fold, _rgba(dark, idn.fold + 0.55 * a[12] + 0.2 * a[9] + 0.15 * a[6]), 0.024)
        cv.line(fold[:8], _rgba(dark, 0.85 * a[10]), 0.036)
        regions["nasolabial"].append(fold)
        dc = corners[s] + np.array([s * 0.07, 0.0])
        cv.line(_side_arc(dc[0], dc[1], 0.05, 0.11, s), _rgba(dark, a[14]), 0.04)
        cv.dot(dc[0] + s * 0.02, dc[1] + 0.01, 0.04, _rgba(dark, 0.9 * a[14]))
        c0 = corners[s]
        for dy in (-0.03, 0.04):  # AU20: skin stretched sideways from the corners
            cv.line([c0 + [s * 0.04, dy / 2], c0 + [s * 0.15, dy], c0 + [s * 0.26, 1.6 * dy]],
                    _rgba(dark, 0.95 * a[20]), 0.032)
        # AU15: depressor furrows running down from the corners
        cv.line([c0 + [s * 0.02, 0.04], c0 + [s * 0.05, 0.13], c0 + [s * 0.06, 0.22]],
                _rgba(dark, 0.95 * a[15]), 0.034)
        regions["mouth_corners"].append(_box(corners[s][None], 0.12))

    # ---- chin (AU17 wrinkles, mentolabial furrow), AU24 bulges
    lip_bottom = float(lo_out.max())
    ment_v = lip_bottom + 0.09 - 0.03 * a[17]
    ment = np.stack([np.linspace(-0.18, 0.18, 9), ment_v + 0.025 * np.linspace(-1, 1, 9) ** 2], 1)
    cv.line(ment, _rgba(dark, 0.15 + 0.8 * a[17]), 0.032)
    boss_c = np.array([0.0, (ment_v + chin_v) / 2 + 0.02])
    prng = np.random.default_rng(7)
    for _ in range(12):
        off = prng.uniform(-1, 1, 2) * np.array([0.17, 0.075])
        cv.dot(*(boss_c + off), 0.024, _rgba(dark, 0.9 * a[17]))
    cv.line(_ellipse(0, chin_v - 0.12, 0.2, 0.06, 12, 0.15 * np.pi, 0.85 * np.pi),
            _rgba(dark, 0.12 + 0.3 * a[17]), 0.02)
    regions["chin"].append(np.array([[-0.3, lip_bottom + 0.03], [0.3, chin_v]]))
    for k, yy in ((-1, up_out), (1, lo_out)):  # AU24: skin bulges above and below the lips
        sel = np.abs(mt) < 0.8
        cv.line(np.stack([mx[sel], yy[sel] + k * 0.045], 1),
                _rgba(_shade(skin, 1.0, 45), 0.95 * a[24]), 0.045)
        cv.line(np.stack([mx[sel], yy[sel] + k * 0.085], 1), _rgba(dark, 0.8 * a[24]), 0.025)

    # ---- forehead wrinkles (AU1 centre, AU2 sides), glabella (AU4), nose (AU9)
    bi_y = idn.brow_y + 0.02 - 0.17 * a[1] + 0.14 * a[4] + 0.03 * a[9]
    bm_y = idn.brow_y - idn.brow_arch - 0.06 * a[1] - 0.11 * a[2] + 0.09 * a[4]
    bo_y = idn.brow_y + 0.02 - 0.17 * a[2] + 0.06 * a[4] + 0.02 * a[1]
    bi_x = 0.16 - 0.07 * a[4]
    top_limit = (-0.80 if idn.fringe else idn.hairline + 0.06)
    for k in range(3):
        v = min(bi_y, bm_y) - 0.1 - 0.085 * k
        if v - 0.03 > top_limit:
            cv.line(np.stack([np.linspace(-0.3, 0.3, 9), v + 0.03 * np.linspace(-1, 1, 9) ** 2], 1),
                    _rgba(dark, 0.9 * a[1]), 0.03)
        v2 = min(bm_y, bo_y) - 0.1 - 0.085 * k
        if v2 - 0.03 > top_limit:
            for s in (-1, 1):
                xs = s * np.linspace(0.32, 0.72, 8)
                cv.line(np.stack([xs, v2 - 0.02 * np.sin(np.linspace(0, np.pi, 8))], 1),
                        _rgba(dark, 0.9 * a[2]), 0.03)
    regions["forehead"].append(np.array([[-0.7, top_limit], [0.7, min(bi_y, bm_y, bo_y) - 0.05]]))
    for s in (-1, 1):
        cv.line([[s * 0.05, bi_y - 0.1], [s * 0.035, bi_y + 0.13]], _rgba(dark, a[4]), 0.036)
    regions["glabella"].append(np.array([[-0.16, bi_y - 0.12], [0.16, 0.0]]))
    ns = idn.nose_size
    for k, v in enumerate((0.0, 0.08, 0.16)):
        w = 0.1 + 0.02 * k
        cv.line(np.stack([np.linspace(-w, w, 7), v - 0.02 * np.sin(np.linspace(0, np.pi, 7))], 1),
                _rgba(dark, 0.95 * a[9]), 0.03)
    nose_y = idn.nose_y - 0.07 * a[9] - 0.02 * a[10]
    flare = 1 + 0.4 * a[9]
    for s in (-1, 1):
        cv.line([[s * 0.08, -0.02], [s * 0.11 * ns, nose_y - 0.12]], _rgba(dark, 0.18), 0.02)
        wing = _side_arc(s * 0.09 * ns * flare, nose_y - 0.01, 0.065 * ns * flare, 0.065, s,
                         -0.5 * np.pi, 0.6 * np.pi)
        cv.line(wing, _rgba(dark, 0.45 + 0.5 * a[9]), 0.02 + 0.012 * a[9])
        cv.poly(_ellipse(s * 0.075 * ns * flare, nose_y + 0.025, 0.045 * ns * flare, 0.022, 16),
                _rgba(_shade(skin, 0.3), 0.9))
    cv.line(_ellipse(0, nose_y, 0.07 * ns, 0.04, 10, 0.1 * np.pi, 0.9 * np.pi), _rgba(dark, 0.3),
            0.018)
    nw = 0.2 * ns * flare
    regions["nose"].append(np.array([[-nw, -0.05], [nw, nose_y + 0.07]]))

    # ---- eyes (drawing)
    white = (238, 236, 230)
    for s in (-1, 1):
        ex, xs, up, lo, tilt = eyes[s]
        cv.poly(np.concatenate([np.stack([xs, up], 1), np.stack([xs, lo], 1)[::-1]]),
                _rgba(white, 1))
        ic = np.array([ex + pose.gaze, 0.004])
        for r, col in ((0.095, idn.iris), (0.04, (12, 10, 10))):
            xi = np.linspace(max(ic[0] - r, xs[0]), min(ic[0] + r, xs[-1]), 17)
            h = np.sqrt(np.maximum(r ** 2 - (xi - ic[0]) ** 2, 0))
            top = np.maximum(ic[1] - h, np.interp(xi, xs, up))
            bot = np.minimum(ic[1] + h, np.interp(xi, xs, lo))
            ok = bot > top
            if ok.sum() >= 2:
                cv.poly(np.concatenate([np.stack([xi[ok], top[ok]], 1),
                                        np.stack([xi[ok], bot[ok]], 1)[::-1]]), _rgba(col, 1))
        cv.line(np.stack([xs, up], 1), _rgba((25, 18, 15), 1), 0.03)
        cv.line(np.stack([xs, lo], 1), _rgba(dark, 0.55 + 0.45 * a[7]), 0.014 + 0.02 * a[7])
        cv.line(np.stack([xs, lo + 0.04], 1)[4:-4], _rgba(dark, 0.9 * a[7]), 0.02)
        crease = -idn.eye_up * (1 - tt ** 2) ** 0.7 - 0.065 + tilt
        cv.line(np.stack([xs, crease], 1)[3:-3], _rgba(dark, 0.35), 0.016)
        regions["eyes"].append(np.concatenate([np.stack([xs, up], 1), np.stack([xs, lo], 1)]))

    # ---- brows
    for s in (-1, 1):
        tq = np.linspace(0, 1, 16)[:, None]
        p0 = np.array([s * bi_x, bi_y])
        p1 = np.array([s * 0.44, bm_y - 0.02])
        p2 = np.array([s * 0.72, bo_y])
        centre = (1 - tq) ** 2 * p0 + 2 * (1 - tq) * tq * p1 + tq ** 2 * p2
        th = idn.brow_thick * (1.15 - 0.55 * tq[:, 0]) * (1 + 0.25 * a[4])
        brow = np.concatenate([centre - np.stack([0 * th, th / 2], 1),
                               (centre + np.stack([0 * th, th / 2], 1))[::-1]])
        cv.poly(brow, _rgba(idn.brow_colour, 1))
        regions["brows"].append(brow)
        regions["inner_brows"].append(centre[:6])
        regions["outer_brows"].append(centre[-6:])

    # ---- mouth
    sel = slice(1, -1)
    if gap > 0.008:
        cv.poly(np.concatenate([np.stack([mx, up_in], 1), np.stack([mx, lo_in], 1)[::-1]]),
                _rgba((60, 18, 22), 1))
        th_up = np.minimum(0.06, 0.55 * op)
        cv.poly(np.concatenate([np.stack([mx[sel], up_in[sel]], 1),
                                np.stack([mx[sel], (up_in + th_up)[sel]], 1)[::-1]]),
                _rgba((240, 238, 228), 1))
        if gap > 0.1:
            th_lo = np.minimum(0.035, 0.2 * op)
            cv.poly(np.concatenate([np.stack([mx[sel], (lo_in - th_lo)[sel]], 1),
                                    np.stack([mx[sel], lo_in[sel]], 1)[::-1]]),
                    _rgba((225, 222, 212), 1))
    lipc = np.array(idn.lip_colour, dtype=float) * (1 - 0.15 * a[23])
    cv.poly(np.concatenate([np.stack([mx, up_out], 1), np.stack([mx, up_in], 1)[::-1]]),
            _rgba(_shade(lipc, 0.92), 1))
    cv.poly(np.concatenate([np.stack([mx, lo_in], 1), np.stack([mx, lo_out], 1)[::-1]]),
            _rgba(lipc, 1))
    if gap <= 0.008:  # closed lips: the line between them (thicker when pressed, AU24)
        cv.line(np.stack([mx, contact], 1), _rgba(_shade(lipc, 0.45), 0.9), 0.016 + 0.02 * a[24])
    for x in (-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6):
        i = int(np.argmin(np.abs(mt - x)))
        cv.line([[mx[i], up_out[i] + 0.01], [mx[i], lo_out[i] - 0.01]],
                _rgba(_shade(lipc, 0.45), a[23]), 0.022)
        if abs(x) < 0.5:  # pursing lines above the upper lip
            cv.line([[mx[i] * 1.1, up_out[i] - 0.02], [mx[i] * 1.25, up_out[i] - 0.1]],
                    _rgba(dark, 0.9 * a[23]), 0.026)
    mouth_pts = np.concatenate([np.stack([mx, up_out - 0.1], 1), np.stack([mx, lo_out + 0.07], 1)])
    regions["mouth"].append(mouth_pts)

    # ---- hair in front
    if idn.hair_style != "bald":
        outer = _ellipse(0, cy, W * 1.08, idn.face_top * 1.1, 40, np.pi, 2 * np.pi)
        side_v = 0.35 if idn.hair_style == "long" else 0.02
        hl = -0.8 if idn.fringe else idn.hairline

        def face_x(v):  # half-width of the face outline at height v
            v = np.asarray(v, dtype=float)
            top = W * np.sqrt(np.clip(1 - ((v - cy) / idn.face_top) ** 2, 0, 1))
            bot = W * np.clip(1 - np.clip((v - cy) / idn.face_bottom, 0, 1) ** n, 0, 1) ** (1 / n)
            return np.where(v <= cy, top, bot)

        vs = np.linspace(side_v, hl + 0.05, 8)
        right = np.stack([0.96 * face_x(vs), vs], 1)
        xs = np.linspace(1, -1, 17) * right[-1, 0]
        if idn.fringe:
            fy = hl + 0.03 * np.cos(np.linspace(0, 8 * np.pi, 17))
        else:
            fy = hl - 0.06 * (xs / W) ** 2
        xs = np.sign(xs) * np.minimum(np.abs(xs), 0.96 * face_x(fy))
        inner = np.concatenate([right, np.stack([xs, fy], 1), (right * [-1, 1])[::-1]])
        cap = np.concatenate([[[-W * 1.08, side_v]], outer, [[W * 1.08, side_v]], inner])
        cv.poly(cap, _rgba(idn.hair_colour, 1))
        for k in range(5):
            x0 = -0.6 + 0.3 * k
            cv.line([[x0 * W, -1.1], [x0 * W * 1.1, -0.95]],
                    _rgba(_shade(idn.hair_colour, 0.7), 0.6), 0.02)

    # ---- glasses
    if idn.glasses:
        gc = idn.glasses_colour
        for s in (-1, 1):
            ex = s * idn.eye_sep
            rim = _ellipse(ex, 0.0, ew + 0.07, 0.13, 28)
            cv.poly(rim, _rgba((200, 220, 235), 0.12))
            cv.line(np.concatenate([rim, rim[:1]]), _rgba(gc, 1), 0.022)
            cv.line([[s * (idn.eye_sep + ew + 0.07), -0.02], [s * (W + 0.02), 0.0]], _rgba(gc, 1),
                    0.022)
        cv.line([[-(idn.eye_sep - ew - 0.07), -0.03], [idn.eye_sep - ew - 0.07, -0.03]],
                _rgba(gc, 1), 0.022)

    # ---- downsample, lighting, noise
    out = img.reduce(supersample)  # box filter over each supersample x supersample block
    arr = np.asarray(out).astype(np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    grad = 1 + pose.light_amp * (xx * math.cos(pose.light_angle) + yy * math.sin(pose.light_angle))
    arr = ((arr - 0.5) * pose.contrast + 0.5) * pose.brightness * grad[..., None]
    nrng = np.random.default_rng(seed)
    arr = arr * 255 + nrng.normal(0, pose.noise, arr.shape)
    image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")

    boxes: dict[str, list[list[float]]] = {}
    for part, pts_list in regions.items():
        bl = []
        for pts in pts_list:
            p = cv.px(_box(np.asarray(pts, dtype=float).reshape(-1, 2), 0.03)) / supersample
            lo, hi = np.clip(p.min(0), 0, size), np.clip(p.max(0), 0, size)
            bl.append([round(float(lo[0]), 1), round(float(lo[1]), 1),
                       round(float(hi[0]), 1), round(float(hi[1]), 1)])
        boxes[part] = bl
    return image, boxes


# --------------------------------------------------------------------------------------------
# writers

AU_FRAMING = {"zoom": 1.2, "anchor": (0.0, 0.25)}   # BP4D-like face-centred frames
FER_FRAMING = {"zoom": 1.3, "anchor": (0.0, 0.3)}  # RAF-DB-like tight aligned crops


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def subject_names(n: int) -> list[str]:
    """BP4D-style names, half female then half male: F001.. then M001.."""
    nf = (n + 1) // 2
    return [f"F{i:03d}" for i in range(1, nf + 1)] + [f"M{i:03d}" for i in range(1, n - nf + 1)]


def _identities(n: int, seed: int, salt: int) -> dict[str, Identity]:
    return {name: make_identity(name, _rng(seed, salt, i))
            for i, name in enumerate(subject_names(n))}


def _au_dict(vec) -> dict[str, float]:
    return {f"AU{a}": round(float(v), 3) for a, v in zip(AU_IDS, vec)}


def _pose_dict(p: Pose) -> dict[str, float]:
    return {"angle": round(p.angle, 2), "scale": round(p.scale, 3),
            "dx": round(p.dx, 4), "dy": round(p.dy, 4)}


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def _au_job(args) -> tuple[str, str, np.ndarray, list[dict]]:
    """Render one subject's task: write its frames, return CSV rows and sidecar entries."""
    root, identity, si, ti, n_frames, size, seed = args
    task = TASKS[ti]
    rng = _rng(seed, _SALT_SEQUENCE, si, ti)
    propensity = float(_rng(seed, _SALT_SEQUENCE, si, 99).uniform(0.75, 1.25))
    intens = au_sequence(task, n_frames, rng, propensity)
    poses = _pose_sequence(rng, n_frames, 4.0)
    bg = _background(rng, size * SUPERSAMPLE)
    entries = []
    for k in range(n_frames):
        frame = FIRST_FRAME + k
        rel = f"{identity.name}/{task}/{frame:04d}.jpg"
        img, boxes = render_face(identity, intens[k], poses[k], size,
                                 seed=int(rng.integers(2 ** 31)), background=bg, **AU_FRAMING)
        _save_jpeg(img, Path(root) / rel)
        entries.append({"path": rel, "subject": identity.name, "identity": identity.name,
                        "task": task, "frame": frame, "au_intensity": _au_dict(intens[k]),
                        "pose": _pose_dict(poses[k]), "regions": boxes})
    return task, identity.name, intens, entries


def _fer_job(args) -> list[dict]:
    root, identities, items, size, seed = args
    entries = []
    for split, idx, name, cls, ident in items:
        rng = _rng(seed, _SALT_FER, 0 if split == "train" else 1, idx)
        aus = expression_aus(EXPRESSIONS[cls], rng)
        pose = _random_pose(rng)
        bg = _background(rng, size * SUPERSAMPLE)
        img, boxes = render_face(identities[ident], aus, pose, size,
                                 seed=int(rng.integers(2 ** 31)), background=bg, **FER_FRAMING)
        stem = name.rsplit(".", 1)[0]
        rel = f"Image/aligned/{stem}_aligned.jpg"
        _save_jpeg(img, Path(root) / rel)
        entries.append({"path": rel, "name": name, "split": split, "label": cls + 1,
                        "expression": EXPRESSIONS[cls], "identity": ident,
                        "au_intensity": _au_dict(aus), "pose": _pose_dict(pose),
                        "regions": boxes})
    return entries


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _auto_workers(total: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    if total < 300:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _run_jobs(fn, jobs: list, sizes: list[int], workers: int | None, progress: bool | None,
              label: str) -> list:
    """Run ``fn`` over ``jobs`` in order, in worker processes when there is enough work.

    Results do not depend on the number of workers (every job seeds its own generator).
    """
    import multiprocessing
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    total = int(sum(sizes))
    n_workers = min(_auto_workers(total, workers), max(1, len(jobs)))
    console = _console()
    show = console.is_terminal if progress is None else bool(progress)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True) if show else None
    results = []
    with (bar or nullcontext()):
        tid = bar.add_task(label, total=total) if bar else None
        if n_workers == 1:
            it = map(fn, jobs)
            pool = None
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = ctx.Pool(n_workers)
            it = pool.imap(fn, jobs)
        try:
            for res, k in zip(it, sizes):
                results.append(res)
                if bar:
                    bar.advance(tid, k)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return results


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_text(path: Path, text: str) -> None:
    """Atomic write, then the usual permissions (atomic temp files start as 0600)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    os.chmod(path, 0o666 & ~_umask())


def _write_sidecar(root: Path, meta: dict, images: list[dict]) -> None:
    """``synthetic.json``: metadata indented, then one compact JSON object per image line."""
    head = json.dumps({**meta, "images": []}, indent=1)
    assert head.endswith('"images": []\n}')
    body = ",\n".join(json.dumps(e, separators=(",", ":")) for e in images)
    text = head[: -len("[]\n}")] + "[\n" + body + "\n]\n}\n"
    _write_text(root / SIDECAR, text)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ClefError(f"{name} must be an integer, got {value!r}") from None
    exact = isinstance(value, str) or v == value
    if not exact or v < lo or (hi is not None and v > hi):
        rng_txt = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ClefError(f"{name} must be an integer {rng_txt}, got {value!r}")
    return v


def au_params(subjects=12, tasks=8, frames_per_task=24, size=128, seed=0) -> dict[str, Any]:
    """Validated, normalised parameters of a synthetic-au set (as stored in the sidecar)."""
    return {"subjects": _check_int("subjects", subjects, 2, 999),
            "tasks": _check_int("tasks", tasks, 1, len(TASKS)),
            "frames_per_task": _check_int("frames_per_task", frames_per_task, 1, 9000),
            "size": _check_int("size", size, 32, 1024),
            "seed": _check_int("seed", seed, 0)}


def fer_params(subjects=40, images_per_class=200, size=100, seed=0,
               test_fraction=0.2) -> dict[str, Any]:
    """Validated, normalised parameters of a synthetic-fer set (as stored in the sidecar)."""
    out = {"subjects": _check_int("subjects", subjects, 1, 999),
           "images_per_class": _check_int("images_per_class", images_per_class, 1, 99999),
           "size": _check_int("size", size, 32, 1024),
           "seed": _check_int("seed", seed, 0)}
    try:
        tf = float(test_fraction)
    except (TypeError, ValueError):
        raise ClefError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}") \
            from None
    if not 0.0 <= tf < 1.0:
        raise ClefError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if tf > 0 and out["subjects"] < 2:
        raise ClefError("synthetic-fer needs at least 2 subjects for a subject-disjoint test split "
                        "(raise subjects or set test_fraction=0)")
    out["test_fraction"] = tf
    return out


def _meta(kind: str, layout: str, params: dict, identities: dict[str, Identity]) -> dict:
    return {
        "generator": "clefctl.data.synthetic", "version": GENERATOR_VERSION, "kind": kind,
        "layout": layout, "params": params,
        "aus": [f"AU{a}" for a in AU_IDS],
        "au_names": {f"AU{a}": AU_NAMES[a] for a in AU_IDS},
        "occurrence_threshold": OCCURRENCE_THRESHOLD,
        "parts": list(PARTS), "au_regions": au_regions(),
        "region_format": "[x0, y0, x1, y1] pixels of the written image, one box per side",
        "identities": {k: asdict(v) for k, v in identities.items()},
    }


def write_au(root: str | os.PathLike, subjects: int = 12, tasks: int = 8,
             frames_per_task: int = 24, size: int = 128, seed: int = 0, *,
             workers: int | None = None, progress: bool | None = None) -> Path:
    """Write a synthetic AU data set in the BP4D layout under ``root``; return ``root``.

    ``AUCoding/AU_OCC/{subject}_{task}.csv`` (columns ``0`` = frame, then AU_IDS, 0/1) and
    ``{subject}/{task}/{frame:04d}.jpg`` with frames FIRST_FRAME.. in each task, tasks T1..T{tasks},
    subjects F001.., M001.. (half each); ``synthetic.json`` last.
    """
    params = au_params(subjects, tasks, frames_per_task, size, seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    identities = _identities(params["subjects"], params["seed"], _SALT_AU_IDENTITY)
    jobs = [(str(root), ident, si, ti, params["frames_per_task"], params["size"], params["seed"])
            for si, ident in enumerate(identities.values()) for ti in range(params["tasks"])]
    results = _run_jobs(_au_job, jobs, [params["frames_per_task"]] * len(jobs), workers,
                        progress, "synthetic-au")
    occ_dir = root / "AUCoding" / "AU_OCC"
    occ_dir.mkdir(parents=True, exist_ok=True)
    images = []
    header = ",".join(["0"] + [str(a) for a in AU_IDS])
    for task, name, intens, entries in results:
        rows = [header]
        for e, vec in zip(entries, intens):
            occ = (vec >= OCCURRENCE_THRESHOLD).astype(int)
            rows.append(",".join([str(e["frame"])] + [str(int(v)) for v in occ]))
        _write_text(occ_dir / f"{name}_{task}.csv", "\n".join(rows) + "\n")
        images.extend(entries)
    meta = _meta("synthetic-au", "bp4d", params, identities)
    meta.update({"first_frame": FIRST_FRAME, "tasks": {t: TASK_EMOTIONS[t]
                                                       for t in TASKS[: params["tasks"]]},
                 "task_profiles": {t: {f"AU{a}": p for a, p in TASK_PROFILES[t].items()}
                                   for t in TASKS[: params["tasks"]]},
                 "base_rate": BASE_RATE})
    _write_sidecar(root, meta, images)
    return root


def _fer_plan(params: dict) -> tuple[dict[str, Identity], list[tuple]]:
    """Assign (split, index, file name, class, identity) to every image, subject-disjoint."""
    identities = _identities(params["subjects"], params["seed"], _SALT_FER_IDENTITY)
    names = list(identities)
    rng = _rng(params["seed"], _SALT_FER, 7)
    tf = params["test_fraction"]
    n_test_ids = 0 if tf == 0 else min(len(names) - 1, max(1, round(len(names) * tf)))
    order = [names[i] for i in rng.permutation(len(names))]
    test_ids, train_ids = sorted(order[:n_test_ids]), sorted(order[n_test_ids:])
    per = params["images_per_class"]
    n_test_c = 0
    if tf > 0 and per > 1:
        n_test_c = min(per - 1, max(1, round(per * tf)))
    pools: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for cls in range(len(EXPRESSIONS)):
        for split, ids, count in (("train", train_ids, per - n_test_c),
                                  ("test", test_ids, n_test_c)):
            if count == 0:
                continue
            start = int(rng.integers(len(ids)))
            perm = [ids[(start + k) % len(ids)] for k in range(len(ids))]
            pools[split].extend((cls, perm[k % len(perm)]) for k in range(count))
    items = []
    for split, digits in (("train", 5), ("test", 4)):
        pool = pools[split]
        width = max(digits, len(str(len(pool))))
        for i, j in enumerate(rng.permutation(len(pool))):
            cls, ident = pool[j]
            items.append((split, i, f"{split}_{i + 1:0{width}d}.jpg", cls, ident))
    return identities, items


def write_fer(root: str | os.PathLike, subjects: int = 40, images_per_class: int = 200,
              size: int = 100, seed: int = 0, test_fraction: float = 0.2, *,
              workers: int | None = None, progress: bool | None = None) -> Path:
    """Write a synthetic expression data set in the RAF-DB layout under ``root``; return ``root``.

    ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 4``; labels 1-7 in EXPRESSIONS order)
    and ``Image/aligned/{stem}_aligned.jpg``. About ``test_fraction`` of each class's images are
    ``test_`` images whose identities never appear in ``train_`` images.
    """
    params = fer_params(subjects, images_per_class, size, seed, test_fraction)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    identities, items = _fer_plan(params)
    chunk = 40
    jobs = [(str(root), identities, items[i:i + chunk], params["size"], params["seed"])
            for i in range(0, len(items), chunk)]
    results = _run_jobs(_fer_job, jobs, [len(j[2]) for j in jobs], workers, progress,
                        "synthetic-fer")
    images = [e for r in results for e in r]
    lines = [f"{e['name']} {e['label']}" for e in images]
    _write_text(root / "EmoLabel" / "list_patition_label.txt", "\n".join(lines) + "\n")
    meta = _meta("synthetic-fer", "rafdb", params, identities)
    meta.update({"expressions": list(EXPRESSIONS),
                 "expression_prototypes": {k: {"core": [f"AU{a}" for a in c],
                                               "optional": [f"AU{a}" for a in o]}
                                           for k, (c, o) in EXPRESSION_PROTOTYPES.items()},
                 "splits": {"train": sorted({e["identity"] for e in images
                                             if e["split"] == "train"}),
                            "test": sorted({e["identity"] for e in images
                                            if e["split"] == "test"})}})
    _write_sidecar(root, meta, images)
    return root


def read_sidecar(root: str | os.PathLike) -> dict:
    """The parsed ``synthetic.json`` of a generated set (ClefError when missing or corrupt)."""
    path = Path(root) / SIDECAR
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClefError("not a synthetic data set (no synthetic.json); generate one with "
                        "`clefctl data synth`", path=path) from None
    except (OSError, ValueError) as exc:
        raise ClefError(f"unreadable synthetic.json ({exc}); regenerate with "
                        "`clefctl data synth --force`", path=path) from None


def _params_for(kind: str, size_options: dict) -> dict:
    defaults = AU_DEFAULTS if kind == "synthetic-au" else FER_DEFAULTS
    unknown = sorted(set(size_options) - set(defaults))
    if unknown:
        raise ClefError(f"unknown option(s) for {kind}: {', '.join(unknown)} "
                        f"(known: {', '.join(defaults)})")
    merged = {**defaults, **{k: v for k, v in size_options.items() if v is not None}}
    return au_params(**merged) if kind == "synthetic-au" else fer_params(**merged)


def _complete(root: Path, kind: str) -> bool:
    """True when ``root`` holds a finished set of this kind and generator version, any size."""
    try:
        old = json.loads((root / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and old.get("kind") == kind and old.get("version") == GENERATOR_VERSION


def _status(root: Path, kind: str, params: dict) -> str | None:
    """None when ``root`` holds this set with these parameters, else why it must be (re)made."""
    sidecar = root / SIDECAR
    if sidecar.is_file():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if (old.get("kind") == kind and old.get("version") == GENERATOR_VERSION
                and old.get("params") == params):
            return None
        return "parameters changed"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ClefError(f"exists and is not a synthetic data set (no {SIDECAR}); "
                        "choose another output folder or remove it", path=root)
    return "first use"


@contextlib.contextmanager
def _lock(root: Path):
    """Serialise generation of one root between processes (e.g. distributed ranks)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generate(kind: str, root: str | os.PathLike | None = None, *, force: bool = False,
             progress: bool | None = None, workers: int | None = None,
             **size_options) -> tuple[Path, bool]:
    """Like :func:`ensure`; also says whether it (re)generated the set (True) or reused it."""
    if kind not in KINDS:
        raise ClefError(f"unknown synthetic data set {kind!r}: use one of {', '.join(KINDS)}")
    explicit = root is not None
    root = Path(root) if explicit else cache_dir() / kind
    if explicit and not size_options and not force and _complete(root, kind):
        return root, False  # a set the user made (e.g. `clefctl data synth --subjects 41`): use it as it is
    params = _params_for(kind, size_options)
    if not force and _status(root, kind, params) is None:
        return root, False
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        reason = _status(root, kind, params)  # another process may have made it meanwhile
        if reason is None and not force:
            return root, False
        reason = "forced" if force else reason
        _console().print(f"generating {kind} into {root} ({reason})", soft_wrap=True,
                         markup=False, highlight=False)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            writer = write_au if kind == "synthetic-au" else write_fer
            writer(tmp, **params, workers=workers, progress=progress)
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
            old_dir = None
            if root.exists():
                old_dir = root.parent / f".{root.name}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(root, old_dir)
            os.replace(tmp, root)
            if old_dir is not None:
                shutil.rmtree(old_dir, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root, True


def ensure(kind: str, root: str | os.PathLike | None = None, *, force: bool = False,
           progress: bool | None = None, **size_options) -> Path:
    """Return the root of a synthetic set, generating it when missing or when its parameters differ.

    ``kind``: ``"synthetic-au"`` (options: subjects, tasks, frames_per_task, size, seed) or
    ``"synthetic-fer"`` (subjects, images_per_class, size, seed, test_fraction); defaults are
    AU_DEFAULTS / FER_DEFAULTS. ``root`` defaults to ``cache_dir() / kind``; an explicit ``root``
    that already holds a complete set of this kind is used as it is unless size options are
    given. Generation goes to a temporary folder beside ``root`` that replaces it only when complete.
    """
    return generate(kind, root, force=force, progress=progress, **size_options)[0]


# --------------------------------------------------------------------------------------------
# contact sheet

def _sheet_items(source) -> tuple[list[tuple[Path, str, str, str]], str]:
    """(image path, group key, caption line 1, caption line 2) for every image, and the task."""
    if hasattr(source, "samples"):  # a DatasetBundle
        root = Path(getattr(source, "root", "."))
        items = []
        for smp in source.samples:
            if not smp.path:
                continue
            path = Path(smp.path)
            path = path if path.is_absolute() else root / path
            if source.task == "fer" and smp.label is not None:
                cls = source.classes[smp.label]
                items.append((path, cls, cls, smp.id))
            else:
                on = [c for c, v in zip(source.classes, smp.aus if smp.aus is not None else [])
                      if v >= 0.5]
                items.append((path, smp.activity or "", smp.id, _au_caption(on)))
        return items, source.task
    root = Path(source)
    meta = read_sidecar(root)
    items = []
    if meta.get("kind") == "synthetic-fer":
        for e in meta["images"]:
            items.append((root / e["path"], e["expression"], e["expression"],
                          f"{e['name'].rsplit('.', 1)[0]} {e['identity']}"))
        return items, "fer"
    for e in meta["images"]:
        on = [k for k, v in e["au_intensity"].items() if v >= meta["occurrence_threshold"]]
        items.append((root / e["path"], e["task"], f"{e['subject']} {e['task']} {e['frame']}",
                      _au_caption(on)))
    return items, "au"


def _au_caption(active: Sequence[str]) -> str:
    if not len(active):
        return "no AU"
    return "AU " + "+".join(str(a).upper().removeprefix("AU") for a in active)


def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # pragma: no cover - Pillow without FreeType sizes
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.replace("+", "+ ").split(" "):
        trial = (cur + word) if cur.endswith("+ ") or not cur else cur + " " + word
        trial = trial.replace("+ ", "+") if draw.textlength(trial.replace("+ ", "+"), font=font) \
            <= width else None
        if trial is None and cur:
            lines.append(cur.replace("+ ", "+"))
            cur = word
        else:
            cur = (cur + word) if trial is None else trial
    if cur:
        lines.append(cur.replace("+ ", "+"))
    return lines


def contact_sheet(root_or_bundle, out_png: str | os.PathLike, n: int = 24, seed: int = 0,
                  cols: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of ``n`` sample faces, enlarged ``scale`` x, with captions.

    ``root_or_bundle``: the root of a generated synthetic set (read through its synthetic.json)
    or a DatasetBundle. AU sets are captioned with subject, task, frame and the active AUs; FER
    sets with the expression, image name and identity (classes drawn in turn, one column per
    class unless ``cols`` says otherwise; AU sets default to 6 columns).
    """
    items, task = _sheet_items(root_or_bundle)
    if not items:
        raise ClefError("no images to show in the contact sheet")
    n = max(1, min(int(n), len(items)))
    rng = np.random.default_rng(seed)
    if task == "fer":
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it[1], []).append(i)
        queues = [list(rng.permutation(g)) for g in groups.values()]
        picked: list[int] = []
        cols = cols or len(queues)
        while len(picked) < n:
            for q in queues:
                if q and len(picked) < n:
                    picked.append(int(q.pop()))
    else:
        picked = sorted(int(i) for i in rng.choice(len(items), n, replace=False))
    thumbs = []
    for i in picked:
        try:
            with Image.open(items[i][0]) as im:
                thumbs.append(im.convert("RGB"))
        except OSError:
            thumbs.append(None)
    side = max((t.size[0] for t in thumbs if t is not None), default=100) * scale
    font = _font(max(11, side // 16))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.getbbox("Ag")[3] - font.getbbox("Ag")[1]) + 4
    captions = []
    for i in picked:
        lines = [items[i][2]] + _wrap(probe, items[i][3], font, side - 8)
        captions.append(lines)
    cap_h = line_h * max(len(c) for c in captions) + 6
    cols = max(1, min(cols or 6, n))
    rows = (n + cols - 1) // cols
    pad = 6
    sheet = Image.new("RGB", (cols * (side + pad) + pad, rows * (side + cap_h + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for k, (thumb, lines) in enumerate(zip(thumbs, captions)):
        x = pad + (k % cols) * (side + pad)
        y = pad + (k // cols) * (side + cap_h + pad)
        if thumb is None:
            draw.rectangle([x, y, x + side, y + side], outline=(200, 0, 0))
            draw.text((x + 4, y + 4), "unreadable", fill=(200, 0, 0), font=font)
        else:
            sheet.paste(thumb.resize((side, side), Image.LANCZOS), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 3, y + side + 3 + j * line_h), line, fill=(0, 0, 0), font=font)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        sheet.save(tmp, "PNG")
    os.chmod(out, 0o666 & ~_umask())
    return out
