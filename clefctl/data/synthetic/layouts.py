"""Writers of the two layouts: synthetic AU frames as BP4D, synthetic expressions as RAF-DB.

* :func:`write_au`: ``AUCoding/AU_OCC/{subject}_{task}.csv`` (header ``0`` then the AU numbers of
  AU_IDS, integer 0/1 values) and frames ``{subject}/{task}/{frame:04d}.jpg``; frame numbers
  start at :data:`FIRST_FRAME` (1000) and count up by one per frame in each task.
* :func:`write_fer`: ``EmoLabel/list_patition_label.txt`` with ``train_00001.jpg 4`` lines
  (labels 1-7 = EXPRESSIONS), images ``Image/aligned/{stem}_aligned.jpg``. Test images come from
  identities never used for training; name numbers are assigned in shuffled order.

Both write the ``synthetic.json`` sidecar last. Every job seeds its own generator from the set's
seed, so the files do not depend on the number of worker processes.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clefctl.data.synthetic.identity import Identity, Pose, background, make_identity, \
    pose_sequence, random_pose
from clefctl.data.synthetic.render import AU_FRAMING, FER_FRAMING, SUPERSAMPLE, render_face
from clefctl.data.synthetic.sidecar import write_sidecar, write_text
from clefctl.data.synthetic.stats import AU_IDS, AU_NAMES, BASE_RATE, EXPRESSION_PROTOTYPES, \
    EXPRESSIONS, OCCURRENCE_THRESHOLD, PARTS, TASK_EMOTIONS, TASK_PROFILES, TASKS, au_regions, \
    au_sequence, expression_aus
from clefctl.errors import ClefError

GENERATOR_VERSION = 1
FIRST_FRAME = 1000
JPEG_QUALITY = 92

_SALT_AU_IDENTITY = 11
_SALT_FER_IDENTITY = 12
_SALT_SEQUENCE = 21
_SALT_FER = 31


# --------------------------------------------------------------------------------------------
# parameters

def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ClefError(f"{name} must be an integer, got {value!r}") from None
    exact = isinstance(value, str) or v == value
    if not exact or v < lo or (hi is not None and v > hi):
        rng_txt = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ClefError(f"{name} must be an integer {rng_txt}, got {value!r}")
    return v


def au_params(subjects=12, tasks=8, frames_per_task=24, size=128, seed=0) -> dict[str, Any]:
    """Validated, normalised parameters of a synthetic-au set (as stored in the sidecar)."""
    return {"subjects": _check_int("subjects", subjects, 2, 999),
            "tasks": _check_int("tasks", tasks, 1, len(TASKS)),
            "frames_per_task": _check_int("frames_per_task", frames_per_task, 1, 9000),
            "size": _check_int("size", size, 32, 1024),
            "seed": _check_int("seed", seed, 0)}


def fer_params(subjects=40, images_per_class=200, size=100, seed=0,
               test_fraction=0.2) -> dict[str, Any]:
    """Validated, normalised parameters of a synthetic-fer set (as stored in the sidecar)."""
    out = {"subjects": _check_int("subjects", subjects, 1, 999),
           "images_per_class": _check_int("images_per_class", images_per_class, 1, 99999),
           "size": _check_int("size", size, 32, 1024),
           "seed": _check_int("seed", seed, 0)}
    try:
        tf = float(test_fraction)
    except (TypeError, ValueError):
        raise ClefError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}") \
            from None
    if not 0.0 <= tf < 1.0:
        raise ClefError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if tf > 0 and out["subjects"] < 2:
        raise ClefError("synthetic-fer needs at least 2 subjects for a subject-disjoint test split "
                        "(raise subjects or set test_fraction=0)")
    out["test_fraction"] = tf
    return out


# --------------------------------------------------------------------------------------------
# identities, entries, jobs

def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def subject_names(n: int) -> list[str]:
    """BP4D-style names, half female then half male: F001.. then M001.."""
    nf = (n + 1) // 2
    return [f"F{i:03d}" for i in range(1, nf + 1)] + [f"M{i:03d}" for i in range(1, n - nf + 1)]


def _identities(n: int, seed: int, salt: int) -> dict[str, Identity]:
    return {name: make_identity(name, _rng(seed, salt, i))
            for i, name in enumerate(subject_names(n))}


def _au_dict(vec) -> dict[str, float]:
    return {f"AU{a}": round(float(v), 3) for a, v in zip(AU_IDS, vec)}


def _pose_dict(p: Pose) -> dict[str, float]:
    return {"angle": round(p.angle, 2), "scale": round(p.scale, 3),
            "dx": round(p.dx, 4), "dy": round(p.dy, 4)}


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def _au_job(args) -> tuple[str, str, np.ndarray, list[dict]]:
    """Render one subject's task: write its frames, return CSV rows and sidecar entries."""
    root, identity, si, ti, n_frames, size, seed = args
    task = TASKS[ti]
    rng = _rng(seed, _SALT_SEQUENCE, si, ti)
    propensity = float(_rng(seed, _SALT_SEQUENCE, si, 99).uniform(0.75, 1.25))
    intens = au_sequence(task, n_frames, rng, propensity)
    poses = pose_sequence(rng, n_frames, 4.0)
    bg = background(rng, size * SUPERSAMPLE)
    entries = []
    for k in range(n_frames):
        frame = FIRST_FRAME + k
        rel = f"{identity.name}/{task}/{frame:04d}.jpg"
        img, boxes = render_face(identity, intens[k], poses[k], size,
                                 seed=int(rng.integers(2 ** 31)), background=bg, **AU_FRAMING)
        _save_jpeg(img, Path(root) / rel)
        entries.append({"path": rel, "subject": identity.name, "identity": identity.name,
                        "task": task, "frame": frame, "au_intensity": _au_dict(intens[k]),
                        "pose": _pose_dict(poses[k]), "regions": boxes})
    return task, identity.name, intens, entries


