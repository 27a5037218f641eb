"""Prompt sets: shipped YAMLs, validation messages with file and line, hash, seeded rendering."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clefctl import prompts as P
from clefctl.errors import ClefError
from clefctl.prompts import PromptSet, available_prompt_sets, load_prompts, parse_prompts

SHIPPED = ["affectnet7", "affectnet8", "bp4d", "bp4dplus", "disfa", "ferplus", "rafdb",
           "synthetic-au", "synthetic-fer"]

BP4D_AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
ORDERS = {
    "bp4d": BP4D_AUS,
    "bp4dplus": BP4D_AUS,
    "disfa": ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"],
    "synthetic-au": ["AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15",
                     "AU17", "AU23", "AU24", "AU25", "AU26"],
    "rafdb": ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"],
    "synthetic-fer": ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"],
    "affectnet7": ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"],
    "affectnet8": ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger",
                   "contempt"],
    "ferplus": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt"],
}
ACTIVITIES = {
    "bp4d": [f"T{i}" for i in range(1, 9)],
    "bp4dplus": [f"T{i}" for i in range(1, 11)],
    "synthetic-au": [f"T{i}" for i in range(1, 9)],
}
FACS = {"AU1": "inner brow raiser", "AU2": "outer brow raiser", "AU4": "brow lowerer",
        "AU6": "cheek raiser", "AU7": "lid tightener", "AU9": "nose wrinkler",
        "AU10": "upper lip raiser", "AU12": "lip corner puller", "AU14": "dimpler",
        "AU15": "lip corner depressor", "AU17": "chin raiser", "AU23": "lip tightener",
        "AU24": "lip pressor", "AU25": "lips part", "AU26": "jaw drop"}


# ----------------------------------------------------------------------------- shipped sets

def test_available_prompt_sets_lists_the_shipped_files():
    assert available_prompt_sets() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_set_is_complete(name):
    ps = load_prompts(name)
    assert ps.dataset == name
    assert ps.class_ids == ORDERS[name]
    assert ps.task == ("au" if name in ("bp4d", "bp4dplus", "disfa", "synthetic-au") else "fer")
    assert ps.templates["name"] == ("a photo of a person with {name}.",)
    assert 3 <= len(ps.templates["description"]) <= 5
    assert all("{description}" in t for t in ps.templates["description"])
    for c in ps.classes:
        assert len(c.descriptions) >= 3, c.id
        assert len(set(c.descriptions)) == len(c.descriptions), c.id
        assert c.name == (FACS[c.id] if ps.task == "au" else c.id)
    assert ps.activity_ids == ACTIVITIES.get(name, [])
    if ps.activities:
        assert 3 <= len(ps.templates["activity"]) <= 5
        assert all("{activity}" in t for t in ps.templates["activity"])
        assert all(len(a.descriptions) >= 2 for a in ps.activities)
    # CLIP's context is 77 tokens; keep every rendered text far below it.
    texts = ps.name_texts() + ps.all_description_texts() + [
        t.format(activity=d) for a in ps.activities for d in a.descriptions
        for t in ps.templates.get("activity", ())]
    assert max(len(t.split()) for t in texts) <= 40


def test_synthetic_au_activities_mirror_bp4d():
    assert load_prompts("synthetic-au").activities == load_prompts("bp4d").activities


def test_name_texts_use_the_paper_template():
    assert load_prompts("rafdb").name_texts()[3] == "a photo of a person with happiness."
    assert load_prompts("bp4d").name_texts()[6] == "a photo of a person with lip corner puller."


def test_shipped_files_found_without_installed_package(monkeypatch):
    monkeypatch.setattr(P, "_SHIPPED_PACKAGE", "clefctl.no_such_prompts_package")
    assert available_prompt_sets() == SHIPPED
    ps = load_prompts("disfa")
    assert ps.source.endswith("disfa.yaml") and len(ps.classes) == 8


def test_unknown_name_lists_shipped_sets():
    with pytest.raises(ClefError) as err:
        load_prompts("bp5d")
    assert "bp5d" in str(err.value) and "bp4d, bp4dplus" in str(err.value)


def test_missing_path(tmp_path):
    with pytest.raises(ClefError) as err:
        load_prompts(tmp_path / "nope.yaml")
    assert err.value.path == str(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- validation

BASE = """\
# test prompt set
dataset: demo
task: au
templates:
  name: ["a photo of a person with {name}."]
  description:
    - "a face where {description}."
    - "a photo where {description}."
  activity: ["a person who {activity}.", "a photo of someone who {activity}."]
classes:
  - id: AU1
    name: inner brow raiser
    descriptions:
      - "the inner brows go up"
      - "the middle of the forehead wrinkles"
  - id: AU12
    name: lip corner puller
    descriptions: ["the lip corners go up", "a smile"]
