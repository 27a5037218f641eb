"""``clefctl export``: a trained model as a folder ready for ``huggingface-cli upload``.

The folder (open_clip's Hub layout, so ``open_clip`` and ``clefctl`` both read it):

* ``open_clip_model.safetensors`` — the CLIP weights;
* ``open_clip_config.json`` — ``model_cfg`` (the architecture) and ``preprocess_cfg``;
* ``clefctl.json`` — what makes it a CLEF model: architecture name, task, classes, prompt-set
  hash, the class-name embeddings and any other tensors the checkpoint stored, thresholds, the
  fingerprint of the weights it was initialised from, data set and protocol, the evaluation
  summary, and the checkpoint's own metadata (``checkpoint_meta``);
* ``prompts.yaml`` — the prompt set it was trained with;
* ``README.md`` — a model card with Hub front matter and, when the run was evaluated, the table
  and protocol of its newest ``clefctl evaluate`` report.

The folder is built beside ``out`` and renamed into place whole. ``--weights DIR`` (or
``hf-hub:ORG/NAME`` once uploaded) then loads it like the checkpoint it came from.

Example::

    >>> from clefctl.export import export_model
    >>> export_model(None, "exported/clef-au")           # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clefctl import __version__
from clefctl.errors import ClefError
from clefctl.export.card import model_card
from clefctl.model import create
from clefctl.paths import umask, write_json_atomic, write_text_atomic, writing
from clefctl.weights import hub
from clefctl.weights.digest import sha256_file
from clefctl.workspace import Run, Workspace

FORMAT = "clefctl-export"
FORMAT_VERSION = 1
AU_THRESHOLD = 0.5  # predict, evaluate and the model card: occurrence is probability > 0.5


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    run: str | None
    evaluation: str | None
    fingerprint: str


def export_model(ref: str | None, out: str | Path, *, workspace: str | None = None,
                 force: bool = False) -> ExportResult:
    """Export run/checkpoint ``ref`` (default: the latest finished fine-tuning run) to folder ``out``."""
    out = Path(out).expanduser()
    _check_out(out, force)
    ws = Workspace(workspace)
    named = ref not in (None, "", "latest")
    choice = ws.resolve_model(ref, stages=("finetune", "pretrain") if named else ("finetune",),
                              hint="fine-tune a model first (clefctl finetune), or name a run or model.pt")
    if choice.weights is None or hub.is_model_folder(choice.weights) or not Path(choice.weights).is_file():
        raise ClefError(f"{choice.description} is not a clefctl checkpoint to export",
                        hint="name a fine-tuning run, its folder or its model.pt")
    model = create(weights=choice.weights)
    meta = model.meta
    if not meta:
        raise ClefError("not a clefctl checkpoint (no clefctl metadata): only models trained by clefctl export",
                        path=choice.weights, hint="name a fine-tuning run, its folder or its model.pt")
    run = choice.run if choice.run is not None and (choice.run.path / "config.yaml").is_file() else None
    cfg = run.config() if run else {}
    evaluation = _evaluation(ws, run) if run else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())         # a folder like any other (mkdtemp makes it 0700)
        with writing(out):                      # a full disk: one line naming the folder
            files = _write_folder(tmp, model, meta, cfg, run, evaluation, Path(choice.weights))
        for f in tmp.iterdir():                 # safetensors writes 0600
            os.chmod(f, 0o666 & ~umask())
        _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, files, run.name if run else None, evaluation["run"] if evaluation else None,
                        model.fingerprint)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ClefError("export target exists and is not a folder", path=out, hint="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ClefError("export folder exists and is not empty", path=out,
                        hint="choose another --out, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` is moved aside first and removed last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _open_clip_config(model) -> dict:
    import open_clip

    model_cfg = open_clip.get_model_config(model.arch)
    if model.quick_gelu:
        model_cfg["quick_gelu"] = True
    pp = dict(getattr(model.clip.visual, "preprocess_cfg", {}) or {})
    pre = {"mean": list(model.mean), "std": list(model.std)}
    pre.update({k: pp[k] for k in ("interpolation", "resize_mode") if k in pp})
    return {"model_cfg": model_cfg, "preprocess_cfg": pre}


def _thresholds(meta: dict) -> dict | None:
    if meta.get("task") == "au":
        return {"rule": "probability > threshold", "per_class": {c: AU_THRESHOLD for c in meta.get("classes", [])}}
    if meta.get("task") == "fer":
        return {"rule": "argmax over the classes (softmax)", "per_class": None}
    return None


def _write_folder(d: Path, model, meta: dict, cfg: dict, run: Run | None, evaluation: dict | None,
                  checkpoint: Path) -> list[str]:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.clip.state_dict().items()}
    save_file(sd, str(d / hub.WEIGHTS_NAMES[0]), metadata={"format": "pt"})
    write_json_atomic(d / hub.CONFIG_NAME, _open_clip_config(model))
    prompts = None
    if run is not None and (run.path / "prompts.yaml").is_file():
        shutil.copyfile(run.path / "prompts.yaml", d / "prompts.yaml")
        prompts = "prompts.yaml"
    test = _read_json(run.path / "test_metrics.json") if run else None
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "clefctl_version": __version__,
        "arch": model.arch, "quick_gelu": model.quick_gelu, "stage": meta.get("stage"), "task": meta.get("task"),
        "classes": meta.get("classes"), "head": meta.get("head"), "prompts": prompts,
        "prompts_hash": meta.get("prompts_hash"), "thresholds": _thresholds(meta),
        "dataset": meta.get("dataset") or cfg.get("dataset"), "protocol": cfg.get("protocol"),
        "fold": meta.get("fold"), "init": cfg.get("init"), "init_fingerprint": cfg.get("init_fingerprint"),
        "source": {"run": run.name if run else meta.get("run"), "checkpoint_sha256": sha256_file(checkpoint),
                   "fingerprint": model.fingerprint},
        "training": {k: meta.get(k) for k in ("epochs", "steps") if k in meta},
        "test_metrics": _scalars(test),
        "evaluation": {k: v for k, v in (evaluation or {}).items() if k != "table"} or None,
        "checkpoint_meta": meta,
        "extras": hub.encode_extras(model.load_report.extras),
    }
    write_json_atomic(d / hub.CLEF_NAME, doc)
    write_text_atomic(d / "README.md", model_card(doc, evaluation))
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _scalars(d: dict | None) -> dict | None:
    if not d:
        return None
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)} or None


def _about(ev: Run, run: Run) -> bool:
    """True when evaluation run ``ev`` evaluated ``run`` (its checkpoint, or its k-fold settings)."""
    c = ev.config()
    ck = c.get("checkpoint")
    if ck:
        try:
            return Path(ck).resolve() == run.model_path.resolve()
        except OSError:
            return False
    return c.get("reference_run") == run.name or run.name in (c.get("fold_runs") or [])


def _evaluation(ws: Workspace, run: Run) -> dict | None:
    """The newest ``clefctl evaluate`` report about ``run``: its protocol, headline numbers and table."""
    ev = ws.find_run("evaluate", where=lambda r: (r.path / "results.json").is_file() and _about(r, run))
    if ev is None:
        return None
    res = _read_json(ev.path / "results.json") or {}
    view = res.get("fold_mean") if isinstance(res.get("fold_mean"), dict) else res
    table = ev.path / "report.txt"
    cfg = ev.config()
    return {"run": ev.name, "protocol": res.get("protocol"), "dataset": res.get("dataset"),
            "n_samples": res.get("n_samples") or (res.get("pooled") or {}).get("n_samples"),
            "mean_f1": view.get("mean_f1"), "accuracy": view.get("accuracy"), "macro_f1": view.get("macro_f1"),
            "folds": cfg.get("folds"), "table": table.read_text(encoding="utf-8") if table.is_file() else None}
