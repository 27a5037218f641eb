"""Who is drawn and under which conditions: per-subject face parameters (:class:`Identity`),
per-frame nuisances (:class:`Pose`: rotation, scale, shift, lighting, noise, gaze) and the
random backgrounds. Every draw comes from the generator passed in, so the same seed gives the
same face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clefctl.data.synthetic.stats import smooth_noise

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


def rgb(a) -> tuple[int, int, int]:
    """A colour as three ints, rounded and clipped to 0-255."""
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
        skin=rgb(skin),
        eye_sep=u(0.40, 0.46), eye_w=u(0.19, 0.23), eye_up=u(0.085, 0.105), eye_lo=u(0.05, 0.065),
        iris=rgb(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.8, 1.2)),
        brow_y=u(-0.36, -0.30), brow_thick=u(0.05, 0.07) if female else u(0.065, 0.09),
        brow_arch=u(0.03, 0.07), brow_colour=rgb(brow_colour),
        nose_size=u(0.85, 1.15), nose_y=u(0.50, 0.58),
        mouth_y=u(0.88, 0.95), mouth_w=u(0.27, 0.34),
        lip_up=u(0.055, 0.075) * (1.15 if female else 1.0),
        lip_lo=u(0.07, 0.09) * (1.15 if female else 1.0),
        lip_colour=rgb(lip), hair_colour=rgb(hair), hair_style=style,
        fringe=bool(style != "bald" and rng.random() < 0.4), hairline=u(-0.98, -0.88),
        glasses=bool(rng.random() < 0.2), glasses_colour=rgb(rng.uniform(10, 120, 3)),
        clothes=rgb(rng.uniform(20, 230, 3)), fold=u(0.05, 0.2),
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


def pose_sequence(rng: np.random.Generator, n: int, sigma: float) -> list[Pose]:
    """``n`` poses whose nuisances drift smoothly (smoothed noise of width ``sigma`` frames)."""
    def track(lo, hi):
        z = np.clip(smooth_noise(rng, n, sigma) / 2.2, -1, 1)
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


def random_pose(rng: np.random.Generator) -> Pose:
    """One pose drawn like a frame of :func:`pose_sequence`."""
    return pose_sequence(rng, 1, 1.0)[0]


def background(rng: np.random.Generator, size: int) -> Image.Image:
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
