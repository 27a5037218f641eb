"""Temporal smoothing of the probabilities along each face track, streamed.

``--smooth SECONDS``: each face's probabilities become the mean over the samples of the same
``face_id`` within ``SECONDS / 2`` before and after it (a centred moving average; ``_c`` and
``expression`` are then derived from the smoothed values). Rows leave the smoother in their
input order once every sample of their window has arrived, so output lags by half a window and
memory holds one window, whatever the length of the video. A new source flushes the last one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Row:
    """One output row before formatting (``box`` None: a no-face row)."""

    source: str
    frame: int
    face_id: int
    timestamp: float
    confidence: float
    box: tuple | None
    au: np.ndarray | None = None
    fer: np.ndarray | None = None
    video: bool = False
    landmarks: np.ndarray | None = None     # 5 x 2 source pixels (YuNet), None (Haar, no face)


@dataclass
class Smoother:
    """``push(row) -> rows ready``; ``flush() -> the rest``. ``seconds`` <= 0 passes rows through."""

    seconds: float
    _pending: deque = field(default_factory=deque)
    _history: dict = field(default_factory=dict)     # face_id -> deque of (t, au, fer)
    _source: str | None = None

    def push(self, row: Row) -> list[Row]:
        if self.seconds <= 0 or not row.video:
            return self.flush() + [row]
        out = self.flush() if row.source != self._source else []
        self._source = row.source
        if row.box is not None:
            self._history.setdefault(row.face_id, deque()).append((row.timestamp, row.au, row.fer))
        self._pending.append(row)
        half = self.seconds / 2.0
        while self._pending and self._pending[0].timestamp <= row.timestamp - half:
            out.append(self._finish(self._pending.popleft()))
        oldest = (self._pending[0].timestamp if self._pending else row.timestamp) - half
        for hist in self._history.values():
            while hist and hist[0][0] < oldest:
                hist.popleft()
        return out

    def flush(self) -> list[Row]:
        out = [self._finish(r) for r in self._pending]
        self._pending.clear()
        self._history.clear()
        self._source = None
        return out

    def _finish(self, row: Row) -> Row:
        if row.box is None:
            return row
        half = self.seconds / 2.0
        window = [(a, f) for t, a, f in self._history.get(row.face_id, ()) if abs(t - row.timestamp) <= half + 1e-9]
        if window:
            if row.au is not None:
                row.au = np.mean([a for a, _ in window], axis=0)
            if row.fer is not None:
                row.fer = np.mean([f for _, f in window], axis=0)
        return row
