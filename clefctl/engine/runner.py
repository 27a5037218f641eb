"""The one stage runner: what every training run does around the loop, whichever stage it is.

:func:`run_stage` opens a run the same way for every stage: the run ``--resume`` continues (with
its stored options, those given again replaced), the options checked, the process group set up,
then the stage's own preparation (data, model, task), and only after everything is checked the run
folder with its ``config.yaml`` and ``prompts.yaml``. It closes it the same way too:
``status.json`` marked running / interrupted / failed around the fit, the stage's results saved,
``finished``, the stage's ``LATEST`` moved, every rank waiting for the others.

Under ``torchrun`` rank 0 alone creates the run folder and writes its files; the other ranks are
told its name. The stage's ``save_results`` runs on every rank, so work such as the held-out
evaluation can be sharded over them; it writes files on rank 0 only.

A stage plugs in with a :class:`Stage`: its name, how to check its options, and how to prepare a
:class:`StagePlan`, which says what differs: the task and data set, the run's config and
checkpoint metadata, and what to save at the end.

Example::

    >>> from clefctl.engine import Stage, run_stage
    >>> run = run_stage(Stage("pretrain", validate_options, prepare), opts)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from clefctl import distributed as dist
from clefctl.engine.loop import Task, Trainer
from clefctl.errors import DiskFull
from clefctl.model import ClefModel
from clefctl.paths import is_disk_full
from clefctl.workspace import Run, Workspace, options_from_run, options_to_config


@dataclass
class StagePlan:
    """What a stage prepared for one run, every option already checked."""

    opts: Any                   # the options in force (a stage may pin some, e.g. finetune's init by name)
    model: ClefModel
    task: Task
    dataset: Dataset            # the training items, as the task's ``loss`` expects them
    label: str                  # the new run folder's label
    config: dict                # a new run's config.yaml, after its "stage" and "options"
    prompts: Any                # the PromptSet saved as the run's prompts.yaml
    meta: dict                  # the checkpoint's metadata; the runner adds the run's name
    save_results: Callable[[Run, dict, dict], None]   # (run, meta, report): model.pt and results; called
    #                                                   on every rank, writes on rank 0 (dist.is_main())
    save_files: Callable[[Run], None] | None = None   # a new run's further files (e.g. folds.json)


@dataclass(frozen=True)
class Stage:
    """A training stage: ``name`` (its workspace stage), ``validate(opts)`` (ClefError for a setting
    no run can use) and ``prepare(opts, workspace) -> StagePlan`` (after the process group is set up)."""

    name: str
    validate: Callable[[Any], None]
    prepare: Callable[[Any, Workspace], StagePlan]


def run_stage(stage: Stage, opts) -> Run:
    """Train one run of ``stage`` with ``opts`` (a stage options dataclass with ``workspace``,
    ``resume``, ``overrides``, ``weights``, ``trust_checkpoint`` and ``train``) and return it."""
    ws = Workspace(opts.workspace)
    resumed = ws.resume_target(stage.name, opts.resume) if opts.resume else None
    if resumed is not None:
        opts = options_from_run(resumed, opts)
    stage.validate(opts)
    dist.setup_from_env()
    plan = stage.prepare(opts, ws)
    run = _open_run(ws, stage.name, plan.label, resumed)
    if dist.is_main():
        _save_run_files(run, resumed is not None, stage.name, plan)
    meta = dict(plan.meta, run=run.name)
    with run.attempt(dist.is_main()), _resume_when_disk_full(run, _resume_flags(plan.opts)):
        trainer = Trainer(plan.model, plan.task, plan.opts.train, run, meta, resume_flags=_resume_flags(plan.opts))
        resume_from = trainer.last_path if resumed is not None and trainer.last_path.is_file() else None
        result = trainer.fit(plan.dataset, resume_from=resume_from)
        report = {"epochs": result.epochs_done, "steps": result.global_step,
                  "skipped_train_images": result.skipped_images}
        plan.save_results(run, meta, report)
        if dist.is_main():
            run.mark("finished", **report)
            ws.set_latest(run)
    dist.barrier()
    return run


@contextlib.contextmanager
def _resume_when_disk_full(run: Run, flags: str):
    """A full disk during the run (the run is marked failed by then, its last checkpoint kept): one
    line naming the file, and the command that continues the run (``--resume``; running the same
    command again would start a new run)."""
    try:
        yield
    except (DiskFull, OSError) as exc:
        if isinstance(exc, OSError) and not is_disk_full(exc):
            raise
        path = exc.path if isinstance(exc, DiskFull) else (exc.filename or run.path)
        raise DiskFull(f"the disk is full (no space left on the device): writing it failed; run {run.name} is "
                       "marked failed, what it saved before is kept", path=path,
                       hint=f"free some space, then continue the run with: {run.resume_command(flags)}") from exc


def _open_run(ws: Workspace, stage: str, label: str, resumed: Run | None) -> Run:
    """The resumed run, or a new run folder; under torchrun rank 0's, whose path every rank gets."""
    run = resumed if resumed is not None else (ws.new_run(stage, label) if dist.is_main() else None)
    path = dist.broadcast_object(str(run.path) if run is not None else None)
    return run if run is not None and str(run.path) == path else Run(Path(path), stage)


def _save_run_files(run: Run, resumed: bool, stage: str, plan: StagePlan) -> None:
    """config.yaml and prompts.yaml (and the stage's further files) of a new run; a resumed run's
    config.yaml gets the options in force from now on (those given again replaced)."""
    if resumed:
        run.save_config({**run.config(), "options": options_to_config(plan.opts)})
        return
    run.save_config({"stage": stage, "options": options_to_config(plan.opts), **plan.config})
    plan.prompts.save(run.path / "prompts.yaml")
    if plan.save_files is not None:
        plan.save_files(run)


def _resume_flags(opts) -> str:
    """What the resume command needs besides ``--resume RUN --workspace DIR``: trust is never stored."""
    return "--trust-checkpoint" if getattr(opts, "weights", None) and getattr(opts, "trust_checkpoint", False) else ""
