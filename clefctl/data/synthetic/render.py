"""The renderer: one face drawn from an :class:`Identity`, AU intensities and a :class:`Pose`.

:func:`render_face` composes one drawing function per face part (head and neck, cheeks, folds
around the mouth, chin, lip bulges, forehead, glabella, nose, eyes, brows, lips, hair, glasses),
each returning the point sets of the sidecar regions it owns, then downsamples, lights and
noises the supersampled canvas and turns the regions into pixel boxes. The parts are drawn in a
fixed order (later ones paint over earlier ones), so the same inputs give the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clefctl.data.synthetic.identity import Identity, Pose, rgb
from clefctl.data.synthetic.identity import background as random_background
from clefctl.data.synthetic.stats import PARTS, au_vector

SUPERSAMPLE = 3
AU_FRAMING = {"zoom": 1.2, "anchor": (0.0, 0.25)}   # BP4D-like face-centred frames
FER_FRAMING = {"zoom": 1.3, "anchor": (0.0, 0.3)}  # RAF-DB-like tight aligned crops

Regions = dict[str, list[np.ndarray]]


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


# --------------------------------------------------------------------------------------------
# geometry helpers

def _ellipse(cx, cy, rx, ry, n=36, a0=0.0, a1=2 * np.pi) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _side_arc(cx, cy, rx, ry, s, a0=-0.5 * np.pi, a1=0.5 * np.pi, n=12) -> np.ndarray:
    """Half-ellipse arc bulging outwards on side ``s`` (-1 image left, +1 image right)."""
    t = np.linspace(a0, a1, n)
    return np.stack([cx + s * rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _band(xs, top, bottom) -> np.ndarray:
    """The polygon between two curves over the same ``xs``: along ``top``, back along ``bottom``."""
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs, bottom], 1)[::-1]])


def _rgba(rgb_, alpha: float) -> tuple[int, int, int, int]:
    return (int(rgb_[0]), int(rgb_[1]), int(rgb_[2]), int(min(1.0, max(0.0, float(alpha))) * 255))


def _shade(rgb_, k: float, add: float = 0.0) -> tuple[int, int, int]:
    return rgb(np.asarray(rgb_, dtype=float) * k + add)


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


def _quad_bezier(p0, p1, p2, n: int) -> np.ndarray:
    tq = np.linspace(0, 1, n)[:, None]
    return (1 - tq) ** 2 * p0 + 2 * (1 - tq) * tq * p1 + tq ** 2 * p2


# --------------------------------------------------------------------------------------------
# the face's shape under its AUs (no drawing)

@dataclass
class _Face:
    """What every part function reads: identity, AU visibilities and the moved feature shapes."""

    idn: Identity
    a: dict[int, float]          # AU number -> visibility (see _visibility)
    gaze: float
    skin: np.ndarray
    dark: tuple[int, int, int]
    W: float                     # half face width
    cy: float                    # centre line between the skull (top) ellipse and the jaw
    jaw_drop: float
    chin_v: float
    eyes: dict                   # side -> (ex, xs, up, lo, tilt)
    tt: np.ndarray               # eye-contour parameter, -1..1
    el: float                    # lower-lid height
    mouth: dict                  # the lip curves of _mouth_shape
    brows: tuple[float, float, float, float]   # inner y, middle y, outer y, inner x


def _eye_shape(idn: Identity, a: dict) -> tuple[dict, np.ndarray, float]:
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
    return eyes, tt, el


def _mouth_shape(idn: Identity, a: dict) -> dict:
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
    return {"mw": mw, "gap": gap, "mt": mt, "mx": mx, "contact": contact, "op": op,
            "up_in": up_in, "lo_in": lo_in, "up_out": up_out, "lo_out": lo_out, "corners": corners}


def _brow_shape(idn: Identity, a: dict) -> tuple[float, float, float, float]:
    bi_y = idn.brow_y + 0.02 - 0.17 * a[1] + 0.14 * a[4] + 0.03 * a[9]
    bm_y = idn.brow_y - idn.brow_arch - 0.06 * a[1] - 0.11 * a[2] + 0.09 * a[4]
    bo_y = idn.brow_y + 0.02 - 0.17 * a[2] + 0.06 * a[4] + 0.02 * a[1]
    bi_x = 0.16 - 0.07 * a[4]
    return bi_y, bm_y, bo_y, bi_x


def _face(idn: Identity, a: dict, gaze: float) -> _Face:
    skin = np.array(idn.skin, dtype=float)
    cy = 0.05
    jaw_drop = 0.3 * a[26]
    eyes, tt, el = _eye_shape(idn, a)
    return _Face(idn=idn, a=a, gaze=gaze, skin=skin, dark=_shade(skin, 0.4), W=idn.face_w, cy=cy,
                 jaw_drop=jaw_drop, chin_v=float(cy + idn.face_bottom + jaw_drop), eyes=eyes,
                 tt=tt, el=el, mouth=_mouth_shape(idn, a), brows=_brow_shape(idn, a))


# --------------------------------------------------------------------------------------------
# one drawing function per face part, in drawing order; each returns the regions it owns

def _draw_head(cv: _Canvas, f: _Face) -> Regions:
    """Body, hair behind, neck with the platysma cords (AU20), ears, face outline (AU26 jaw)."""
    idn, a, W, cy, skin = f.idn, f.a, f.W, f.cy, f.skin
    chin0 = cy + idn.face_bottom

    def jaw_shift(v):
        return f.jaw_drop * _smoothstep((np.asarray(v) - idn.mouth_y) / (chin0 - idn.mouth_y))

    cv.poly(_ellipse(0, 2.75, 2.3, 1.1), _rgba(idn.clothes, 1))
    if idn.hair_style == "long":
        top = _ellipse(0, cy, W * 1.14, idn.face_top * 1.12, 40, np.pi, 2 * np.pi)
        back = np.concatenate([[[-W * 1.3, 1.75]], top, [[W * 1.3, 1.75]]])
        cv.poly(back, _rgba(_shade(idn.hair_colour, 0.85), 1))
    cv.poly([[-0.42 * W, 0.8], [0.42 * W, 0.8], [0.5 * W, 2.2], [-0.5 * W, 2.2]],
            _rgba(_shade(skin, 0.82), 1))
    neck_top = cy + idn.face_bottom + f.jaw_drop - 0.15
    for s in (-1, 1):  # platysma cords (AU20)
        for x0, x1 in ((0.12, 0.3), (0.3, 0.48)):
            cv.line([[s * x0 * W, neck_top], [s * x1 * W, neck_top + 0.9]],
                    _rgba(_shade(skin, 0.5), 0.9 * a[20]), 0.035)
    neck = np.array([[-0.5 * W, neck_top + 0.1], [0.5 * W, neck_top + 0.9]])
    for s in (-1, 1):
        ear = _ellipse(s * (W + 0.03), 0.12, 0.13, 0.24)
        cv.poly(ear, _rgba(_shade(skin, 0.93), 1))
        cv.line(_side_arc(s * (W + 0.04), 0.12, 0.05, 0.14, s), _rgba(f.dark, 0.35), 0.02)
    upper = _ellipse(0, cy, W, idn.face_top, 40, np.pi, 2 * np.pi)
    t = np.linspace(0, np.pi, 41)
    c, sn = np.cos(t), np.sin(t)
    n = idn.jaw
    lx = W * np.sign(c) * np.abs(c) ** (2 / n)
    ly = cy + idn.face_bottom * np.abs(sn) ** (2 / n)
    lower = np.stack([lx, ly + jaw_shift(ly)], 1)
    cv.poly(np.concatenate([upper, lower]), _rgba(skin, 1))
    return {"neck": [neck], "jaw": [lower[(lower[:, 1] > idn.mouth_y)]]}


def _draw_cheeks(cv: _Canvas, f: _Face) -> Regions:
    """Cheeks raised by AU6, with the lower-lid arc and the crow's feet it brings."""
    idn, a, dark, ew = f.idn, f.a, f.dark, f.idn.eye_w
    cheeks = []
    for s in (-1, 1):
        ex = s * idn.eye_sep
        ch = _ellipse(s * 0.55, 0.47 - 0.15 * a[6], 0.22, 0.15 - 0.02 * a[6])
        cv.poly(ch, _rgba(_shade(f.skin, 1.0, 22), 0.2 + 0.6 * a[6]))
        cv.line(_ellipse(s * 0.55, 0.47 - 0.15 * a[6], 0.24, 0.17, 14, 0.1 * np.pi, 0.9 * np.pi),
                _rgba(dark, 0.6 * a[6]), 0.025)
        cheeks.append(ch)
        arc = _ellipse(ex, f.el + 0.05, ew * 1.05, 0.05 + 0.02 * a[6], 15, 0.15 * np.pi,
                       0.85 * np.pi)
        cv.line(arc, _rgba(dark, 0.9 * a[6]), 0.03)
        ox = ex + s * (ew + 0.02)
        for ang in (-0.45, 0.0, 0.45):
            d = np.array([s * math.cos(ang), math.sin(ang)])
            cv.line([[ox, 0.0] + d * 0.03, [ox, 0.0] + d * 0.19], _rgba(dark, 0.95 * a[6]), 0.028)
    return {"cheeks": cheeks}