def _fer_job(args) -> list[dict]:
    """Render a chunk of expression images: write them, return their sidecar entries."""
    root, identities, items, size, seed = args
    entries = []
    for split, idx, name, cls, ident in items:
        rng = _rng(seed, _SALT_FER, 0 if split == "train" else 1, idx)
        aus = expression_aus(EXPRESSIONS[cls], rng)
        pose = random_pose(rng)
        bg = background(rng, size * SUPERSAMPLE)
        img, boxes = render_face(identities[ident], aus, pose, size,
                                 seed=int(rng.integers(2 ** 31)), background=bg, **FER_FRAMING)
        stem = name.rsplit(".", 1)[0]
        rel = f"Image/aligned/{stem}_aligned.jpg"
        _save_jpeg(img, Path(root) / rel)
        entries.append({"path": rel, "name": name, "split": split, "label": cls + 1,
                        "expression": EXPRESSIONS[cls], "identity": ident,
                        "au_intensity": _au_dict(aus), "pose": _pose_dict(pose),
                        "regions": boxes})
    return entries


def _run_jobs(fn, jobs: list, sizes: list[int], workers: int | None, progress: bool | None,
              label: str) -> list:
    """Run ``fn`` over ``jobs`` in order, in worker processes when there is enough work.

    Results do not depend on the number of workers (every job seeds its own generator).
    ``progress`` None shows the bar only on a terminal.
    """
    import multiprocessing

    from rich.console import Console

    from clefctl.distributed import worker_count
    from clefctl.ui import progress_bar

    total = int(sum(sizes))
    n_workers = min(worker_count("generate", items=total, requested=workers), max(1, len(jobs)))
    show = Console(stderr=True).is_terminal if progress is None else bool(progress)
    results = []
    with progress_bar(label, total=total, enabled=show, transient=True) as bar:
        if n_workers == 1:
            it = map(fn, jobs)
            pool = None
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            pool = ctx.Pool(n_workers)
            it = pool.imap(fn, jobs)
        try:
            for res, k in zip(it, sizes):
                results.append(res)
                bar.advance(k)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return results


def _meta(kind: str, layout: str, params: dict, identities: dict[str, Identity]) -> dict:
    return {
        "generator": "clefctl.data.synthetic", "version": GENERATOR_VERSION, "kind": kind,
        "layout": layout, "params": params,
        "aus": [f"AU{a}" for a in AU_IDS],
        "au_names": {f"AU{a}": AU_NAMES[a] for a in AU_IDS},
        "occurrence_threshold": OCCURRENCE_THRESHOLD,
        "parts": list(PARTS), "au_regions": au_regions(),
        "region_format": "[x0, y0, x1, y1] pixels of the written image, one box per side",
        "identities": {k: asdict(v) for k, v in identities.items()},
    }


# --------------------------------------------------------------------------------------------
# BP4D layout

