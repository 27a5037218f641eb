"""Options declared once: a command's options come from its options type.

A library options dataclass (``PredictOptions``, ``EvaluateOptions``, ...) declares each option once,
as a field: its name, its default, and in ``metadata`` its help and what the command line checks::

    every: int = field(default=1, metadata={"help": "Video: keep every N-th frame.", "min": 1})

The library needs no click for that: the metadata is a plain dict. Here it becomes a click option:

- ``help`` (a field with no help is not an option, unless it is one of :data:`SHARED`'s names);
- ``flag`` (default ``--field-name``; ``"--crop/--no-crop"`` for a switch; ``flags`` for several names);
- the type, from the annotation (``bool`` a flag, ``int``, ``float`` (always :class:`Finite`), a tuple
  ``multiple``, else text) or ``type``, with ``min`` / ``max`` / ``min_open`` / ``max_open``,
  ``choices``, ``size`` (:class:`ByteSize`), ``path`` (``click.Path``'s arguments), ``split`` (a
  separator: ``"AU1,AU4"`` -> a tuple);
- ``negate``: a field true by default set false by its ``--no-...`` flag;
- ``envvar``, ``show_default``, ``metavar``, ``flag_value``, ``required``.

:data:`SHARED` holds the options many commands take (model, store, data, face, workspace), each
declared once; a field of that name takes the shared declaration, and its own metadata (a help
that says something different) overrides it. ``metadata={"shared": "store_weights"}`` picks a
variant. :func:`shared_options` adds shared options to a command that has no options type.

:func:`options_command` makes the command (its options are built on first use, so listing the
commands imports no library module); :func:`build` turns the parsed values back into the type.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import click

from clefctl.commands.types import ByteSize, Finite

DETECTOR_CHOICES = ("auto", "yunet", "haar")   # clefctl.data.faces.choice.DETECTORS (tested equal)
INDEX_CHOICES = ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "ivf-ondisk")
TRUST_HELP = ("Allow full unpickling of a trusted weights or checkpoint file (only for files you trust; never "
              "taken from a config file).")

# name -> declaration of the options several commands take. "default" is used by shared_options only;
# an options type's own default always wins.
SHARED: dict[str, dict[str, Any]] = {
    # model
    "weights": {"help": "Model weights: a file, registry name such as farl-ep64 (clefctl weights list), run, "
                        "exported folder, hf-hub:ORG/NAME or open_clip tag ('random' = untrained)."},
    "arch": {"help": "Architecture (a clefctl checkpoint carries its own)."},
    "trust_checkpoint": {"help": TRUST_HELP, "type": "bool"},
    "device": {"help": "cpu, cuda, cuda:1 or auto (default: cuda if available)."},
    # the model that made a store (query, rescore, serve)
    "store_weights": {"flag": "--weights", "help": "Model weights (default: those of the embed run)."},
    "store_arch": {"flag": "--arch", "help": "Architecture (default: that of the embed run)."},
    # store
    "store": {"help": "Store file (default: latest embed run).", "path": {"dir_okay": False}},
    "run": {"help": "Embed run name or folder."},
    # data
    "dataset": {"help": "Registered data set (clefctl data list)."},
    "dataset_root": {"help": "This data set's own folder (or manifest CSV), overriding the data root.",
                     "path": {}},
    "data_root": {"help": "Folder holding the data sets: BP4D/, DISFA/, RAF-DB/, ... (default $CLEF_DATA_ROOT "
                          "or ./data).", "envvar": "CLEF_DATA_ROOT", "path": {"file_okay": False}},
    # face
    "detector": {"help": "Face detector: yunet (CNN with 5 landmarks, aligned crops; `clefctl weights get "
                         "yunet`), haar (OpenCV's cascades, offline fallback), auto (yunet when its file is "
                         "there or can be fetched, else haar with a warning).",
                 "choices": DETECTOR_CHOICES, "default": "auto"},
    "min_confidence": {"help": "A detection scoring below this is not a face (YuNet's score; default 0.6). "
                               "See docs/predict.md.", "type": "float", "min": 0, "max": 1, "max_open": True},
    # runs
    "workspace": {"help": "Run folders (default ./clef_runs).", "envvar": "CLEF_WORKSPACE",
                  "path": {"file_okay": False}},
    "crop_cache": {"help": "Read the full frames even when a face-crop cache is ready (clefctl data prepare).",
                   "negate": True, "type": "bool"},
}
MODEL = ("weights", "arch", "trust_checkpoint", "device")
STORE = ("store", "run")
DATA = ("dataset", "dataset_root", "data_root")
FACE = ("detector", "min_confidence")


def _kind(annotation: Any, spec: dict) -> str:
    """bool, int, float, multiple or str, from the metadata's ``type`` or the field's annotation."""
    if "type" in spec:
        return spec["type"]
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" | None", "").replace("Optional[", "").strip()
    for kind, starts in (("bool", ("bool",)), ("int", ("int",)), ("float", ("float",)),
                         ("multiple", ("tuple", "Sequence", "list"))):
        if text.startswith(starts):
            return kind
    return "str"


def _click_type(kind: str, spec: dict):
    if "choices" in spec:
        return click.Choice(list(spec["choices"]))
    if spec.get("size"):
        return ByteSize()
    if "path" in spec:
        return click.Path(**spec["path"])
    bounds = {k: spec[k] for k in ("min", "max", "min_open", "max_open") if k in spec}
    if kind == "int":
        return click.IntRange(**bounds) if bounds else int
    if kind == "float":
        return Finite(**bounds)
    return None


def make_option(name: str, spec: dict, default: Any, annotation: Any = "str") -> click.Option:
    """The click option of one declaration (``name``: the parameter, the options type's field)."""
    kind = _kind(annotation, spec)
    flags = list(spec.get("flags") or [spec.get("flag") or "--" + name.replace("_", "-")])
    kw: dict[str, Any] = {"help": spec.get("help")}
    for key in ("envvar", "metavar", "flag_value", "required"):
        if key in spec:
            kw[key] = spec[key]
    if kind == "bool" and "/" not in flags[0]:
        if spec.get("negate"):
            flags = [spec.get("flag") or "--no-" + name.replace("_", "-")]
        kw.update(is_flag=True, default=False)
    elif kind == "bool":
        kw.update(default=default)
    elif kind == "multiple":
        kw.update(multiple=True, default=tuple(default or ()))
    else:
        kw.update(type=_click_type(kind, spec), default=default,
                  show_default=spec.get("show_default", default is not None))
        if "flag_value" in spec:
            kw["is_flag"] = False
    return click.Option(flags + [name], **kw)


def option_specs(options_type: type) -> list[tuple[dataclasses.Field, dict]]:
    """The fields of ``options_type`` that are command-line options, each with its declaration."""
    out = []
    for f in dataclasses.fields(options_type):
        own = dict(f.metadata)
        if own.get("cli") is False:
            continue
        base = SHARED.get(own.pop("shared", f.name))
        if "help" not in own and base is None:
            continue
        out.append((f, {**(base or {}), **own}))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def params_of(options_type: type) -> list[click.Option]:
    return [make_option(f.name, spec, _default(f), f.type) for f, spec in option_specs(options_type)]


def build(options_type: type, kw: dict, **given: Any):
    """``options_type`` from the parsed options (taken out of ``kw``; what is left is the command's
    own, such as ``as_json``) and the values ``given`` (arguments, progress, callbacks)."""
    values = {}
    for f, spec in option_specs(options_type):
        if f.name not in kw:
            continue
        v = kw.pop(f.name)
        if spec.get("negate"):
            v = not v
        elif "split" in spec:
            v = tuple(p.strip() for p in v.split(spec["split"]) if p.strip()) if v else None
        elif _kind(f.type, spec) == "multiple":
            v = tuple(v)
        values[f.name] = v
    values.update(given)
    return options_type(**values)


def _resolve(ref: str | type) -> type:
    if isinstance(ref, str):
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)
    return ref