def _draw_mouth_surround(cv: _Canvas, f: _Face) -> Regions:
    """Nasolabial folds (AU10, AU12), dimples (AU14), corner stretch (AU20), furrows (AU15)."""
    idn, a, dark, m = f.idn, f.a, f.dark, f.mouth
    corners, mw = m["corners"], m["mw"]
    folds, corner_boxes = [], []
    for s in (-1, 1):
        top = np.array([s * 0.2 * idn.nose_size, idn.nose_y - 0.03 - 0.04 * a[9]])
        cx_, cy_ = corners[s]
        end = np.array([cx_ + s * 0.1, cy_ + 0.1 - 0.05 * a[12]])
        mid = np.array([s * (0.3 + 0.3 * mw + 0.06 * a[12]), (top[1] + end[1]) / 2 + 0.02])
        fold = _quad_bezier(top, mid, end, 14)
        cv.line(fold, _rgba(dark, idn.fold + 0.55 * a[12] + 0.2 * a[9] + 0.15 * a[6]), 0.024)
        cv.line(fold[:8], _rgba(dark, 0.85 * a[10]), 0.036)
        folds.append(fold)
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
        corner_boxes.append(_box(corners[s][None], 0.12))
    return {"nasolabial": folds, "mouth_corners": corner_boxes}


