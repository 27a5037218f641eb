"""Procedural synthetic faces driven by FACS action units, written in the BP4D and RAF-DB layouts.

Owns the embedded default data (``synthetic-au``, ``synthetic-fer``): numpy + Pillow only, no
external assets. Each subject/identity has fixed face parameters drawn from a seed; each image
has AU intensities in [0, 1], each AU drawn as a visible, anatomically placed change; per-frame
nuisances (head rotation, scale, shift, lighting, noise, background) vary independently.
Same seed and sizes -> byte-identical files.

Modules: :mod:`~.stats` (AUs, task and expression statistics, AU -> face parts),
:mod:`~.identity` (subjects, poses, backgrounds), :mod:`~.render` (the renderer, one function
per face part), :mod:`~.layouts` (BP4D and RAF-DB writers), :mod:`~.sidecar` (``synthetic.json``
and :func:`annotated_faces`), :mod:`~.cache` (:func:`ensure` / :func:`generate`),
:mod:`~.sheet` (contact sheets).
"""

from clefctl.data.synthetic.cache import AU_DEFAULTS, FER_DEFAULTS, KINDS, ensure, generate
from clefctl.data.synthetic.identity import Identity, Pose, make_identity
from clefctl.data.synthetic.layouts import FIRST_FRAME, GENERATOR_VERSION, JPEG_QUALITY, au_params, \
    fer_params, subject_names, write_au, write_fer
from clefctl.data.synthetic.render import AU_FRAMING, FER_FRAMING, SUPERSAMPLE, render_face
from clefctl.data.synthetic.sheet import contact_sheet
from clefctl.data.synthetic.sidecar import SIDECAR, AnnotatedFace, annotated_faces, read_sidecar
from clefctl.data.synthetic.stats import AU_IDS, AU_NAMES, BASE_RATE, EXCLUSIVE, \
    EXPRESSION_PROTOTYPES, EXPRESSIONS, OCCURRENCE_THRESHOLD, PARTS, TASK_EMOTIONS, TASK_PROFILES, \
    TASKS, au_regions, au_sequence, expression_aus

__all__ = [
    "AU_DEFAULTS", "AU_FRAMING", "AU_IDS", "AU_NAMES", "AnnotatedFace", "BASE_RATE", "EXCLUSIVE",
    "EXPRESSIONS", "EXPRESSION_PROTOTYPES", "FER_DEFAULTS", "FER_FRAMING", "FIRST_FRAME",
    "GENERATOR_VERSION", "Identity", "JPEG_QUALITY", "KINDS", "OCCURRENCE_THRESHOLD", "PARTS",
    "Pose", "SIDECAR", "SUPERSAMPLE", "TASKS", "TASK_EMOTIONS", "TASK_PROFILES", "annotated_faces",
    "au_params", "au_regions", "au_sequence", "contact_sheet", "ensure", "expression_aus",
    "fer_params", "generate", "make_identity", "read_sidecar", "render_face", "subject_names",
    "write_au", "write_fer",
]
