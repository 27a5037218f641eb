"""Run folders and the ``latest`` pointer of each stage.

Layout (default root ``./clef_runs``; ``--workspace`` / ``$CLEF_WORKSPACE``)::

    clef_runs/
      pretrain/LATEST                 name of the latest complete run of the stage
      pretrain/20261129-101500-synthetic-au/
        status.json                   running | finished | interrupted | failed (training runs)
        config.yaml                   every setting of the run
        prompts.yaml                  the prompt set used
        folds.json                    fold lists (fine-tuning on k-fold data sets)
        metrics.jsonl                 one JSON object per logged step and per epoch
        checkpoints/last.pt           training state (model, optimizer, scheduler, RNG, epoch, step)
        model.pt                      the final clefctl checkpoint (``clefctl.model.create`` loads it)
      finetune/...  evaluate/...  embed/...

``latest`` lets ``pretrain -> finetune -> evaluate -> embed -> query`` run without flags. The
workspace answers "which model?" (:meth:`Workspace.resolve_model`), "which store?"
(:meth:`Workspace.resolve_store`) and "which model made it?" (:meth:`Workspace.store_model`) for every
command.

A training run writes ``status.json`` (atomically) when it starts (``running``) and when it ends:
``finished`` once ``model.pt`` and its results are written, ``interrupted`` after a deliberate stop,
``failed`` (with the error) otherwise. A run killed outright stays ``running``. Every state but
``finished`` is *unfinished*: ``--resume`` with no run named continues the newest unfinished run of
the stage (:meth:`Workspace.resume_target`) and refuses a finished one. Folders without
``status.json`` (older runs) count as finished when they hold ``model.pt``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import yaml

from clefctl import paths
from clefctl.errors import ClefError, Interrupted
from clefctl.store.format import STORE_NAME, EmbeddingStore
from clefctl.store.provenance import recorded_weights
from clefctl.weights import hub
from clefctl.weights.reference import parse_weights

STAGES = ("pretrain", "finetune", "evaluate", "embed")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")[:60] or "run"


@dataclass
class Run:
    """One run folder."""

    path: Path
    stage: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    def status(self) -> dict:
        """The run's ``status.json`` (``state`` and what the run reported); for a folder without
        one, ``finished`` when it has ``model.pt``, else ``unknown``."""
        try:
            doc = json.loads(self.status_path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("state"), str):
                return doc
        except (OSError, ValueError):
            pass
        return {"state": "finished" if self.model_path.is_file() else "unknown"}

    @property
    def finished(self) -> bool:
        return self.status()["state"] == "finished"

    def mark(self, state: str, **info) -> None:
        """Record ``state`` (running | finished | interrupted | failed) and ``info`` atomically,
        keeping the start time and anything reported earlier."""
        doc = self.status() if self.status_path.is_file() else {}
        now = time.time()
        doc.setdefault("started", now)
        doc.update(info, state=state, updated=now)
        try:
            paths.write_json_atomic(self.status_path, doc)
        except (ClefError, OSError) as exc:
            if not self.status_path.is_file() or not paths.is_disk_full(exc, self.path):
                raise
            self._rewrite_status(doc)

    def _rewrite_status(self, doc: dict) -> None:
        """A full disk has no room for a new status file, but the old one's block is the run's: the
        status is written over it in place (kept within one 4 KiB block: the error is cut first)."""
        text = json.dumps(doc, default=str)
        if len(text) > 4000:
            doc = dict(doc, error=str(doc.get("error"))[:max(0, 3900 - len(text) + len(str(doc.get("error"))))])
            text = json.dumps(doc, default=str)
        with open(self.status_path, "r+", encoding="utf-8") as f:
            f.write(text + "\n")
            f.truncate()
            f.flush()
            os.fsync(f.fileno())

    def resume_command(self, flags: str = "") -> str:
        """The command that continues this run (``flags``: what it needs besides the run and workspace)."""
        return (f"clefctl {self.stage} --resume {shlex.quote(self.name)} "
                f"--workspace {shlex.quote(str(self.path.parent.parent))}" + (f" {flags}" if flags else ""))

    @contextlib.contextmanager
    def attempt(self, enabled: bool = True):
        """Mark the run ``running`` for the block, then ``interrupted`` or ``failed`` (with the error)
        when the block raises; the caller marks it ``finished``. ``enabled=False``: no writes (other ranks)."""
        if enabled:
            self.mark("running", error=None)
        try:
            yield self
        except Interrupted as exc:
            if enabled:
                self.mark("interrupted", error=str(exc))
            raise
        except BaseException as exc:
            if enabled:
                self.mark("failed", error=f"{type(exc).__name__}: {exc}"[:1000])
            raise

    def config(self) -> dict:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise ClefError("run has no config.yaml", path=self.path, hint="was the run folder copied incompletely?")
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}

    def save_config(self, config: dict) -> None:
        paths.write_text_atomic(self.path / "config.yaml",
                                yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False))

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (line-buffered append: a crash loses at most that line)."""
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def truncate_log(self, step: int) -> None:
        """Keep only the training records (``step`` / ``epoch``) up to global step ``step``, atomically:
        a resumed run then logs the steps after its checkpoint once, as an uninterrupted run does."""
        if not self.metrics_path.is_file():
            return
        keep = [r for r in self.metrics()
                if r.get("kind") in ("step", "epoch") and isinstance(r.get("step"), (int, float)) and r["step"] <= step]
        paths.write_text_atomic(self.metrics_path, "".join(json.dumps(r, default=float) + "\n" for r in keep))

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return out


