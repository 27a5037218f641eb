"""Which face detector runs: ``--detector auto|yunet|haar`` resolved once per process.

* ``yunet``: :class:`~clefctl.data.faces.yunet.YuNetDetector` with the registry's ``yunet`` file
  (``clefctl weights get yunet``); downloaded on first use when it is missing; unavailable -> one
  error line (exit 2).
* ``haar``: OpenCV's Haar cascades (:class:`~clefctl.data.faces.detect.HaarDetector`), the
  offline fallback: no landmarks, eye-cascade levelling.
* ``auto`` (the default): YuNet when its file is present or can be fetched, else Haar with one
  warning line per process that says so and names ``clefctl weights get yunet``.

A download is tried at most once per process and gives up within :data:`CONNECT_TIMEOUT_S`
seconds when it cannot connect; with ``CLEF_OFFLINE=1`` it is never tried (tests and CI).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from clefctl.data.faces.detect import Detector, HaarDetector
from clefctl.errors import ClefError

DETECTORS = ("auto", "yunet", "haar")
OFFLINE_ENV = "CLEF_OFFLINE"
CONNECT_TIMEOUT_S = 5.0
_HAAR_SETTINGS = {"photos": HaarDetector.for_photos, "video": HaarDetector.for_video,
                  "frames": HaarDetector.for_frames}

_state: dict = {"tried": None, "warned": False}   # the one download attempt and warning of this process


@dataclass(frozen=True)
class DetectorChoice:
    """A resolved ``--detector``: ``kind`` (``yunet`` or ``haar``), the YuNet file, the threshold."""

    kind: str
    model: str | None = None
    min_confidence: float | None = None

    def make(self, setting: str = "photos") -> Detector:
        """The detector for ``setting`` (``photos``, ``video`` or ``frames``)."""
        if setting not in _HAAR_SETTINGS:
            raise ClefError(f"unknown detector setting {setting!r}", hint="use photos, video or frames")
        if self.kind == "yunet":
            from clefctl.data.faces.yunet import YuNetDetector

            return YuNetDetector(self.model, setting=setting, min_confidence=self.min_confidence)
        det = _HAAR_SETTINGS[setting]()
        det.min_confidence = float(self.min_confidence or 0.0)
        return det

    def describe(self) -> dict:
        out = {"name": self.kind}
        if self.kind == "yunet":
            from clefctl.data.faces.yunet import DEFAULT_MIN_CONFIDENCE

            out.update(model=Path(self.model).name, min_confidence=self.min_confidence or DEFAULT_MIN_CONFIDENCE)
        elif self.min_confidence:
            out["min_confidence"] = self.min_confidence
        return out


def offline() -> bool:
    """True when ``CLEF_OFFLINE`` is set: no download is ever tried."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def installed_yunet() -> tuple[str | None, str]:
    """(path of the YuNet file in the weights folder, or None; why not), downloading nothing."""
    from clefctl.weights import registry

    e = registry.entry("yunet")
    path = registry.local_path(e)
    if path is None:
        return None, f"its file is not in {registry.weights_dir()}"
    if path.stat().st_size != e.size:
        return None, (f"{path} is {path.stat().st_size} bytes, not YuNet's {e.size}: "
                      "run `clefctl weights get yunet --force`")
    return str(path), ""


def _yunet_file(explicit: bool) -> tuple[str | None, str]:
    """(path of the YuNet file or None, why not): the installed file, else one download per process."""
    from clefctl.weights import download, registry

    if registry.local_path(registry.entry("yunet")) is not None:   # there: used, or refused when it is cut
        return installed_yunet()
    if offline():
        return None, f"its file is not in {registry.weights_dir()} and {OFFLINE_ENV} is set"
    if _state["tried"] is not None:
        return None, _state["tried"]
    try:
        return str(download.get(registry.entry("yunet"), progress=explicit, timeout=CONNECT_TIMEOUT_S).path), ""
    except ClefError as exc:
        _state["tried"] = f"it is not in {registry.weights_dir()} and the download failed ({exc.bare_message})"
        return None, _state["tried"]


def resolve_detector(kind: str = "auto", min_confidence: float | None = None) -> DetectorChoice:
    """Resolve ``--detector`` (see the module docstring); ``yunet`` unavailable is a ClefError."""
    kind = (kind or "auto").strip().lower()
    if kind not in DETECTORS:
        raise ClefError(f"unknown face detector {kind!r}", hint=f"use one of {', '.join(DETECTORS)}")
    if min_confidence is not None and not 0.0 <= float(min_confidence) < 1.0:
        raise ClefError(f"--min-confidence must be in [0, 1), got {min_confidence}")
    if kind == "haar":
        return DetectorChoice("haar", None, min_confidence)
    path, why = _yunet_file(explicit=kind == "yunet")
    if path is not None:
        return DetectorChoice("yunet", path, min_confidence)
    if kind == "yunet":
        raise ClefError(f"the YuNet face detector is not available: {why}",
                        hint="run `clefctl weights get yunet` (CLEF_WEIGHTS_MIRROR for a mirror), or use --detector haar")
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"face detector: YuNet is not available ({why}); using OpenCV's Haar cascades, which miss "
                      "turned and darker-skinned faces and report false ones: run `clefctl weights get yunet`",
                      stacklevel=2)
    return DetectorChoice("haar", None, min_confidence)