def _draw_chin(cv: _Canvas, f: _Face) -> Regions:
    """Mentolabial furrow and chin-boss wrinkles (AU17)."""
    a, dark, chin_v = f.a, f.dark, f.chin_v
    lip_bottom = float(f.mouth["lo_out"].max())
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
    return {"chin": [np.array([[-0.3, lip_bottom + 0.03], [0.3, chin_v]])]}


def _draw_lip_bulges(cv: _Canvas, f: _Face) -> Regions:
    """AU24: skin bulges above and below the pressed lips (inside the mouth region)."""
    m, a = f.mouth, f.a
    mt, mx = m["mt"], m["mx"]
    for k, yy in ((-1, m["up_out"]), (1, m["lo_out"])):
        sel = np.abs(mt) < 0.8
        cv.line(np.stack([mx[sel], yy[sel] + k * 0.045], 1),
                _rgba(_shade(f.skin, 1.0, 45), 0.95 * a[24]), 0.045)
        cv.line(np.stack([mx[sel], yy[sel] + k * 0.085], 1), _rgba(f.dark, 0.8 * a[24]), 0.025)
    return {}


def _draw_forehead(cv: _Canvas, f: _Face) -> Regions:
    """Horizontal forehead wrinkles: AU1 in the centre, AU2 at the sides (below the hair)."""
    idn, a, dark = f.idn, f.a, f.dark
    bi_y, bm_y, bo_y, _ = f.brows
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
    return {"forehead": [np.array([[-0.7, top_limit], [0.7, min(bi_y, bm_y, bo_y) - 0.05]])]}


def _draw_glabella(cv: _Canvas, f: _Face) -> Regions:
    """Vertical frown lines between the brows (AU4)."""
    bi_y = f.brows[0]
    for s in (-1, 1):
        cv.line([[s * 0.05, bi_y - 0.1], [s * 0.035, bi_y + 0.13]], _rgba(f.dark, f.a[4]), 0.036)
    return {"glabella": [np.array([[-0.16, bi_y - 0.12], [0.16, 0.0]])]}


def _draw_nose(cv: _Canvas, f: _Face) -> Regions:
    """Bridge wrinkles (AU9), sides, flaring wings, nostrils and tip (raised by AU9, AU10)."""
    idn, a, dark = f.idn, f.a, f.dark
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
                _rgba(_shade(f.skin, 0.3), 0.9))
    cv.line(_ellipse(0, nose_y, 0.07 * ns, 0.04, 10, 0.1 * np.pi, 0.9 * np.pi), _rgba(dark, 0.3),
            0.018)
    nw = 0.2 * ns * flare
    return {"nose": [np.array([[-nw, -0.05], [nw, nose_y + 0.07]])]}


