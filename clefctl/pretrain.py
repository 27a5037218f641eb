"""CLEF stage 1: activity-supervised cross-modal contrastive pre-training (paper section 3.1, Eq. 1-2).

Each batch holds two augmented views of n frames and the text of each frame's recording
activity (BP4D/BP4D+ task), rendered with one random activity template per batch. The loss is
Eq. 2, ``sup_con(view1, view2) + sup_con(view1, activity_text)``: images and texts of the same
activity are positives. ``no_activity_text`` keeps only L_II (the "PI" rows of Table 6).

Example::

    >>> from clefctl.pretrain import PretrainOptions, run_pretrain
    >>> run = run_pretrain(PretrainOptions())          # synthetic-au, clef-tiny, CPU-sized
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from clefctl import distributed as dist
from clefctl.engine import Stage, StagePlan, TrainConfig, check_batches, run_stage
from clefctl.errors import ClefError
from clefctl.losses import pretrain_loss, sup_con
from clefctl.model import ClefModel, encode_text_trimmed, save_checkpoint
from clefctl.recipes import augment_for
from clefctl.workspace import Run, Workspace

PRETRAIN_DATASETS = ("bp4d", "bp4dplus", "manifest", "synthetic-au")


@dataclass
class PretrainOptions:
    dataset: str = "synthetic-au"
    data_root: str | None = None
    dataset_root: str | None = None
    max_frames: int | None = None        # BP4D+: the paper samples 480k frames evenly over tasks
    arch: str = "clef-tiny"
    weights: str | None = None           # e.g. FaRL-Base-Patch16-LAIONFace20M-ep64.pth
    trust_checkpoint: bool = False
    crop_cache: bool = True              # read a complete face-crop cache when there is one (clefctl data prepare)
    prompts: str | None = None           # prompt set name or YAML path (default: the data set's)
    temperature: float = 0.25            # epsilon of Eq. 1
    no_activity_text: bool = False       # Table 6 "PI" only: L_II alone
    crop_scale: float | None = None      # smallest random crop area (None: 0.8 paper, 0.9 small models)
    rotation: float | None = None        # max rotation in degrees (None: 10 paper, 0 small models)
    device: str | None = None
    workspace: str | None = None
    resume: str | None = None            # run name/folder, or "latest" (the newest unfinished run)
    overrides: frozenset[str] = frozenset()  # resuming: options given again (field names, train's too);
    #                                          every other option is the resumed run's own
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, warmup_epochs=1, lr=5e-4))


class PretrainTask:
    """Eq. 2 on a batch of two views + activity texts (or Eq. 1 on the views alone)."""

    def __init__(self, model: ClefModel, prompts, activities: list[str], temperature: float,
                 use_text: bool):
        self.model, self.prompts, self.activities = model, prompts, activities
        self.temperature, self.use_text = temperature, use_text

    def modules(self):
        return {"clip": self.model.clip}

    def loss(self, batch: dict, rng: random.Random):
        clip = self.model.clip
        v1, v2 = batch["image"]
        labels = batch["activity"]
        z1, z2 = clip.encode_image(v1), clip.encode_image(v2)
        anchor_rows = None
        if dist.is_distributed():
            n = z1.shape[0]
            anchor_rows = dist.local_slice(n)
            z1 = dist.gather_features(z1, with_grad=True)
            z2 = dist.gather_features(z2, with_grad=True)
        if not self.use_text:
            lab = dist.gather_features(labels) if dist.is_distributed() else labels
            l_ii = sup_con(z1, z2, lab, self.temperature, anchor_rows=anchor_rows)
            return l_ii, {"l_ii": l_ii.detach()}
        if dist.is_distributed():  # the global batch's activities, in its order, on every rank
            labels = dist.gather_features(labels)
        za = self._activity_features(labels, rng, v1.device)
        loss = pretrain_loss(z1, z2, za, labels, self.temperature, anchor_rows=anchor_rows)
        return loss, {}

    def _activity_features(self, labels: torch.Tensor, rng: random.Random, device) -> torch.Tensor:
        """Text features (n, d) of each row's activity description, for the (global) batch ``labels``.

        The texts are drawn once for the whole batch: one template, one description per activity in
        the batch's first-seen order, from the step's ``rng`` (the same on every rank), so one
        activity has one text in a step however the batch is sharded. Every rank encodes the few
        distinct texts itself: its own anchors' loss then has the text gradient of every row, and
        the mean over ranks is the single-process gradient."""
        texts = self.prompts.activity_texts([self.activities[i] for i in labels.tolist()], rng)
        uniq = sorted(set(texts))
        za_u = encode_text_trimmed(self.model.clip, self.model.tokenizer(uniq).to(device))
        return za_u[torch.tensor([uniq.index(t) for t in texts], device=device)]


def _load_pretrain_data(opts: PretrainOptions):
    from clefctl.data import load_dataset

    name = opts.dataset.lower()
    kwargs = {}
    if name in ("bp4d", "bp4dplus", "synthetic-au"):
        kwargs["mode"] = "pretrain"
        if opts.max_frames:
            kwargs["max_frames"] = opts.max_frames
    bundle = load_dataset(name, root=opts.dataset_root, data_root=opts.data_root, **kwargs)
    with_activity = [s for s in bundle.samples if s.activity]
    if not with_activity:
        raise ClefError(f"data set {bundle.name} has no activity (task) labels; pre-training needs them",
                        path=bundle.root, hint="use bp4d, bp4dplus, synthetic-au or a manifest with an "
                                               "'activity' column")
    bundle.samples = with_activity
    return bundle


def validate_options(opts: PretrainOptions) -> None:
    """ClefError for a setting no run can use; also fills the train settings left at None."""
    opts.train.validate()
    defaults = PretrainOptions().train
    for name in ("epochs", "batch_size", "lr", "warmup_epochs"):
        if getattr(opts.train, name) is None:
            setattr(opts.train, name, getattr(defaults, name))
    if not (isinstance(opts.temperature, (int, float)) and 0 < opts.temperature < float("inf")):
        raise ClefError(f"--temperature must be a finite number > 0, got {opts.temperature!r}")
    if opts.max_frames is not None and not (isinstance(opts.max_frames, int) and opts.max_frames >= 1):
        raise ClefError(f"--max-frames must be an integer >= 1, got {opts.max_frames!r}")
    augment_for(opts.arch, opts.crop_scale, opts.rotation)  # checks --crop-scale and --rotation


def prepare(opts: PretrainOptions, ws: Workspace) -> StagePlan:
    """Stage 1's data (two views of each frame, from memory when small), model and Eq. 2 task."""
    from clefctl.data.crops import crop_cache_for
    from clefctl.data.images import decode_size_for
    from clefctl.data.dataset import SampleDataset
    from clefctl.data.records import cache_images
    from clefctl.data.transforms import TwoViews, transforms_for
    from clefctl.prompts import load_prompts

    bundle = _load_pretrain_data(opts)
    prompts = load_prompts(opts.prompts or bundle.prompts or "bp4d")
    if not opts.no_activity_text:
        missing = sorted({s.activity for s in bundle.samples} - set(prompts.activity_ids))
        if missing:
            raise ClefError(f"prompt set '{prompts.dataset}' has no description for activities "
                            f"{', '.join(missing)}", path=prompts.source, hint="add them under 'activities:'")
    model = ws.resolve_model(opts.weights or "random", arch=opts.arch).load(
        opts.device, trust_checkpoint=opts.trust_checkpoint, seed=opts.train.seed, default_arch=opts.arch)
    activities = sorted({s.activity for s in bundle.samples})
    crops = crop_cache_for(bundle, model.image_size, opts.crop_cache)
    samples = crops.apply(bundle.samples) if crops else bundle.samples
    check_batches(len(samples), opts.train.batch_size, dist.world_size())
    aug = augment_for(model.arch, opts.crop_scale, opts.rotation)
    dataset = SampleDataset(cache_images(samples, model.image_size),
                            TwoViews(transforms_for(model, train=True, **aug)),
                            classes_count=0, task="activity", activities=activities,
                            decode_size=decode_size_for(model.image_size))
    task = PretrainTask(model, prompts, activities, opts.temperature, not opts.no_activity_text)

    def save_results(run: Run, meta: dict, report: dict) -> None:
        if dist.is_main():
            save_checkpoint(run.model_path, model, dict(meta, **report))
    return StagePlan(
        opts, model, task, dataset, label=f"{bundle.name}-{model.arch}", prompts=prompts,
        config={"dataset": bundle.name, "arch": model.arch, "init_fingerprint": model.fingerprint,
                "frames": len(samples), "activities": activities, "prompts_hash": prompts.hash,
                "crop_cache": crops.describe() if crops else None},
        meta={"stage": "pretrain", "dataset": bundle.name},
        save_results=save_results)


STAGE = Stage("pretrain", validate_options, prepare)


def run_pretrain(opts: PretrainOptions) -> Run:
    """Train stage 1 and return the run (its ``model.pt`` loads with ``clefctl.model.create``).

    ``opts.resume`` continues an unfinished run (see ``Workspace.resume_target``) with its own options,
    but those named in ``opts.overrides``. Everything is checked before a run folder is created; the
    run's ``status.json`` then says running, finished, interrupted or failed (:func:`clefctl.engine.run_stage`).
    """
    return run_stage(STAGE, opts)
