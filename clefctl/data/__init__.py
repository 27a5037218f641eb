"""Data set registry: names -> adapters, conventional folders under the data root.

``load_dataset("bp4d")`` reads ``<data root>/BP4D`` (``--data-root`` / ``CLEF_DATA_ROOT``,
see :func:`clefctl.paths.data_root`); ``root=`` points at the data set folder itself
(the CLI's ``--dataset-root``). ``manifest`` and ``folder`` always need ``root`` (the CSV
file, the image folder). The synthetic sets are generated on first use by
:mod:`clefctl.data.synthetic` and read with the BP4D / RAF-DB adapters.

Adapters are imported only when a data set is loaded, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from clefctl.errors import ClefError

SYNTHETIC_AUS = (1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23, 24, 25, 26)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    task: str                      # "au" | "fer" | "any" (manifest/folder infer it)
    loader: str                    # "module:function"
    folder: str | None = None      # conventional sub-folder of the data root
    marker: str | None = None      # a file or folder that must exist for "present"
    opts: dict = field(default_factory=dict)
    # what its images are: "frames" (whole camera frames: a face-crop cache pays, clefctl data prepare),
    # "boxes" (a face box per image from the annotations), "aligned" (face crops), "photos" (the user's)
    faces: str = "frames"


_SPECS = [
    DatasetSpec("bp4d", "BP4D-Spontaneous, 41 subjects, 12 AUs, canonical 3 folds (T1-T8)",
                "au", "clefctl.data.bp4d:load", "BP4D", "AUCoding/AU_OCC"),
    DatasetSpec("bp4dplus", "BP4D+, 140 subjects, 12 AUs, generated 4 folds (T1-T10); "
                "mode=pretrain for all frames by task", "au", "clefctl.data.bp4d:load_plus",
                "BP4D+", "AUCoding/AU_OCC"),
    DatasetSpec("disfa", "DISFA, 27 subjects, 8 AUs (intensity >= 2), canonical 3 folds",
                "au", "clefctl.data.disfa:load", "DISFA", "ActionUnit_Labels"),
    DatasetSpec("rafdb", "RAF-DB basic, 7 expressions, official train/test split", "fer",
                "clefctl.data.rafdb:load", "RAF-DB", "EmoLabel/list_patition_label.txt", faces="aligned"),
    DatasetSpec("affectnet7", "AffectNet, 7 expressions (no contempt), training/validation",
                "fer", "clefctl.data.affectnet:load", "AffectNet",
                "Manually_Annotated_file_lists/training.csv", {"classes": 7}, faces="boxes"),
    DatasetSpec("affectnet8", "AffectNet, 8 expressions (with contempt), training/validation",
                "fer", "clefctl.data.affectnet:load", "AffectNet",
                "Manually_Annotated_file_lists/training.csv", {"classes": 8}, faces="boxes"),
    DatasetSpec("ferplus", "FERPlus (FER2013 relabelled), 8 expressions, train/val/test",
                "fer", "clefctl.data.ferplus:load", "FERPlus", "fer2013new.csv", faces="aligned"),
    DatasetSpec("manifest", "your images listed in a CSV (path, subject, label or AU1..); "
                "root = the CSV", "any", "clefctl.data.manifest:load", faces="photos"),
    DatasetSpec("folder", "your images in DIR/<class name>/*.jpg|png; root = the folder",
                "fer", "clefctl.data.folder:load", faces="photos"),
    DatasetSpec("synthetic-au", "procedural AU-driven faces in the BP4D layout, 15 AUs, "
                "generated on first use", "au", "clefctl.data.bp4d:load", faces="aligned"),
    DatasetSpec("synthetic-fer", "procedural expression faces in the RAF-DB layout, "
                "generated on first use", "fer", "clefctl.data.rafdb:load", faces="aligned"),
]
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
# The one alias table: every name a user may type for a registered data set (load_dataset, reports,
# evaluate, prompt sets all go through canonical_name).
ALIASES = {"bp4d+": "bp4dplus", "bp4d-plus": "bp4dplus", "bp4d_plus": "bp4dplus", "raf-db": "rafdb",
           "raf_db": "rafdb", "fer+": "ferplus", "fer_plus": "ferplus", "affectnet-7": "affectnet7",
           "affectnet-8": "affectnet8", "an-7": "affectnet7", "an-8": "affectnet8"}
# How tables and plots name the paper's data sets.
DISPLAY_NAMES = {"bp4d": "BP4D", "disfa": "DISFA", "bp4dplus": "BP4D+", "rafdb": "RAF-DB",
                 "affectnet7": "AffectNet-7", "affectnet8": "AffectNet-8", "ferplus": "FERPlus"}


def canonical_name(name: str) -> str:
    """The registry key for a name a user typed (case-insensitive, aliases such as ``BP4D+``); names
    that are not registered come back lower-cased, for the caller to accept or refuse."""
    key = str(name).strip().lower()
    return ALIASES.get(key, key)

# Options of the adapters used by the synthetic sets; any other option goes to ensure().
_SYNTH_ADAPTER_OPTS = {"synthetic-au": {"aus", "mode", "max_frames", "tasks"},
                       "synthetic-fer": set()}


def available_datasets() -> dict[str, str]:
    """Registered names -> one-line descriptions."""
    return {s.name: s.description for s in _SPECS}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name`` (case-insensitive; a few aliases like ``bp4d+``)."""
    key = canonical_name(name)
    spec = DATASETS.get(key)
    if spec is None:
        raise ClefError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return spec