def _draw_eyes(cv: _Canvas, f: _Face) -> Regions:
    """Eye whites, iris and pupil (with gaze), lids (AU5 opens, AU6/AU7 narrow), lid crease."""
    idn, a, dark, tt = f.idn, f.a, f.dark, f.tt
    white = (238, 236, 230)
    eyes = []
    for s in (-1, 1):
        ex, xs, up, lo, tilt = f.eyes[s]
        cv.poly(_band(xs, up, lo), _rgba(white, 1))
        ic = np.array([ex + f.gaze, 0.004])
        for r, col in ((0.095, idn.iris), (0.04, (12, 10, 10))):
            xi = np.linspace(max(ic[0] - r, xs[0]), min(ic[0] + r, xs[-1]), 17)
            h = np.sqrt(np.maximum(r ** 2 - (xi - ic[0]) ** 2, 0))
            top = np.maximum(ic[1] - h, np.interp(xi, xs, up))
            bot = np.minimum(ic[1] + h, np.interp(xi, xs, lo))
            ok = bot > top
            if ok.sum() >= 2:
                cv.poly(_band(xi[ok], top[ok], bot[ok]), _rgba(col, 1))
        cv.line(np.stack([xs, up], 1), _rgba((25, 18, 15), 1), 0.03)
        cv.line(np.stack([xs, lo], 1), _rgba(dark, 0.55 + 0.45 * a[7]), 0.014 + 0.02 * a[7])
        cv.line(np.stack([xs, lo + 0.04], 1)[4:-4], _rgba(dark, 0.9 * a[7]), 0.02)
        crease = -idn.eye_up * (1 - tt ** 2) ** 0.7 - 0.065 + tilt
        cv.line(np.stack([xs, crease], 1)[3:-3], _rgba(dark, 0.35), 0.016)
        eyes.append(np.concatenate([np.stack([xs, up], 1), np.stack([xs, lo], 1)]))
    return {"eyes": eyes}


def _draw_brows(cv: _Canvas, f: _Face) -> Regions:
    """Brows: inner ends raised by AU1, outer by AU2, lowered and thickened by AU4."""
    idn, a = f.idn, f.a
    bi_y, bm_y, bo_y, bi_x = f.brows
    out: Regions = {"brows": [], "inner_brows": [], "outer_brows": []}
    for s in (-1, 1):
        tq = np.linspace(0, 1, 16)[:, None]
        p0 = np.array([s * bi_x, bi_y])
        p1 = np.array([s * 0.44, bm_y - 0.02])
        p2 = np.array([s * 0.72, bo_y])
        centre = _quad_bezier(p0, p1, p2, 16)
        th = idn.brow_thick * (1.15 - 0.55 * tq[:, 0]) * (1 + 0.25 * a[4])
        brow = np.concatenate([centre - np.stack([0 * th, th / 2], 1),
                               (centre + np.stack([0 * th, th / 2], 1))[::-1]])
        cv.poly(brow, _rgba(idn.brow_colour, 1))
        out["brows"].append(brow)
        out["inner_brows"].append(centre[:6])
        out["outer_brows"].append(centre[-6:])
    return out


