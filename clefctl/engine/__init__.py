"""Training: the one loop (:mod:`clefctl.engine.loop`) and the one stage runner
(:mod:`clefctl.engine.runner`) that both CLEF stages plug into.

Example::

    >>> from clefctl.engine import TrainConfig, Trainer
    >>> Trainer(model, task, TrainConfig(epochs=1), run, {"stage": "toy"}).fit(dataset)
"""

from clefctl.engine.loop import (EpochSampler, FitResult, SeededDataset, Task, TrainConfig, Trainer,
                                 check_batches, choose_amp, lr_lambda)
from clefctl.engine.runner import Stage, StagePlan, run_stage

__all__ = ["EpochSampler", "FitResult", "SeededDataset", "Stage", "StagePlan", "Task", "TrainConfig", "Trainer",
           "check_batches", "choose_amp", "lr_lambda", "run_stage"]