class OptionsCommand(click.Command):
    """A command whose options are its options type's fields (after its arguments, before its own
    options such as ``--json``), built when first asked for."""

    def __init__(self, *args, options: str | type, **kwargs):
        self.options_ref = options
        self._params: list | None = None
        self._own: list = []
        super().__init__(*args, **kwargs)

    @property
    def options_type(self) -> type:
        return _resolve(self.options_ref)

    @property
    def params(self) -> list:
        if self._params is None:
            args = [p for p in self._own if isinstance(p, click.Argument)]
            rest = [p for p in self._own if not isinstance(p, click.Argument)]
            self._params = args + params_of(self.options_type) + rest
        return self._params

    @params.setter
    def params(self, value: list) -> None:
        self._own, self._params = list(value or []), None


def options_command(name: str, options: str | type, **kwargs):
    """``click.command(name)`` whose options come from ``options`` (a type, or ``"module:Type"`` to
    import it only when the command runs or shows its help)."""
    return click.command(name, cls=OptionsCommand, options=options, **kwargs)


def shared_options(*names: str, **defaults: Any):
    """A decorator adding :data:`SHARED` options to a command without an options type
    (``defaults``: per name, where the command's differs from the declaration's)."""
    def deco(f):
        for name in reversed(names):
            spec = SHARED[name]
            if spec.get("negate"):  # the parameter is the flag's own (no_crop_cache), not the field's
                spec = {**spec, "flag": "--no-" + name.replace("_", "-")}
            param = spec.get("flag", "--" + name).lstrip("-").replace("-", "_")
            default = defaults.get(name, spec.get("default"))
            option = make_option(param, spec, default, spec.get("type", "str"))
            if isinstance(f, click.Command):
                f.params.insert(0, option)
            else:  # as click.option does: the command reverses them
                f.__dict__.setdefault("__click_params__", []).append(option)
        return f
    return deco


face_options = shared_options(*FACE)   # --detector, --min-confidence


def json_option(help: str = "Print the result as JSON."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def progress_option(help: str = "No progress bar."):
    return click.option("--no-progress", is_flag=True, help=help)
