"""Training, evaluation and embedding read face crops from a complete cache, never a partial one.

:func:`crop_cache_for` looks for a cache of the bundle's data set folder (any made by this version,
:func:`clefctl.data.crops.layout.caches_of`) and takes the one with the smallest crops at least as
large as the model's input, among those whose prepare finished (``complete.json``). It is used only
when it has an entry for every frame the job reads and a sample of up to :data:`STALE_SAMPLE` frames
spread over the set still has the size and modification time it had when cropped, and their crops
exist; otherwise the job reads the full frames and says why in one warning line (how to complete or
update the cache, or ``--no-crop-cache``). Data sets whose images are not whole frames (face boxes
from the annotations, aligned crops) never look for one. :meth:`CropCache.apply` maps samples to
their crops; frames without a crop (no face, unreadable) are left out and counted.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clefctl.data.crops.layout import (STATUS_FACE, STATUS_NEIGHBOUR, VERSION, Entries, bundle_frames, caches_of,
                                       crop_rel, is_fresh, read_key, sample_rels)

STALE_SAMPLE = 256
HINT_MIN_FRAMES = 1000   # below this many frames the cache is not worth suggesting


@dataclass
class CropCache:
    """A complete, checked cache for one job: ``folder``, crop ``size``, the entries' row per frame."""

    folder: Path
    size: int
    rows: dict[str, int]
    entries: Entries
    root: Path
    left_out: list[str] = field(default_factory=list)   # ids of samples without a crop

    def partition(self, samples, what: str = "training") -> tuple[list, list[str]]:
        """(``samples`` whose frames have a crop, each reading it (:meth:`Sample.reading`), the ids of the
        others): those are added to :attr:`left_out` and counted in one warning line (``what`` names them)."""
        samples = list(samples)
        rels = sample_rels(self.root, [s.path for s in samples])
        crops = str(self.folder / "crops") + "/"
        cropped = np.isin(self.entries.status, (STATUS_FACE, STATUS_NEIGHBOUR)).tolist()
        kept, left = [], []
        for s, rel in zip(samples, rels):
            i = self.rows.get(rel)
            if i is not None and cropped[i]:
                kept.append(s.reading(crops + crop_rel(rel)))
            else:
                left.append(s.id)
        self.left_out += left
        if left:
            from clefctl.distributed import is_main

            if is_main():
                warnings.warn(f"{len(left)} {what} frame{'s' if len(left) != 1 else ''} without a face crop left "
                              f"out (first: {left[0]}; {self.folder}/no_face.txt and unreadable.txt list them)",
                              stacklevel=3)
        return kept, left

    def apply(self, samples, what: str = "training") -> list:
        """The samples of :meth:`partition` that have a crop."""
        return self.partition(samples, what)[0]

    def describe(self) -> dict:
        """For a run's config: which cache, what size, how many frames left out."""
        key = read_key(self.folder) or {}
        return {"folder": str(self.folder), "size": self.size, "left_out": len(self.left_out),
                "detector": _detector_name(key), "template": key.get("template")}


def _prepare_line(bundle) -> str:
    mode = " --mode pretrain" if bundle.task == "activity" else ""
    return f"clefctl data prepare --dataset {bundle.name} --dataset-root {bundle.root}{mode}"


def _faces_kind(bundle) -> str:
    from clefctl.data import get_spec
    from clefctl.errors import ClefError

    try:
        return get_spec(bundle.name).faces
    except ClefError:
        return "photos"


def _complete(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "complete.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stale(folder: Path, entries: Entries, rows: dict[str, int], frames: list[tuple[str, str]]) -> list[str]:
    """Up to STALE_SAMPLE of ``frames`` ((rel, path), spread over them) whose entry no longer holds."""
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(STALE_SAMPLE, len(frames))).astype(int).tolist()))
    return [frames[k][0] for k in picks if not is_fresh(entries, rows[frames[k][0]], frames[k][1], folder)]


def _detector_name(key: dict) -> str:
    det = key.get("detector")
    return str(det.get("name") if isinstance(det, dict) else det)


