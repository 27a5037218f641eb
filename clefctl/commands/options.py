"""Option groups that several commands take, declared once: each is a decorator adding the options
(name, type, default and help in one place)."""

from __future__ import annotations

import click

from clefctl.commands.types import Finite

DETECTOR_CHOICES = ("auto", "yunet", "haar")   # clefctl.data.faces.choice.DETECTORS (tested equal)


def face_options(f):
    """``--detector`` and ``--min-confidence``: which face detector runs and its score threshold."""
    f = click.option("--min-confidence", type=Finite(min=0, max=1, max_open=True), default=None,
                     help="A detection scoring below this is not a face (YuNet's score; default 0.6). "
                          "See docs/predict.md.")(f)
    f = click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default="auto", show_default=True,
                     help="Face detector: yunet (CNN with 5 landmarks, aligned crops; `clefctl weights get "
                          "yunet`), haar (OpenCV's cascades, offline fallback), auto (yunet when its file is "
                          "there or can be fetched, else haar with a warning).")(f)
    return f
