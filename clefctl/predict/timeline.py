"""The timeline PNG of a video: AU occurrence probabilities over time, one panel per face
(the four faces seen on the most frames). Collected while the rows stream (a few bytes per
face and frame), drawn when the video ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_PANELS = 4


@dataclass
class Timeline:
    source: str
    aus: list[str]
    times: dict = field(default_factory=dict)      # face_id -> list of timestamps
    probs: dict = field(default_factory=dict)      # face_id -> list of float16 (C,) arrays

    def add(self, face_id: int, t: float, au: np.ndarray) -> None:
        self.times.setdefault(face_id, []).append(float(t))
        self.probs.setdefault(face_id, []).append(np.asarray(au, np.float16))

    def draw(self, out: Path) -> Path | None:
        """Write the PNG (None when no face had two frames)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        from clefctl.paths import atomic_path

        faces = sorted((f for f in self.times if len(self.times[f]) > 1), key=lambda f: -len(self.times[f]))
        faces = sorted(faces[:MAX_PANELS])
        if not faces:
            return None
        c = len(self.aus)
        fig = Figure(figsize=(10, len(faces) * (0.3 * c + 1.0) + 0.5), layout="constrained")
        axes = fig.subplots(len(faces), 1, squeeze=False)[:, 0]
        t0 = min(min(self.times[f]) for f in faces)
        t1 = max(max(self.times[f]) for f in faces)
        for ax, f in zip(axes, faces):
            t, p = _with_gaps(np.asarray(self.times[f]), np.stack(self.probs[f]).astype(np.float32))
            edges = np.concatenate([t, [t[-1] + (t[-1] - t[-2])]])
            p = p.T
            im = ax.pcolormesh(edges, np.arange(c + 1) - 0.5, p, cmap="viridis", vmin=0, vmax=1, shading="flat")
            ax.set_xlim(t0, t1)
            ax.set_ylim(c - 0.5, -0.5)
            ax.set_yticks(range(c), self.aus)
            ax.set_title(f"face {f}: AU occurrence probability (gaps: face not seen)", fontsize=9)
        axes[-1].set_xlabel("time (s)")
        fig.colorbar(im, ax=list(axes), fraction=0.03)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        return out


def _with_gaps(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert an empty (NaN) sample after each step longer than 3 typical steps, so that a face
    not seen for a while shows as a gap rather than as its last value stretched."""
    step = float(np.median(np.diff(t)))
    if step <= 0:
        return t, p
    cut = np.flatnonzero(np.diff(t) > 3 * step)
    if cut.size == 0:
        return t, p
    t = np.insert(t, cut + 1, t[cut] + step)
    p = np.insert(p, cut + 1, np.nan, axis=0)
    return t, p