def write_au(root: str | os.PathLike, subjects: int = 12, tasks: int = 8,
             frames_per_task: int = 24, size: int = 128, seed: int = 0, *,
             workers: int | None = None, progress: bool | None = None) -> Path:
    """Write a synthetic AU data set in the BP4D layout under ``root``; return ``root``.

    ``AUCoding/AU_OCC/{subject}_{task}.csv`` (columns ``0`` = frame, then AU_IDS, 0/1) and
    ``{subject}/{task}/{frame:04d}.jpg`` with frames FIRST_FRAME.. in each task, tasks T1..T{tasks},
    subjects F001.., M001.. (half each); ``synthetic.json`` last.
    """
    params = au_params(subjects, tasks, frames_per_task, size, seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    identities = _identities(params["subjects"], params["seed"], _SALT_AU_IDENTITY)
    jobs = [(str(root), ident, si, ti, params["frames_per_task"], params["size"], params["seed"])
            for si, ident in enumerate(identities.values()) for ti in range(params["tasks"])]
    results = _run_jobs(_au_job, jobs, [params["frames_per_task"]] * len(jobs), workers,
                        progress, "synthetic-au")
    occ_dir = root / "AUCoding" / "AU_OCC"
    occ_dir.mkdir(parents=True, exist_ok=True)
    images = []
    header = ",".join(["0"] + [str(a) for a in AU_IDS])
    for task, name, intens, entries in results:
        rows = [header]
        for e, vec in zip(entries, intens):
            occ = (vec >= OCCURRENCE_THRESHOLD).astype(int)
            rows.append(",".join([str(e["frame"])] + [str(int(v)) for v in occ]))
        write_text(occ_dir / f"{name}_{task}.csv", "\n".join(rows) + "\n")
        images.extend(entries)
    meta = _meta("synthetic-au", "bp4d", params, identities)
    meta.update({"first_frame": FIRST_FRAME, "tasks": {t: TASK_EMOTIONS[t]
                                                       for t in TASKS[: params["tasks"]]},
                 "task_profiles": {t: {f"AU{a}": p for a, p in TASK_PROFILES[t].items()}
                                   for t in TASKS[: params["tasks"]]},
                 "base_rate": BASE_RATE})
    write_sidecar(root, meta, images)
    return root


# --------------------------------------------------------------------------------------------
# RAF-DB layout

def _fer_plan(params: dict) -> tuple[dict[str, Identity], list[tuple]]:
    """Assign (split, index, file name, class, identity) to every image, subject-disjoint."""
    identities = _identities(params["subjects"], params["seed"], _SALT_FER_IDENTITY)
    names = list(identities)
    rng = _rng(params["seed"], _SALT_FER, 7)
    tf = params["test_fraction"]
    n_test_ids = 0 if tf == 0 else min(len(names) - 1, max(1, round(len(names) * tf)))
    order = [names[i] for i in rng.permutation(len(names))]
    test_ids, train_ids = sorted(order[:n_test_ids]), sorted(order[n_test_ids:])
    per = params["images_per_class"]
    n_test_c = 0
    if tf > 0 and per > 1:
        n_test_c = min(per - 1, max(1, round(per * tf)))
    pools: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for cls in range(len(EXPRESSIONS)):
        for split, ids, count in (("train", train_ids, per - n_test_c),
                                  ("test", test_ids, n_test_c)):
            if count == 0:
                continue
            start = int(rng.integers(len(ids)))
            perm = [ids[(start + k) % len(ids)] for k in range(len(ids))]
            pools[split].extend((cls, perm[k % len(perm)]) for k in range(count))
    items = []
    for split, digits in (("train", 5), ("test", 4)):
        pool = pools[split]
        width = max(digits, len(str(len(pool))))
        for i, j in enumerate(rng.permutation(len(pool))):
            cls, ident = pool[j]
            items.append((split, i, f"{split}_{i + 1:0{width}d}.jpg", cls, ident))
    return identities, items


def write_fer(root: str | os.PathLike, subjects: int = 40, images_per_class: int = 200,
              size: int = 100, seed: int = 0, test_fraction: float = 0.2, *,
              workers: int | None = None, progress: bool | None = None) -> Path:
    """Write a synthetic expression data set in the RAF-DB layout under ``root``; return ``root``.

    ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 4``; labels 1-7 in EXPRESSIONS order)
    and ``Image/aligned/{stem}_aligned.jpg``. About ``test_fraction`` of each class's images are
    ``test_`` images whose identities never appear in ``train_`` images.
    """
    params = fer_params(subjects, images_per_class, size, seed, test_fraction)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    identities, items = _fer_plan(params)
    chunk = 40
    jobs = [(str(root), identities, items[i:i + chunk], params["size"], params["seed"])
            for i in range(0, len(items), chunk)]
    results = _run_jobs(_fer_job, jobs, [len(j[2]) for j in jobs], workers, progress,
                        "synthetic-fer")
    images = [e for r in results for e in r]
    lines = [f"{e['name']} {e['label']}" for e in images]
    write_text(root / "EmoLabel" / "list_patition_label.txt", "\n".join(lines) + "\n")
    meta = _meta("synthetic-fer", "rafdb", params, identities)
    meta.update({"expressions": list(EXPRESSIONS),
                 "expression_prototypes": {k: {"core": [f"AU{a}" for a in c],
                                               "optional": [f"AU{a}" for a in o]}
                                           for k, (c, o) in EXPRESSION_PROTOTYPES.items()},
                 "splits": {"train": sorted({e["identity"] for e in images
                                             if e["split"] == "train"}),
                            "test": sorted({e["identity"] for e in images
                                            if e["split"] == "test"})}})
    write_sidecar(root, meta, images)
    return root
