"""Training: the one loop (:mod:`clefctl.engine.loop`), its data path (:mod:`clefctl.engine.data`:
seeded items, the epoch sampler, the loader probe) and the one stage runner
(:mod:`clefctl.engine.runner`) that both CLEF stages plug into.

Example::

    >>> from clefctl.engine import TrainConfig, Trainer
    >>> Trainer(model, task, TrainConfig(epochs=1), run, {"stage": "toy"}).fit(dataset)
"""

from clefctl.engine.data import EpochSampler, LoaderProbe, SeededDataset
from clefctl.engine.loop import FitResult, Task, TrainConfig, Trainer, check_batches, choose_amp, lr_lambda
from clefctl.engine.runner import Stage, StagePlan, run_stage

__all__ = ["EpochSampler", "FitResult", "LoaderProbe", "SeededDataset", "Stage", "StagePlan", "Task", "TrainConfig",
           "Trainer", "check_batches", "choose_amp", "lr_lambda", "run_stage"]
