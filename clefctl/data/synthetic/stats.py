"""AU statistics of the synthetic faces: which AUs exist, how often each task or expression
shows them, which pairs exclude each other, and the face parts each AU changes.

Occurrence label = intensity >= :data:`OCCURRENCE_THRESHOLD` (0.5). Intensities are drawn as a
mixture: inactive AUs lie in [0, 0.2] (mostly near 0), active ones in [0.6, 1.0], so labels are
learnable from pixels (an expression image may also carry one faint extra AU at 0.2-0.4). Every
AU also occurs at BASE_RATE in every task, so AUs are not given away by the task.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

from clefctl.errors import ClefError

OCCURRENCE_THRESHOLD = 0.5

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

#: The face parts (sidecar region keys), in the order the sidecar lists them.
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


def au_regions() -> dict[str, list[str]]:
    """Map each AU id (``"AU12"``) to the face parts (sidecar region keys) it changes.

    Parts: forehead, brows, inner_brows, outer_brows, glabella (between the brows), eyes, cheeks,
    nose, nasolabial (folds from nose wings to mouth corners), mouth (lips and the skin just
    above and below them), mouth_corners, chin, jaw, neck.
    Example: ``au_regions()["AU12"] == ["mouth_corners", "nasolabial", "cheeks"]``.
    """
    return {f"AU{a}": list(parts) for a, parts in _AU_REGIONS.items()}


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Smoothed white noise with unit marginal variance (length n)."""
    pad = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / sigma) ** 2)
    k /= np.sqrt((k ** 2).sum())
    return np.convolve(rng.standard_normal(n + 2 * pad), k, mode="valid")


def au_vector(aus: Mapping[int, float] | Sequence[float] | np.ndarray | None) -> dict[int, float]:
    """AU intensities as ``{AU number: intensity in [0, 1]}`` over every AU of :data:`AU_IDS`.

    ``aus``: None (all 0), a mapping AU number or ``"AU12"`` -> intensity, or a vector in AU_IDS
    order; intensities are clipped to [0, 1].
    """
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
        margins[:, j] = smooth_noise(rng, n_frames, sigma) - theta
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
