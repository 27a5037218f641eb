"""A weights reference, parsed once: what ``--weights`` (or ``create(weights=...)``) names.

:func:`parse_weights` turns the text into one :class:`WeightsRef`, which :func:`clefctl.model.create`,
:meth:`clefctl.workspace.Workspace.resolve_model` and :func:`clefctl.weights.verify.verify` act on
instead of each testing the forms in turn. The forms, in the order they are recognised:

* ``random`` (or nothing): a randomly initialised model;
* ``hf-hub:ORG/NAME[@REVISION]``: a model on the Hugging Face Hub (:func:`clefctl.weights.hub.snapshot`);
* a folder in open_clip's Hub layout (``open_clip_config.json``): an exported model;
* another existing folder (a training run's folder, for the workspace);
* a file, or a path that looks like one (a separator or a weights suffix) even when it is missing;
* a bare name: a registry name (:mod:`clefctl.weights.registry`, which then says its file and the
  architecture it implies) or else an open_clip pretrained tag (or, for the workspace, a run name).

Parsing reads only the file system (no network, no registry table, no torch).

Example::

    >>> from clefctl.weights.reference import parse_weights
    >>> parse_weights("hf-hub:my-lab/clef-bp4d-au").repo
    'my-lab/clef-bp4d-au'
    >>> parse_weights("laion2b_s34b_b88k").kind
    'name'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clefctl.errors import ClefError

HF_PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
KINDS = ("random", "hub", "folder", "dir", "file", "name")


def is_model_folder(path) -> bool:
    """True for a folder holding ``open_clip_config.json`` (an exported or Hub model)."""
    try:
        p = Path(path).expanduser()
        return p.is_dir() and (p / CONFIG_NAME).is_file()
    except (TypeError, OSError):
        return False


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> (repo id, revision or None)."""
    body = ref[len(HF_PREFIX):] if ref.startswith(HF_PREFIX) else ref
    repo, _, rev = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ClefError(f"not a Hugging Face Hub reference: {ref!r}",
                        hint="write hf-hub:ORG/NAME (or hf-hub:ORG/NAME@REVISION)")
    return repo, rev or None


@dataclass(frozen=True)
class WeightsRef:
    """One parsed reference. ``kind`` is one of :data:`KINDS`; ``path`` the expanded path of a
    ``folder``, ``dir`` or ``file`` (a ``file`` may not exist: loading it says so); ``repo`` and
    ``revision`` those of a ``hub`` model; ``text`` the reference as given. The architecture a
    reference implies is read where it is written: a registry entry's ``arch``, a clefctl
    checkpoint's or model folder's own metadata (a plain file fits the caller's architecture)."""

    text: str
    kind: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None

    @property
    def exists(self) -> bool:
        """Whether the reference names something on disk (a folder or an existing file)."""
        return self.path is not None and self.path.exists()

    @property
    def hub_name(self) -> str:
        """``ORG/NAME[@REVISION]`` of a ``hub`` reference."""
        return self.text[len(HF_PREFIX):]


def parse_weights(ref) -> WeightsRef:
    """The :class:`WeightsRef` of ``ref`` (a string, a path, or None for ``random``); see the module
    docstring for the forms. A malformed ``hf-hub:`` reference is a ClefError."""
    if ref is None or str(ref) in ("", "random"):
        return WeightsRef("random" if ref is None else str(ref), "random")
    text = str(ref)
    if text.startswith(HF_PREFIX):
        repo, rev = parse_ref(text)
        return WeightsRef(text, "hub", repo=repo, revision=rev)
    path = Path(text).expanduser()
    if is_model_folder(path):
        return WeightsRef(text, "folder", path)
    if path.is_dir():
        return WeightsRef(text, "dir", path)
    if path.exists() or any(sep in text for sep in ("/", "\\")) or text.endswith(WEIGHT_SUFFIXES):
        return WeightsRef(text, "file", path)
    return WeightsRef(text, "name")