activities:
  - id: T1
    descriptions: ["laughs at a joke", "talks and laughs"]
  - id: T2
    descriptions: ["watches a documentary"]
"""


def edit(text: str, changes: dict[int, str | None]) -> str:
    """Replace (str, may hold several lines) or delete (None) 1-based lines."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines, start=1):
        new = changes.get(i, line)
        if new is not None:
            out.append(new)
    return "\n".join(out) + "\n"


def test_base_fixture_is_valid(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(BASE)
    ps = load_prompts(path)
    assert ps.class_ids == ["AU1", "AU12"] and ps.activity_ids == ["T1", "T2"]
    assert ps.source == str(path)


BAD = {
    "syntax": ({12: "    name: inner brow raiser: oops"}, 12, "YAML syntax error"),
    "unknown top key": ({3: "tsk: au"}, 3, "unknown key 'tsk'"),
    "unknown class key": ({13: "    descrption:"}, 13, "allowed: id, name, descriptions"),
    "unknown template key": ({9: '  activities: ["{activity}"]'}, 9, "allowed: name, description, activity"),
    "unknown activity key": ({21: '    name: x'}, 21, "unknown key 'name'"),
    "missing top key": ({2: None}, 2, "required key 'dataset'"),
    "missing class name": ({17: None}, 16, "required key 'name'"),
    "missing class id": ({16: "  - name: lip corner puller", 17: None}, 16, "required key 'id'"),
    "missing description template": ({6: None, 7: None, 8: None}, 5, "required key 'description'"),
    "missing activity template": ({9: None}, 5, "required key 'activity'"),
    "duplicate class id": ({16: "  - id: AU1"}, 16, "already used on line 11"),
    "duplicate activity id": ({22: "  - id: T1"}, 22, "already used on line 20"),
    "duplicate key": ({12: "    name: a\n    name: b"}, 13, "given twice"),
    "empty id": ({16: '  - id: ""'}, 16, "'id' is empty"),
    "empty name": ({12: '    name: ""'}, 12, "'name' is empty"),
    "null name": ({12: "    name:"}, 12, "'name' is empty"),
    "empty description": ({15: '      - "   "'}, 15, "item 2 is empty"),
    "empty description list": ({18: "    descriptions: []"}, 18, "empty list"),
    "null description list": ({18: "    descriptions:"}, 18, "is empty"),
    "empty classes": ({10: "classes: []", 11: None, 12: None, 13: None, 14: None, 15: None,
                       16: None, 17: None, 18: None}, 10, "empty list"),
    "empty template list": ({5: "  name: []"}, 5, "empty list"),
    "description not a text": ({14: "      - [a, b]"}, 14, "must be a text"),
    "template without placeholder": ({8: '    - "a photo of a face."'}, 8, "lacks the placeholder {description}"),
    "template with unknown placeholder": ({8: '    - "{name} where {description}."'}, 8, "unknown placeholder {name}"),
    "name template with wrong placeholder": ({5: '  name: ["a photo of {label}."]'}, 5, "unknown placeholder {label}"),
    "unbalanced braces": ({7: '    - "a face where {description."'}, 7, "unbalanced braces"),
    "bad task": ({3: "task: aus"}, 3, "task 'aus' is not one of au, fer, activity"),
    "activity task without activities": ({3: "task: activity", 19: None, 20: None, 21: None,
                                          22: None, 23: None}, 2, "required key 'activities'"),
    "templates not a mapping": ({4: "templates: [a]", 5: None, 6: None, 7: None, 8: None, 9: None},
                                4, "'templates' must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_error_names_file_and_line(tmp_path, case):
    changes, line, fragment = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(edit(BASE, changes))
    with pytest.raises(ClefError) as err:
        load_prompts(str(path))
    assert err.value.path == str(path)
    assert err.value.line == line, str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert fragment in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ClefError) as err:
        load_prompts(path)
    assert err.value.line == 1 and "empty" in str(err.value)


def test_activity_only_set_needs_no_classes(tmp_path):
    path = tmp_path / "act.yaml"
    path.write_text(edit(BASE, {3: "task: activity", **{i: None for i in range(5, 9)},
                                **{i: None for i in range(10, 19)}}))
    ps = load_prompts(path)
    assert ps.classes == () and ps.activity_ids == ["T1", "T2"]
    with pytest.raises(ClefError):
        ps.name_texts()


# ----------------------------------------------------------------------------- hash, save, subset

REORDERED = """\
# the same content, keys in another order, other comments and spacing
activities:
  - descriptions: ["laughs at a joke", "talks   and laughs"]
    id: T1
  - {id: T2, descriptions: [watches a documentary]}
classes:
  - name: inner brow raiser   # FACS name
    id: AU1
    descriptions: ["the inner brows go up", "the middle of the forehead wrinkles"]
  - descriptions:
      - the lip corners go up
      - a smile
    name: lip corner puller
    id: AU12
task: au
templates:
  activity: ["a person who {activity}.", "a photo of someone who {activity}."]
  description: ["a face where {description}.", "a photo where {description}."]
  name:
    - a photo of a person with {name}.
dataset: demo
"""


def test_hash_ignores_key_order_comments_and_whitespace():
    a = parse_prompts(BASE, "a.yaml")
    b = parse_prompts(REORDERED, "b.yaml")
    assert a.hash == b.hash and len(a.hash) == 64
    assert a == b


def test_hash_changes_with_content():
    base = parse_prompts(BASE).hash
    assert parse_prompts(BASE.replace("a smile", "a big smile")).hash != base
    assert parse_prompts(BASE.replace("a face where", "a face in which")).hash != base
    assert parse_prompts(BASE.replace("watches a documentary", "watches a film")).hash != base
    # class order is content: swapping the two classes changes the hash
    lines = BASE.splitlines()
    swapped = "\n".join(lines[:10] + lines[15:18] + lines[10:15] + lines[18:]) + "\n"
    assert parse_prompts(swapped).class_ids == ["AU12", "AU1"]
    assert parse_prompts(swapped).hash != base


def test_save_and_reload_keeps_hash(tmp_path):
    ps = load_prompts("bp4d")
    out = ps.save(tmp_path / "run" / "prompts.yaml")
    again = load_prompts(out)
    assert again.hash == ps.hash and again == ps
    assert PromptSet.from_dict(ps.to_dict()).hash == ps.hash
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_subset_reorders_and_rejects_unknown_ids():
    ps = load_prompts("affectnet8")
    sub = ps.subset(["happiness", "neutral"])
    assert sub.class_ids == ["happiness", "neutral"]
    assert sub.name_texts() == ["a photo of a person with happiness.",
                                "a photo of a person with neutral."]
    assert sub.hash != ps.hash
    with pytest.raises(ClefError) as err:
        ps.subset(["happiness", "joy"])
    assert "joy" in str(err.value)


# ----------------------------------------------------------------------------- rendering

def test_seeded_description_texts_are_reproducible():
    ps = load_prompts("bp4d")
    for make in (random.Random, np.random.default_rng):
        r1, r2 = make(7), make(7)
        first = [ps.description_texts(r1) for _ in range(5)]
        assert first == [ps.description_texts(r2) for _ in range(5)]
        other = [ps.description_texts(make(8)) for _ in range(5)]
        assert first != other
        for batch in first:
            assert len(batch) == len(ps.classes)
            templates = {t for t in ps.templates["description"]
                         if all(text.startswith(t.split("{")[0]) for text in batch)}
            assert templates  # one template for the whole batch
            for text, c in zip(batch, ps.classes):
                assert any(text == t.format(description=d) for t in templates
                           for d in c.descriptions)


def test_seeded_activity_texts_are_reproducible():
    ps = load_prompts("bp4dplus")
    ids = ["T1", "T10", "T1", "T4", "T10"]
    a = ps.activity_texts(ids, np.random.default_rng(3))
    assert a == ps.activity_texts(ids, np.random.default_rng(3))
    assert a[0] == a[2] and a[1] == a[4] and a[0] != a[1]
    assert ps.activity_texts(ids, random.Random(1)) == ps.activity_texts(ids, random.Random(1))
    with pytest.raises(ClefError) as err:
        ps.activity_texts(["T11"], random.Random(0))
    assert "T11" in str(err.value) and "T10" in str(err.value)
    with pytest.raises(ClefError):
        load_prompts("rafdb").activity_texts(["T1"], random.Random(0))
    with pytest.raises(TypeError):
        ps.description_texts(42)


def test_all_description_texts_cover_every_description_and_template():
    ps = load_prompts("disfa")
    groups = ps.description_groups()
    n_t = len(ps.templates["description"])
    assert [len(g) for g in groups] == [len(c.descriptions) * n_t for c in ps.classes]
    flat = ps.all_description_texts()
    assert flat == [t for g in groups for t in g]
    assert "a photo of a face where the lips are parted and separated from each other." in groups[6]


def test_explicit_template_is_checked():
    ps = parse_prompts(BASE)
    assert ps.name_texts("{name}") == ["inner brow raiser", "lip corner puller"]
    assert ps.description_texts(random.Random(0), template="{description}")[1] in (
        "the lip corners go up", "a smile")
    with pytest.raises(ClefError):
        ps.name_texts("a photo of {description}")
