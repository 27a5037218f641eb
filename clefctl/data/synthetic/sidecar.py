"""``synthetic.json``: the sidecar every generated set carries, written last.

Metadata (generator version, parameters, identities, AU names and regions) indented, then one
compact JSON object per image line with its AU intensities, identity, pose and face-part boxes
``[x0, y0, x1, y1]`` in pixels of the written image. :func:`read_sidecar` parses it whole;
:func:`annotated_faces` walks its images as :class:`AnnotatedFace` records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from clefctl.data.synthetic.stats import OCCURRENCE_THRESHOLD, au_regions
from clefctl.errors import ClefError
from clefctl.paths import write_text_atomic

SIDECAR = "synthetic.json"


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Atomic write, then the usual permissions (atomic temp files start as 0600)."""
    write_text_atomic(path, text)
    os.chmod(path, 0o666 & ~umask())


def write_sidecar(root: Path, meta: dict, images: list[dict]) -> None:
    """``synthetic.json``: metadata indented, then one compact JSON object per image line."""
    head = json.dumps({**meta, "images": []}, indent=1)
    assert head.endswith('"images": []\n}')
    body = ",\n".join(json.dumps(e, separators=(",", ":")) for e in images)
    text = head[: -len("[]\n}")] + "[\n" + body + "\n]\n}\n"
    write_text(root / SIDECAR, text)


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


@dataclass(frozen=True)
class AnnotatedFace:
    """One image of a generated set with what the sidecar says about it.

    ``path``: the image file (``root / rel_path``); ``id``: the id the data adapters give it
    (``F001/T1/1000`` for synthetic-au, ``train_00001`` for synthetic-fer); ``subject``: the
    subject (AU sets) or identity (FER sets); ``au_intensity``: ``{"AU1": 0.03, ...}``;
    ``au_labels``: occurrence 0/1 at the set's threshold; ``regions``: part -> boxes
    ``[x0, y0, x1, y1]`` (pixels of the image, one box per side), exactly as stored.
    AU sets fill ``task`` and ``frame``; FER sets ``split``, ``expression`` and ``label`` (1-7).
    """

    path: Path
    rel_path: str
    id: str
    subject: str
    identity: str
    au_intensity: dict[str, float]
    au_labels: dict[str, int]
    regions: dict[str, list[list[float]]]
    pose: dict[str, float] = field(default_factory=dict)
    task: str | None = None
    frame: int | None = None
    split: str | None = None
    expression: str | None = None
    label: int | None = None

    def boxes(self, parts: Iterable[str]) -> list[list[float]]:
        """The boxes of these parts, in the order given (a part the image lacks adds none)."""
        return [b for part in parts for b in self.regions.get(part, [])]

    def au_boxes(self, au: str) -> list[list[float]]:
        """The boxes of the parts ``au`` (``"AU12"``) changes (:func:`au_regions`)."""
        return self.boxes(au_regions()[au])


def _annotated(root: Path, e: Mapping[str, Any], threshold: float) -> AnnotatedFace:
    intensity = {k: float(v) for k, v in e.get("au_intensity", {}).items()}
    identity = str(e.get("identity", e.get("subject", "")))
    if "task" in e:
        face_id = f"{e['subject']}/{e['task']}/{e['frame']}"
    else:
        face_id = str(e.get("name", e["path"])).rsplit(".", 1)[0]
    return AnnotatedFace(
        path=root / e["path"], rel_path=e["path"], id=face_id,
        subject=str(e.get("subject", identity)), identity=identity, au_intensity=intensity,
        au_labels={k: int(v >= threshold) for k, v in intensity.items()},
        regions=e.get("regions", {}), pose=e.get("pose", {}), task=e.get("task"),
        frame=e.get("frame"), split=e.get("split"), expression=e.get("expression"),
        label=e.get("label"))


def annotated_faces(root: str | os.PathLike, *, subjects: Iterable[str] | None = None,
                    meta: Mapping[str, Any] | None = None) -> Iterator[AnnotatedFace]:
    """Walk the images of a generated set (synthetic-au or synthetic-fer) in sidecar order.

    ``subjects``: only these subjects (AU sets) / identities (FER sets). ``meta``: the already
    parsed sidecar of ``root`` (read with :func:`read_sidecar` otherwise; ClefError when it is
    missing or corrupt).

    Example::

        for face in annotated_faces(root, subjects=["F001"]):
            if face.au_labels["AU12"]:
                boxes = face.au_boxes("AU12")
    """
    root = Path(root)
    meta = read_sidecar(root) if meta is None else meta
    threshold = float(meta.get("occurrence_threshold", OCCURRENCE_THRESHOLD))
    keep = None if subjects is None else set(subjects)
    for e in meta.get("images", []):
        face = _annotated(root, e, threshold)
        if keep is None or face.subject in keep:
            yield face