def _draw_lips(cv: _Canvas, f: _Face) -> Regions:
    """Open mouth and teeth (AU25, AU26), lips (thinned by AU23/AU24), AU23 lines and pursing."""
    m, a, dark = f.mouth, f.a, f.dark
    mt, mx, gap, op = m["mt"], m["mx"], m["gap"], m["op"]
    up_in, lo_in, up_out, lo_out = m["up_in"], m["lo_in"], m["up_out"], m["lo_out"]
    sel = slice(1, -1)
    if gap > 0.008:
        cv.poly(_band(mx, up_in, lo_in), _rgba((60, 18, 22), 1))
        th_up = np.minimum(0.06, 0.55 * op)
        cv.poly(_band(mx[sel], up_in[sel], (up_in + th_up)[sel]), _rgba((240, 238, 228), 1))
        if gap > 0.1:
            th_lo = np.minimum(0.035, 0.2 * op)
            cv.poly(_band(mx[sel], (lo_in - th_lo)[sel], lo_in[sel]), _rgba((225, 222, 212), 1))
    lipc = np.array(f.idn.lip_colour, dtype=float) * (1 - 0.15 * a[23])
    cv.poly(_band(mx, up_out, up_in), _rgba(_shade(lipc, 0.92), 1))
    cv.poly(_band(mx, lo_in, lo_out), _rgba(lipc, 1))
    if gap <= 0.008:  # closed lips: the line between them (thicker when pressed, AU24)
        cv.line(np.stack([mx, m["contact"]], 1), _rgba(_shade(lipc, 0.45), 0.9),
                0.016 + 0.02 * a[24])
    for x in (-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6):
        i = int(np.argmin(np.abs(mt - x)))
        cv.line([[mx[i], up_out[i] + 0.01], [mx[i], lo_out[i] - 0.01]],
                _rgba(_shade(lipc, 0.45), a[23]), 0.022)
        if abs(x) < 0.5:  # pursing lines above the upper lip
            cv.line([[mx[i] * 1.1, up_out[i] - 0.02], [mx[i] * 1.25, up_out[i] - 0.1]],
                    _rgba(dark, 0.9 * a[23]), 0.026)
    return {"mouth": [np.concatenate([np.stack([mx, up_out - 0.1], 1),
                                      np.stack([mx, lo_out + 0.07], 1)])]}


def _draw_hair(cv: _Canvas, f: _Face) -> Regions:
    """Hair in front of the face: a cap down to the hairline or fringe (none when bald)."""
    idn, W, cy = f.idn, f.W, f.cy
    if idn.hair_style == "bald":
        return {}
    n = idn.jaw
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
    return {}


def _draw_glasses(cv: _Canvas, f: _Face) -> Regions:
    """Rims, temples and bridge for identities that wear glasses."""
    idn, W, ew = f.idn, f.W, f.idn.eye_w
    if not idn.glasses:
        return {}
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
    return {}


#: The parts in drawing order (later ones paint over earlier ones).
PART_DRAWERS = (_draw_head, _draw_cheeks, _draw_mouth_surround, _draw_chin, _draw_lip_bulges,
                _draw_forehead, _draw_glabella, _draw_nose, _draw_eyes, _draw_brows, _draw_lips,
                _draw_hair, _draw_glasses)


# --------------------------------------------------------------------------------------------
# composition

def _develop(img: Image.Image, pose: Pose, size: int, seed: int, supersample: int) -> Image.Image:
    """Downsample the canvas, then apply the pose's lighting, contrast and pixel noise."""
    out = img.reduce(supersample)  # box filter over each supersample x supersample block
    arr = np.asarray(out).astype(np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    grad = 1 + pose.light_amp * (xx * math.cos(pose.light_angle) + yy * math.sin(pose.light_angle))
    arr = ((arr - 0.5) * pose.contrast + 0.5) * pose.brightness * grad[..., None]
    nrng = np.random.default_rng(seed)
    arr = arr * 255 + nrng.normal(0, pose.noise, arr.shape)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")


def _region_boxes(cv: _Canvas, regions: Regions, size: int,
                  supersample: int) -> dict[str, list[list[float]]]:
    """Face-unit point sets -> ``[x0, y0, x1, y1]`` boxes in pixels of the written image."""
    boxes: dict[str, list[list[float]]] = {}
    for part, pts_list in regions.items():
        bl = []
        for pts in pts_list:
            p = cv.px(_box(np.asarray(pts, dtype=float).reshape(-1, 2), 0.03)) / supersample
            lo, hi = np.clip(p.min(0), 0, size), np.clip(p.max(0), 0, size)
            bl.append([round(float(lo[0]), 1), round(float(lo[1]), 1),
                       round(float(hi[0]), 1), round(float(hi[1]), 1)])
        boxes[part] = bl
    return boxes


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
    a = {k: _visibility(v) for k, v in au_vector(aus).items()}
    pose = pose or Pose()
    S = size * supersample
    if background is None:
        background = random_background(np.random.default_rng(seed), S)
    img = background.resize((S, S), Image.BICUBIC) if background.size != (S, S) else background.copy()
    cv = _Canvas(img, pose, zoom, anchor)
    face = _face(identity, a, pose.gaze)
    regions: Regions = {p: [] for p in PARTS}
    for draw in PART_DRAWERS:
        for part, pts in draw(cv, face).items():
            regions[part].extend(pts)
    image = _develop(img, pose, size, seed, supersample)
    return image, _region_boxes(cv, regions, size, supersample)