@dataclass
class ModelChoice:
    """What :meth:`Workspace.resolve_model` chose: ``weights`` for :func:`clefctl.model.create`
    (a file path, a pretrained tag, or None for a random init), the architecture when it is not
    carried by the checkpoint, a description for reports, the run it came from, and a warning."""

    weights: str | None
    arch: str | None
    description: str
    run: Run | None = None
    warning: str | None = None

    def load(self, device=None, *, trust_checkpoint: bool = False, seed: int = 0, default_arch: str = "ViT-B-16",
             towers: str = "both"):
        """Build the model (a clefctl checkpoint carries its own architecture); ``towers="text"``:
        only what encodes texts (:func:`clefctl.model.text.create_text`, same fingerprint)."""
        if towers == "text":
            from clefctl.model.text import create_text

            return create_text(self.arch or default_arch, self.weights, device, seed=seed,
                               trust_checkpoint=trust_checkpoint)
        from clefctl.model import create

        return create(self.arch or default_arch, self.weights, device, seed=seed, trust_checkpoint=trust_checkpoint)


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = paths.workspace_dir(root)

    def stage_dir(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage}")
        return self.root / stage

    def new_run(self, stage: str, label: str = "") -> Run:
        base = time.strftime("%Y%m%d-%H%M%S") + (f"-{_slug(label)}" if label else "")
        d = self.stage_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        path, i = d / base, 1
        while path.exists():
            i += 1
            path = d / f"{base}-{i}"
        (path / "checkpoints").mkdir(parents=True)
        return Run(path, stage)

    def set_latest(self, run: Run) -> None:
        paths.write_text_atomic(self.stage_dir(run.stage) / "LATEST", run.name + "\n")

    def latest(self, stage: str) -> Run | None:
        p = self.stage_dir(stage) / "LATEST"
        if not p.is_file():
            return None
        path = self.stage_dir(stage) / p.read_text(encoding="utf-8").strip()
        return Run(path, stage) if path.is_dir() else None


    def runs(self, stage: str) -> list[Run]:
        """The stage's run folders, oldest first (by start time; folder time for older runs)."""
        d = self.stage_dir(stage)
        if not d.is_dir():
            return []

        def started(run: Run) -> float:
            t = run.status().get("started")
            return float(t) if isinstance(t, (int, float)) else run.path.stat().st_mtime
        return sorted((Run(p, stage) for p in d.iterdir() if p.is_dir()), key=lambda r: (started(r), r.name))

    def resume_target(self, stage: str, ref: str | None) -> Run:
        """The run ``--resume`` continues: ``None``/``latest`` -> the newest unfinished run of the stage;
        a name or folder -> that run. A finished run is refused: there is nothing left to resume."""
        if ref in (None, "", "latest"):
            unfinished = [r for r in self.runs(stage) if not r.finished]
            if not unfinished:
                raise ClefError(f"nothing to resume: no unfinished {stage} run in workspace {self.root}",
                                hint=f"every {stage} run there is complete; start a new run (leave out --resume)")
            return unfinished[-1]
        run = self.resolve(stage, ref)
        if run.finished:
            raise ClefError(f"nothing to resume: {stage} run {run.name} is complete", path=run.path,
                            hint="start a new run (leave out --resume), or name an unfinished run")
        return run

    def find_run(self, stage: str, ref: str | None = None, *,
                 where: Callable[[Run], bool] | None = None) -> Run | None:
        """The one run finder. ``ref`` a run name or folder: that run (a ClefError when there is none).
        ``None``/``latest``: the stage's ``LATEST`` run when it passes ``where``, else the newest run
        (by start time) that passes it; None when no run does. ``where`` sees each candidate run;
        a run whose config.yaml cannot be read never passes."""
        if ref not in (None, "", "latest"):
            return self.resolve(stage, ref)

        def passes(run: Run | None) -> bool:
            if run is None:
                return False
            try:
                return where is None or bool(where(run))
            except ClefError:
                return False
        latest = self.latest(stage)
        if passes(latest):
            return latest
        for run in reversed(self.runs(stage)):
            if passes(run):
                return run
        return None

    def resolve_model(self, ref: str | None, *, stages: Sequence[str] = ("finetune", "pretrain"),
                      task: str | None = None, arch: str | None = None,
                      random_fallback: bool = False, hint: str | None = None) -> "ModelChoice":
        """The one answer to "which model does this command use?".

        ``ref``: ``random`` (a random ``arch``, default clef-tiny); ``None``/``latest`` (the model.pt
        of the first of ``stages`` with a finished run, found by :meth:`find_run`, of ``task`` when
        given; with none, a random model and a warning if ``random_fallback``, else a ClefError); a run
        folder or a run name of one of ``stages`` (its model.pt); a weights file (absolute path, so
        it resolves from any folder); ``hf-hub:ORG/NAME`` (the Hub snapshot folder) or a folder in
        open_clip's Hub layout (an exported model); a registry name such as ``farl-ep64`` (its file,
        downloaded when missing; :mod:`clefctl.weights`); anything else is passed on as an open_clip
        pretrained tag.
        """
        if ref == "random":
            a = arch or "clef-tiny"
            return ModelChoice(None, a, f"random {a}")
        if ref in (None, "", "latest"):
            def usable(run: Run) -> bool:
                return run.model_path.is_file() and run.finished and (
                    task is None or run.config().get("task") == task)
            for stage in stages:
                run = self.find_run(stage, where=usable)
                if run is not None:
                    return ModelChoice(str(run.model_path.resolve()), None, f"{stage} run {run.name}", run)
            what = f"no finished {'/'.join(stages)} run{f' for task {task}' if task else ''} in workspace {self.root}"
            if random_fallback:
                a = arch or "clef-tiny"
                return ModelChoice(None, a, f"random {a}",
                                   warning=f"{what}: using a randomly initialised {a} (it has learned nothing)")
            raise ClefError(f"no model given and {what}",
                            hint=hint or "pass --weights model.pt (or --weights random for an untrained model)")
        wref = parse_weights(ref)  # hub, folder, dir, file or a bare name (clefctl.weights.reference)
        if wref.kind == "hub":
            return ModelChoice(str(hub.snapshot(ref)), None, f"Hugging Face Hub model {wref.hub_name}")
        if wref.kind == "folder":
            return ModelChoice(str(wref.path.resolve()), None, f"exported model {wref.path}")
        path = wref.path
        if not wref.exists:  # a run's name
            path = next((self.stage_dir(s) / ref for s in stages if (self.stage_dir(s) / ref).is_dir()), path)
        if path is not None and path.is_dir():
            run = Run(path, path.parent.name if path.parent.name in STAGES else stages[0])
            if not run.model_path.is_file():
                raise ClefError("run folder has no model.pt (the run did not finish)", path=path,
                                hint="finish it with --resume, or pass a finished run or a checkpoint file")
            return ModelChoice(str(run.model_path.resolve()), None, f"{run.stage} run {run.name}", run)
        if path is not None and path.is_file():
            run = Run(path.parent, path.parent.parent.name) if (path.parent / "config.yaml").is_file() else None
            return ModelChoice(str(path.resolve()), arch, f"weights {path}", run)
        from clefctl.weights import download  # imported only here: building the registry's table imports open_clip

        named = download.resolve_named(str(ref), arch)
        if named is not None:
            return ModelChoice(*named)
        return ModelChoice(str(ref), arch, f"weights {ref}")

    def resolve_store(self, store: str | os.PathLike | None = None, run: str | None = None) -> tuple[Path, dict]:
        """The one answer to "which store?": the file ``store``, else the store of the embed run
        ``run`` (a run name or folder; None: the latest embed run), with that run's ``config.yaml``
        (``{}`` for a store outside an embed run)."""
        if store:
            p = Path(store)
            if not p.is_file():
                raise ClefError("embedding store not found" if not p.exists() else "not a file: a store is one .h5 file",
                                path=p, hint="check the path, or create the store with `clefctl embed`")
            return p, Run(p.parent, "embed").config() if (p.parent / "config.yaml").is_file() else {}
        found = self.resolve("embed", run) if run else self.latest("embed")
        if found is None:
            raise ClefError(f"no embed run in workspace {self.root}",
                            hint="run `clefctl embed --dataset NAME` first, or pass --store FILE")
        cfg = found.config()
        return found.path / cfg.get("store", STORE_NAME), cfg

    def store_model(self, store_path: str | os.PathLike, config: dict | None = None, *, weights: str | None = None,
                    arch: str | None = None, trust_checkpoint: bool = False, towers: str = "both",
                    lazy: bool = False, required: bool = True):
        """The one answer to "which model made this store?": ``weights``/``arch`` when given, else the
        model recorded in the store (:mod:`clefctl.store.provenance`), else that of its embed run's
        ``config`` (stores written before the record), loaded through :meth:`resolve_model`
        (``towers="text"``: the text tower only; ``lazy``: the weights are resolved now and a callable
        that builds the model is returned). A store whose model is unknown is a ClefError, or None
        when not ``required``."""
        cfg = config or {}
        rec = None
        if weights is None:
            with EmbeddingStore.open(store_path) as st:
                rec = st.model_record
        w = weights if weights is not None else (recorded_weights(store_path, rec) if rec else cfg.get("weights"))
        if w is None:
            if not required:
                return None
            raise ClefError("the store's model is unknown (the store was written before stores recorded their "
                            "model, and no embed run's config.yaml is beside it)", path=store_path,
                            hint="pass --weights (and --arch) of the model that made the store")
        a = arch or (rec or {}).get("arch") or cfg.get("arch") or "ViT-B-16"
        load = functools.partial(self.resolve_model(w, arch=a).load, trust_checkpoint=trust_checkpoint,
                                 default_arch=a, towers=towers)
        return load if lazy else load()

    def resolve(self, stage: str, ref: str | None) -> Run | None:
        """``None``/``latest`` -> the latest run; a run name or a folder path -> that run."""
        if ref in (None, "", "latest"):
            return self.latest(stage)
        p = Path(ref)
        if p.is_dir():
            return Run(p, stage)
        cand = self.stage_dir(stage) / ref
        if cand.is_dir():
            return Run(cand, stage)
        raise ClefError(f"no {stage} run named {ref!r}", path=self.stage_dir(stage),
                        hint="give a run folder, a run name, or 'latest'")