def _pick(bundle, image_size: int):
    """(folder, complete record) of the cache to try, or (None, reason to warn about or None)."""
    found = caches_of(bundle.root)
    if not found:
        old = [f for f, k in caches_of(bundle.root, version=None) if k.get("version") != VERSION]
        if old:
            return None, (f"the face-crop cache {old[0]} is stale: an older clefctl made it with the Haar "
                          "cascades, without landmark alignment: full frames are read; rebuild it with "
                          f"`{_prepare_line(bundle)}`")
        return None, None
    done = [(f, k, c) for f, k in found if (c := _complete(f)) is not None]
    fits = [(f, k, c) for f, k, c in done if int(k["size"]) >= int(image_size)]
    if fits:  # the smallest that fits; YuNet's aligned crops before Haar's; the newest
        folder, key, record = min(fits, key=lambda t: (int(t[1]["size"]), _detector_name(t[1]) != "yunet",
                                                        -os.path.getmtime(t[0] / "complete.json")))
        return (folder, record), None
    if done:
        sizes = ", ".join(sorted({f"{k['size']} px" for _, k, _ in done}))
        return None, (f"the face-crop caches of {bundle.root} hold {sizes} crops, smaller than the model's "
                      f"{image_size} px input: full frames are read (prepare one with --size {image_size})")
    return None, (f"the face-crop cache {found[0][0]} is incomplete (its prepare was interrupted or is still "
                  f"running): full frames are read; finish it with `{_prepare_line(bundle)}`")


def crop_cache_for(bundle, image_size: int, enabled: bool = True, announce: bool = True) -> CropCache | None:
    """The checked cache this job reads its frames from, or None (see the module doc); ``announce``
    says which in one line on stderr (under torchrun, rank 0 only)."""
    from clefctl.distributed import is_main
    from clefctl.ui import say

    kind = _faces_kind(bundle)
    if not enabled or kind in ("boxes", "aligned") or any(s.box is not None or s.pixels is not None
                                                           for s in bundle.samples[:1000]):
        return None
    speak = announce and is_main()
    picked, reason = _pick(bundle, image_size)
    if picked is None:
        if reason and speak:
            warnings.warn(reason, stacklevel=2)
        elif speak and kind == "frames" and len(bundle.samples) >= HINT_MIN_FRAMES:
            say(f"{bundle.name}: whole frames are decoded for every sample; `{_prepare_line(bundle)}` crops the "
                f"faces once (training reads them several times faster)")
        return None
    folder, record = picked
    cache = _checked(bundle, folder, record, speak)
    if cache is not None and speak:
        say(f"face crops: {folder} ({cache.size} px; --no-crop-cache reads the full frames)")
    return cache


def _checked(bundle, folder: Path, record: dict, speak: bool) -> CropCache | None:
    try:
        entries = Entries.load(folder / "index.npz")
    except (OSError, ValueError, KeyError) as exc:
        if speak:
            warnings.warn(f"the face-crop cache {folder} cannot be read ({exc}): full frames are read; "
                          f"rebuild it with `{_prepare_line(bundle)}`", stacklevel=3)
        return None
    rows = {rel: i for i, rel in enumerate(entries.rel.tolist())}
    frames = bundle_frames(bundle)
    missing = [rel for rel, _ in frames if rel not in rows]
    if missing:
        if speak:
            warnings.warn(f"the face-crop cache {folder} lacks {len(missing)} of the {len(frames)} frames of this "
                          f"job (first: {missing[0]}): full frames are read; add them with "
                          f"`{_prepare_line(bundle)}`", stacklevel=3)
        return None
    stale = _stale(folder, entries, rows, frames) if frames else []
    if stale:
        if speak:
            warnings.warn(f"the face-crop cache {folder} is stale: {len(stale)} of the sampled frames changed "
                          f"since it was prepared (first: {stale[0]}): full frames are read; update it with "
                          f"`{_prepare_line(bundle)}`", stacklevel=3)
        return None
    return CropCache(folder=folder, size=int(record.get("size", 0)), rows=rows, entries=entries,
                     root=Path(bundle.root))
