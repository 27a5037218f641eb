"""Training recipes: the paper's settings for pre-trained architectures vs clefctl's own for small models.

The paper (section 4.2) fine-tunes a pre-trained ViT-B/16 for 5 epochs at lr 2e-4 (1e-4 for DISFA
and FERPlus), batch 64, with random crops of 0.8-1 of the area and rotations up to 10 degrees.
clefctl's small configs (clef-tiny, clef-small) start from random weights, so they get their own
defaults: a higher learning rate, smaller batches (which learned more per image seen), a fixed
number of steps per task instead of epochs, a warm-up counted in steps (at their learning rate a
short warm-up leaves the loss at chance for a long time), and milder augmentation. Each default
applies only to an option left at None; the measured comparisons behind them are in
docs/performance.md.

Example::

    >>> from clefctl.engine import TrainConfig
    >>> from clefctl.recipes import resolve_defaults
    >>> resolve_defaults(TrainConfig(epochs=None, batch_size=None, lr=None, warmup_epochs=None),
    ...                  "clef-tiny", "synthetic-fer", "fer", 1120).lr
    0.001
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clefctl.errors import ClefError

if TYPE_CHECKING:
    from clefctl.engine import TrainConfig

# Paper section 4.2: lr 2e-4 for BP4D, AffectNet, RAF-DB; 1e-4 for DISFA and FERPlus.
PAPER_LR = {"disfa": 1e-4, "ferplus": 1e-4}
PAPER_EPOCHS = 5
PAPER_BATCH = 64
PAPER_WARMUP_EPOCHS = 0.5
PAPER_AUGMENT = {"scale": (0.8, 1.0), "rotation": 10.0}
# Subject folds of a k-fold data set without canonical folds (3 unless named here).
DEFAULT_FOLDS = {"bp4dplus": 4}
# clef-tiny / clef-small, trained from scratch: steps per task, warm-up steps (rounded to epochs,
# unless --warmup-epochs is given), lr, batch and augmentation.
SMALL_MODEL_STEPS = {"au": 800, "fer": 300}
SMALL_MODEL_WARMUP_STEPS = 80
SMALL_MODEL_LR = 1e-3
SMALL_MODEL_BATCH = 32
SMALL_MODEL_AUGMENT = {"scale": (0.9, 1.0), "rotation": 0.0}


def is_small_model(arch: str) -> bool:
    """True for clefctl's own from-scratch configs (clef-tiny, clef-small)."""
    from clefctl.model import clef_architectures

    return arch in clef_architectures()


def augment_for(arch: str, crop_scale: float | None, rotation: float | None) -> dict:
    """``train_transform`` arguments: the paper's, or milder ones for the small from-scratch models;
    ``crop_scale`` (smallest crop area) and ``rotation`` (degrees) override either."""
    aug = dict(SMALL_MODEL_AUGMENT if is_small_model(arch) else PAPER_AUGMENT)
    if crop_scale is not None:
        if not (isinstance(crop_scale, (int, float)) and 0 < crop_scale <= 1):
            raise ClefError(f"--crop-scale must be in (0, 1], got {crop_scale}")
        aug["scale"] = (float(crop_scale), 1.0)
    if rotation is not None:
        if not (isinstance(rotation, (int, float)) and 0 <= rotation <= 180):
            raise ClefError(f"--rotation must be in [0, 180] degrees, got {rotation}")
        aug["rotation"] = float(rotation)
    return aug


def auto_epochs(arch: str, task: str, n_train: int, batch_size: int, world: int = 1) -> float:
    """The paper's 5 epochs, or for a small from-scratch model enough for SMALL_MODEL_STEPS steps."""
    if not is_small_model(arch):
        return float(PAPER_EPOCHS)
    steps_per_epoch = max(1, n_train // max(1, batch_size * world))
    return float(max(1, round(SMALL_MODEL_STEPS.get(task, 800) / steps_per_epoch)))


def resolve_defaults(train: "TrainConfig", arch: str, dataset: str, task: str, n_train: int,
                     world: int = 1) -> "TrainConfig":
    """Fill the options left at None (batch, lr, epochs, warm-up) in place: the paper's settings
    (section 4.2) for pre-trained architectures, the SMALL_MODEL_* ones for clef-tiny/clef-small."""
    small = is_small_model(arch)
    if train.batch_size is None:
        train.batch_size = SMALL_MODEL_BATCH if small else PAPER_BATCH
    if train.lr is None:
        train.lr = SMALL_MODEL_LR if small else PAPER_LR.get(dataset, 2e-4)
    if train.epochs is None:
        train.epochs = auto_epochs(arch, task, n_train, train.batch_size, world)
    if train.warmup_epochs is None:
        steps_per_epoch = max(1, n_train // (train.batch_size * world))
        train.warmup_epochs = (round(min(SMALL_MODEL_WARMUP_STEPS / steps_per_epoch, train.epochs / 4), 2)
                               if small else PAPER_WARMUP_EPOCHS)
    return train