# A training run's stored options. How this invocation runs, never what the run is: always this
# invocation's, never stored in or restored from config.yaml. Trust in particular comes from the
# current command line only.
INVOCATION_OPTIONS = ("resume", "overrides", "workspace", "trust_checkpoint")
INVOCATION_TRAIN_OPTIONS = ("progress",)


def options_to_config(opts) -> dict:
    """A stage's options dataclass as the plain dict a run's config.yaml stores (INVOCATION_OPTIONS
    but ``workspace`` left out: they say how a run was started, not what it is)."""
    d = asdict(opts)
    for k in INVOCATION_OPTIONS:
        if k != "workspace":
            d.pop(k, None)
    return d


def options_from_run(run: Run, given):
    """The options to resume ``run`` with: every option it was started with (its config.yaml), except
    the ones named in ``given.overrides`` (field names of the stage's options or of its ``train``
    TrainConfig, e.g. ``{"max_steps", "device"}``: given again for this invocation), which come from
    ``given``, as do INVOCATION_OPTIONS and ``progress`` always."""
    stored = dict(run.config().get("options") or {})
    stored_train = dict(stored.pop("train", None) or {})
    opt_names = [f.name for f in fields(given) if f.name != "train"]
    train_names = [f.name for f in fields(given.train)]
    overrides = set(getattr(given, "overrides", None) or ())
    unknown = sorted(overrides - set(opt_names) - set(train_names))
    if unknown:
        raise ClefError(f"unknown option name(s) in overrides: {', '.join(unknown)}",
                        hint=f"use field names of {type(given).__name__} or TrainConfig")
    current = overrides | set(INVOCATION_OPTIONS)
    opts = {n: stored[n] if n in stored and n not in current else getattr(given, n) for n in opt_names}
    current_train = overrides | set(INVOCATION_TRAIN_OPTIONS)
    train = {n: stored_train[n] if n in stored_train and n not in current_train else getattr(given.train, n)
             for n in train_names}
    return replace(given, **opts, train=type(given.train)(**train))
