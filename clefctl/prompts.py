"""Text prompts: the prompt-set YAML files, their validation, rendering and content hash.

Owns ``load_prompts(name_or_path) -> PromptSet`` and ``available_prompt_sets()``. A prompt set
holds, per class (AU or expression), a label name and several semantic descriptions, plus (for
BP4D / BP4D+) descriptions of the recording activities, and the templates that turn them into
sentences (paper, section 3.3: one fixed template for label names; one template drawn at random
per mini-batch for descriptions and activities). The schema is in docs/architecture.md.

Every validation message names the file and the line (from the YAML node marks). Random choices
take either a ``random.Random`` or a ``numpy.random.Generator`` so seeded runs are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from clefctl.errors import ClefError
from clefctl.paths import write_text_atomic

TASKS = ("au", "fer", "activity")
TOP_KEYS = ("dataset", "task", "templates", "classes", "activities")
TEMPLATE_KEYS = ("name", "description", "activity")
CLASS_KEYS = ("id", "name", "descriptions")
ACTIVITY_KEYS = ("id", "descriptions")
# template kind -> the one placeholder its templates must contain
#: The class texts a prompt set gives (:func:`class_texts`): label names, descriptions, or both (the template
#: ensemble); ``rescore``, ``predict --prompt-mode`` and the explorer take these.
RESCORE_MODES = ("names", "descriptions", "ensemble")
PLACEHOLDERS = {"name": "name", "description": "description", "activity": "activity"}

_NULL_TAG = "tag:yaml.org,2002:null"
_SHIPPED_PACKAGE = "clefctl.prompts_data"
_REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


# ----------------------------------------------------------------------------- data classes

@dataclass(frozen=True)
class PromptClass:
    """One class: its id (``AU12`` or ``happiness``), label name and descriptions."""
    id: str
    name: str
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class PromptActivity:
    """One recording activity (``T1``...) and its descriptions."""
    id: str
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt set. Immutable; build one with :func:`load_prompts`.

    Random methods take ``rng``: a ``random.Random`` or a ``numpy.random.Generator``. Draws
    happen in a fixed order (template first, then classes / activities in order), so the same
    seeded generator always gives the same texts.
    """
    dataset: str
    task: str
    templates: dict[str, tuple[str, ...]]
    classes: tuple[PromptClass, ...]
    activities: tuple[PromptActivity, ...] = ()
    source: str | None = field(default=None, compare=False)

    def __hash__(self) -> int:
        return hash(self.hash)

    # -- lookups
    @property
    def class_ids(self) -> list[str]:
        return [c.id for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def activity_ids(self) -> list[str]:
        return [a.id for a in self.activities]

    def activity(self, activity_id: str) -> PromptActivity:
        for a in self.activities:
            if a.id == activity_id:
                return a
        raise self._error(f"prompt set '{self.dataset}' has no activity '{activity_id}'; "
                          f"it has: {', '.join(self.activity_ids) or 'none'}",
                          "use a prompt set written for this data set, or add the activity")

    # -- rendering
    def name_texts(self, template: str | None = None) -> list[str]:
        """One text per class: the label name in the name template (the first one by default)."""
        self._need_classes()
        tpl = template if template is not None else self.templates["name"][0]
        _check_template_text(tpl, "name")
        return [tpl.format(name=c.name) for c in self.classes]

    def description_texts(self, rng, template: str | None = None) -> list[str]:
        """One text per class: one random template for the whole batch (unless ``template`` is
        given), then one random description per class, in class order."""
        self._need_classes()
        if template is None:
            template = _pick(rng, self.templates["description"])
        else:
            _check_template_text(template, "description")
        return [template.format(description=_pick(rng, c.descriptions)) for c in self.classes]

    def activity_texts(self, activity_ids: Sequence[str], rng,
                       template: str | None = None) -> list[str]:
        """One text per entry of ``activity_ids`` (e.g. each sample's task in a batch).

        One random template for the batch, then one random description per distinct activity
        (drawn in first-seen order), so samples of the same activity get the same text.
        """
        if not self.activities:
            raise self._error(f"prompt set '{self.dataset}' has no activities",
                              "activity pre-training needs a prompt set with an 'activities' list")
        by_id = {a.id: a for a in self.activities}
        for aid in activity_ids:
            if aid not in by_id:
                self.activity(str(aid))  # raises with the list of known ids
        if template is None:
            template = _pick(rng, self.templates["activity"])
        else:
            _check_template_text(template, "activity")
        chosen: dict[str, str] = {}
        for aid in activity_ids:
            if aid not in chosen:
                chosen[aid] = template.format(activity=_pick(rng, by_id[aid].descriptions))
        return [chosen[aid] for aid in activity_ids]

    def description_groups(self) -> list[list[str]]:
        """Per class (in class order): every description with every description template."""
        self._need_classes()
        return [[t.format(description=d) for d in c.descriptions
                 for t in self.templates["description"]] for c in self.classes]

    def all_description_texts(self) -> list[str]:
        """Every class's every description with every template (class by class, for template
        ensembles); :meth:`description_groups` gives the same texts grouped per class."""
        return [text for group in self.description_groups() for text in group]

    # -- derived sets and persistence
    def subset(self, class_ids: Iterable[str]) -> "PromptSet":
        """The same prompt set restricted to (and ordered as) ``class_ids``."""
        ids = list(class_ids)
        by_id = {c.id: c for c in self.classes}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise self._error(f"prompt set '{self.dataset}' has no class {', '.join(map(str, missing))}; "
                              f"it has: {', '.join(self.class_ids)}",
                              "choose a prompt set that matches the data set's classes")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise self._error(f"class ids given twice: {', '.join(dupes)}")
        return PromptSet(self.dataset, self.task, self.templates,
                         tuple(by_id[i] for i in ids), self.activities, self.source)

    def to_dict(self) -> dict[str, Any]:
        """The content in schema form (plain dicts, lists and strings)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "task": self.task,
            "templates": {k: list(self.templates[k]) for k in TEMPLATE_KEYS if k in self.templates},
        }
        if self.classes:
            out["classes"] = [{"id": c.id, "name": c.name, "descriptions": list(c.descriptions)}
                              for c in self.classes]
        if self.activities:
            out["activities"] = [{"id": a.id, "descriptions": list(a.descriptions)}
                                 for a in self.activities]
        return out

    @property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of the content; the source path is not part of it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_yaml(self) -> str:
        header = f"# prompt set '{self.dataset}' written by clefctl; sha256 {self.hash}\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True,
                                       width=100, default_flow_style=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as YAML (atomically) so that ``load_prompts(path)`` gives it back."""
        return write_text_atomic(path, self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "PromptSet":
        """Validate a dict in schema form (e.g. from a run folder) into a PromptSet."""
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return parse_prompts(text, source or "<dict>")

    # -- helpers
    def _need_classes(self) -> None:
        if not self.classes:
            raise self._error(f"prompt set '{self.dataset}' has no classes",
                              "use a prompt set with a 'classes' list")

    def _error(self, message: str, hint: str | None = None) -> ClefError:
        return ClefError(message, path=self.source, hint=hint)


def _pick(rng, items: Sequence[str]) -> str:
    """One item drawn with ``rng`` (``random.Random`` or ``numpy.random.Generator``)."""
    n = len(items)
    if isinstance(rng, random.Random):
        return items[rng.randrange(n)]
    integers = getattr(rng, "integers", None)
    if integers is not None:  # numpy.random.Generator
        return items[int(integers(n))]
    raise TypeError(f"rng must be a random.Random or a numpy.random.Generator, not {type(rng).__name__}")


def _template_fields(template: str) -> list[str]:
    """Placeholder names in a str.format template; raises ValueError for broken braces."""
    names = []
    for _literal, fname, _spec, _conv in string.Formatter().parse(template):
        if fname is not None:
            names.append(fname)
    return names


def _template_problem(template: str, kind: str) -> str | None:
    want = PLACEHOLDERS[kind]
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        return f"template {template!r} has unbalanced braces ({exc}); write literal braces as {{{{ }}}}"
    unknown = sorted({f for f in fields if f != want})
    if unknown:
        shown = ", ".join("{" + f + "}" for f in unknown)
        return f"{kind} template {template!r} has unknown placeholder {shown}; only {{{want}}} is allowed"
    if want not in fields:
        return f"{kind} template {template!r} lacks the placeholder {{{want}}}"
    return None


def _check_template_text(template: str, kind: str) -> None:
    problem = _template_problem(template, kind)
    if problem:
        raise ClefError(problem)


# ----------------------------------------------------------------------------- validation

class _Validator:
    """Walks the composed YAML node tree, keeping line numbers for every message."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, node_or_line, message: str, hint: str | None = None):
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        raise ClefError(message, path=self.source, line=line, hint=hint)

    def mapping(self, node, what: str, allowed: Sequence[str], required: Sequence[str],
                key_line: int | None = None) -> dict[str, tuple[Any, Any]]:
        """``{key: (key_node, value_node)}``; checks type, unknown, duplicate and missing keys."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(key_line or node, f"{what} must be a mapping of keys ({', '.join(allowed)})")
        out: dict[str, tuple[Any, Any]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.fail(knode, f"{what}: keys must be plain words")
            key = knode.value
            if key not in allowed:
                self.fail(knode, f"unknown key '{key}' in {what}; allowed: {', '.join(allowed)}")
            if key in out:
                self.fail(knode, f"key '{key}' given twice in {what}")
            out[key] = (knode, vnode)
        for key in required:
            if key not in out:
                self.fail(node, f"{what} lacks the required key '{key}'")
        return out

    def text(self, knode, vnode, what: str) -> str:
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag != _NULL_TAG:
            value = " ".join(vnode.value.split())
            if not value:
                self.fail(vnode, f"{what} is empty")
            return value
        if isinstance(vnode, yaml.ScalarNode):  # null
            self.fail(knode, f"{what} is empty")
        self.fail(vnode, f"{what} must be a text, not a {'list' if isinstance(vnode, yaml.SequenceNode) else 'mapping'}")

    def texts(self, knode, vnode, what: str) -> tuple[list[str], list[Any]]:
        """A non-empty list of non-empty texts; returns the texts and their nodes."""
        nodes = self._nonempty_list(knode, vnode, what, "text", " of texts")
        return [self.text(item, item, f"{what} item {i + 1}") for i, item in enumerate(nodes)], nodes

    def items(self, knode, vnode, what: str) -> list[Any]:
        return self._nonempty_list(knode, vnode, f"'{what}'", "entry", "")

    def _nonempty_list(self, knode, vnode, what: str, noun: str, of: str) -> list[Any]:
        """The nodes of a YAML list that must hold at least one ``noun``; ``what`` names it in messages."""
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag == _NULL_TAG:
            self.fail(knode, f"{what} is empty; give a list with at least one {noun}")
        if not isinstance(vnode, yaml.SequenceNode):
            self.fail(vnode, f"{what} must be a list{of}")
        if not vnode.value:
            self.fail(vnode, f"{what} is an empty list; give at least one {noun}")
        return list(vnode.value)

    def entries(self, knode, vnode, what: str, allowed: Sequence[str], with_name: bool):
        """Class or activity entries: ids unique, texts non-empty."""
        out = []
        seen: dict[str, int] = {}
        for i, item in enumerate(self.items(knode, vnode, what)):
            label = f"{what} entry {i + 1}"
            m = self.mapping(item, label, allowed, allowed)
            eid = self.text(*m["id"], f"{label}: 'id'")
            if eid in seen:
                self.fail(m["id"][1], f"{label}: id '{eid}' is already used on line {seen[eid]}",
                          "every id must be unique")
            seen[eid] = m["id"][1].start_mark.line + 1
            label = f"{what} '{eid}'"
            descriptions, _ = self.texts(*m["descriptions"], f"{label}: 'descriptions'")
            if with_name:
                name = self.text(*m["name"], f"{label}: 'name'")
                out.append(PromptClass(eid, name, tuple(descriptions)))
            else:
                out.append(PromptActivity(eid, tuple(descriptions)))
        return out

    def run(self, root) -> PromptSet:
        if root is None:
            self.fail(1, "the prompt file is empty; it needs dataset, task, templates and classes")
        top = self.mapping(root, "the prompt file", TOP_KEYS, ("dataset", "task", "templates"))
        dataset = self.text(*top["dataset"], "'dataset'")
        task = self.text(*top["task"], "'task'")
        if task not in TASKS:
            self.fail(top["task"][1], f"task '{task}' is not one of {', '.join(TASKS)}")
        if task in ("au", "fer") and "classes" not in top:
            self.fail(root, f"the prompt file lacks the required key 'classes' (task {task})")
        if task == "activity" and "activities" not in top:
            self.fail(root, "the prompt file lacks the required key 'activities' (task activity)")
        classes = (self.entries(*top["classes"], "classes", CLASS_KEYS, True)
                   if "classes" in top else [])
        activities = (self.entries(*top["activities"], "activities", ACTIVITY_KEYS, False)
                      if "activities" in top else [])

        tknode, tvnode = top["templates"]
        need = (["name", "description"] if classes else []) + (["activity"] if activities else [])
        tmap = self.mapping(tvnode, "'templates'", TEMPLATE_KEYS, need,
                            key_line=tknode.start_mark.line + 1
                            if isinstance(tvnode, yaml.ScalarNode) else None)
        templates: dict[str, tuple[str, ...]] = {}
        for kind in TEMPLATE_KEYS:
            if kind not in tmap:
                continue
            values, nodes = self.texts(*tmap[kind], f"templates '{kind}'")
            for value, node in zip(values, nodes):
                problem = _template_problem(value, kind)
                if problem:
                    self.fail(node, problem)
            templates[kind] = tuple(values)
        return PromptSet(dataset, task, templates, tuple(classes), tuple(activities), self.source)


def parse_prompts(text: str, source: str = "<string>") -> PromptSet:
    """Validate YAML text into a PromptSet; ``source`` names the file in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ClefError(f"YAML syntax error: {what}", path=source, line=line,
                        hint="check indentation, colons and quotes") from None
    except yaml.YAMLError as exc:
        raise ClefError(f"YAML syntax error: {exc}", path=source) from None
    return _Validator(source).run(root)


# ----------------------------------------------------------------------------- loading

def _shipped_dir():
    """The folder (a Traversable) with the shipped prompt YAMLs."""
    try:
        from importlib.resources import files
        folder = files(_SHIPPED_PACKAGE)
        if any(p.name.endswith(".yaml") for p in folder.iterdir()):
            return folder
    except (ImportError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    return _REPO_PROMPTS


def prompts_location() -> str:
    """Where the shipped prompt YAMLs are read from (for ``clefctl info``)."""
    return str(_shipped_dir())


def available_prompt_sets() -> list[str]:
    """Names of the shipped prompt sets, sorted (``bp4d``, ``rafdb``, ...)."""
    folder = _shipped_dir()
    try:
        return sorted(p.name[:-5] for p in folder.iterdir()
                      if p.name.endswith(".yaml") and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or value.endswith((".yaml", ".yml"))
            or value.startswith((".", "~")))


def load_prompts(name_or_path: str | os.PathLike) -> PromptSet:
    """A shipped prompt set by name (``"bp4d"``) or a user's YAML file by path."""
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        return _load_file(Path(name_or_path).expanduser())
    name = str(name_or_path)
    shipped = available_prompt_sets()
    if name in shipped:
        resource = _shipped_dir() / f"{name}.yaml"
        return parse_prompts(resource.read_text(encoding="utf-8"), str(resource))
    if Path(name).is_file():
        return _load_file(Path(name))
    raise ClefError(f"unknown prompt set '{name}'; shipped: {', '.join(shipped) or 'none'}",
                    hint="or give the path of your own prompt YAML")


def class_texts(prompts: PromptSet, mode: str, all_name_templates: bool = False) -> tuple[list[str], list[int]]:
    """The texts a mode (:data:`RESCORE_MODES`) encodes and, per text, its class index (re-scoring, search
    classes, the texts an index is tuned on)."""
    if mode not in RESCORE_MODES:
        raise ClefError(f"unknown re-scoring mode {mode!r}", hint="use names, descriptions or ensemble")
    texts: list[str] = []
    owner: list[int] = []
    if mode in ("names", "ensemble"):
        templates = prompts.templates["name"] if (all_name_templates or mode == "ensemble") \
            else prompts.templates["name"][:1]
        for tpl in templates:
            for c, t in enumerate(prompts.name_texts(tpl)):
                texts.append(t)
                owner.append(c)
    if mode in ("descriptions", "ensemble"):
        for c, group in enumerate(prompts.description_groups()):
            texts.extend(group)
            owner.extend([c] * len(group))
    return texts, owner


def _load_file(path: Path) -> PromptSet:
    if not path.exists():
        raise ClefError("prompt file not found", path=str(path),
                        hint=f"give an existing YAML file or one of: {', '.join(available_prompt_sets())}")
    if path.is_dir():
        raise ClefError("expected a prompt YAML file, got a folder", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # the line and the byte, as label files say it (records.open_text)
        from clefctl.data.records import _SAVE_AS_UTF8, _first_problem

        line, problem = _first_problem(path, "utf-8")
        raise ClefError(f"the prompt file is {problem}, at byte offset {exc.start}", path=str(path), line=line,
                        hint=_SAVE_AS_UTF8) from None
    except OSError as exc:
        raise ClefError(f"cannot read the prompt file: {exc.strerror}", path=str(path)) from None
    return parse_prompts(text, str(path))
