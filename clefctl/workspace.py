"""Run folders and the ``latest`` pointer of each stage.

Layout (default root ``./clef_runs``; ``--workspace`` / ``$CLEF_WORKSPACE``)::

    clef_runs/
      pretrain/LATEST                 name of the latest complete run of the stage
      pretrain/20261129-101500-synthetic-au/
        config.yaml                   every setting of the run
        prompts.yaml                  the prompt set used
        folds.json                    fold lists (fine-tuning on k-fold data sets)
        metrics.jsonl                 one JSON object per logged step and per epoch
        checkpoints/last.pt           training state (model, optimizer, scheduler, RNG, epoch, step)
        model.pt                      the final clefctl checkpoint (``clefctl.model.create`` loads it)
      finetune/...  evaluate/...  embed/...

``latest`` lets ``pretrain -> finetune -> evaluate -> embed -> query`` run without flags.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from clefctl import paths
from clefctl.errors import ClefError

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

    def require_latest(self, stage: str, hint: str) -> Run:
        run = self.latest(stage)
        if run is None:
            raise ClefError(f"no {stage} run in workspace {self.root}", hint=hint)
        return run

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