def expected_folder(name: str, data_root: str | Path | None = None) -> Path | None:
    """Where ``name`` is looked for under the data root (None: needs an explicit root)."""
    from clefctl.paths import data_root as _data_root

    spec = get_spec(name)
    return None if spec.folder is None else _data_root(data_root) / spec.folder


def describe_datasets(data_root: str | Path | None = None) -> list[dict]:
    """One dict per registered data set: name, description, task, folder, status.

    status: "present" (the label file or folder exists), "incomplete" (folder without
    its labels), "missing", "generated" (synthetic, made on first use) or "user path".
    """
    out = []
    for spec in _SPECS:
        folder = expected_folder(spec.name, data_root)
        if spec.name.startswith("synthetic-"):
            status = "generated"
        elif folder is None:
            status = "user path"
        elif (folder / spec.marker).exists():
            status = "present"
        elif folder.is_dir():
            status = "incomplete"
        else:
            status = "missing"
        out.append({"name": spec.name, "description": spec.description, "task": spec.task,
                    "folder": None if folder is None else str(folder), "status": status,
                    "present": status in ("present", "generated"), "faces": spec.faces,
                    "crop_caches": _crop_caches(folder) if status == "present" and spec.faces == "frames" else []})
    return out


def _crop_caches(folder: Path) -> list[dict]:
    """The face-crop caches of a data set folder: size, whether complete, where."""
    from clefctl.data.crops.layout import caches_of

    return [{"size": int(key["size"]), "complete": (f / "complete.json").is_file(), "folder": str(f)}
            for f, key in caches_of(folder)]


def _call(target: str, root, **opts):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)(root, **opts)


def load_dataset(name: str, root: str | Path | None = None,
                 data_root: str | Path | None = None, **opts):
    """Load a registered data set as a :class:`clefctl.data.records.DatasetBundle`.

    ``root`` overrides the conventional folder ``<data root>/<folder>``; ``opts`` go to
    the adapter (e.g. ``aus=[1, 2]``, ``mode="pretrain"``, ``max_frames=480000``,
    ``classes=[...]`` for a manifest). For the synthetic sets, options the adapter does
    not take are passed to ``clefctl.data.synthetic.ensure`` (size options). Images the
    label files list but the disk lacks are left out with a warning ("5 listed images missing
    on disk (first: ...)"); ``bundle.missing`` lists them.
    """
    spec = get_spec(name)
    if spec.name.startswith("synthetic-"):
        bundle = _load_synthetic(spec, root, opts)
    else:
        if root is None:
            root = expected_folder(spec.name, data_root)
        if root is None:
            bundle = _call(spec.loader, None, **opts)
        else:
            bundle = _call(spec.loader, Path(root).expanduser(), **{**spec.opts, **opts})
    note = bundle.missing_note()
    if note:  # one line on stderr through the CLI; the paths are in bundle.missing
        warnings.warn(note, stacklevel=2)
    return bundle


def _load_synthetic(spec: DatasetSpec, root, opts: dict):
    from clefctl.data import synthetic  # written separately; imported only when needed

    adapter_keys = _SYNTH_ADAPTER_OPTS[spec.name]
    adapter_opts = {k: v for k, v in opts.items() if k in adapter_keys}
    size_opts = {k: v for k, v in opts.items() if k not in adapter_keys}
    folder = synthetic.ensure(spec.name, root=None if root is None else Path(root),
                              **size_opts)
    if spec.name == "synthetic-au":
        adapter_opts.setdefault("aus", list(SYNTHETIC_AUS))
        adapter_opts.setdefault("tasks", None)
        return _call(spec.loader, Path(folder), name="synthetic-au", prompts="synthetic-au",
                     label="synthetic-au", folder="synthetic-au", use_canonical=False,
                     **adapter_opts)
    return _call(spec.loader, Path(folder), name="synthetic-fer", prompts="synthetic-fer",
                 label="synthetic-fer", folder="synthetic-fer", **adapter_opts)


__all__ = ["DATASETS", "DatasetSpec", "available_datasets", "describe_datasets",
           "expected_folder", "get_spec", "load_dataset", "SYNTHETIC_AUS"]
