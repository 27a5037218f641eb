"""CLEF stage 2: text-driven fine-tuning (paper section 3.2, Eq. 3-6) and prediction.

Images are contrasted with the text features of the label names ("a photo of a person with
{name}."): Eq. 4 (expressions, softmax over names) or Eq. 5 (AUs, a sigmoid per name), plus the
name-description loss Eq. 3 with one random description per class and one random template per
batch; the total is Eq. 6, ``(lam * L_IN + L_DN) / 2``. Prediction is the most similar label
name (FER) or ``sigmoid(logit_scale * image . name) > 0.5`` per AU.

Ablations of Table 6: ``no_descriptions`` (L_IN alone, the "N" rows) and ``head="linear"`` (the
image encoder + a linear classifier, no text: the "I" rows).

Example::

    >>> from clefctl.finetune import FinetuneOptions, run_finetune
    >>> run = run_finetune(FinetuneOptions(dataset="synthetic-fer"))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from clefctl import distributed as dist
from clefctl.engine import (TrainConfig, Trainer, cache_images, check_batches, encode_text_trimmed,
                            options_from_run, options_to_config)
from clefctl.errors import ClefError
from clefctl.losses import (au_loss, au_loss_from_logits, fer_loss, fer_loss_from_logits, finetune_loss,
                            name_description_loss)
from clefctl.model import ClefModel, save_checkpoint
from clefctl.workspace import Run, Workspace

# Paper section 4.2: lr 2e-4 for BP4D, AffectNet, RAF-DB; 1e-4 for DISFA and FERPlus.
PAPER_LR = {"disfa": 1e-4, "ferplus": 1e-4}
DEFAULT_FOLDS = {"bp4dplus": 4}
PAPER_EPOCHS = 5
# clefctl's own small configs (clef-tiny, clef-small) start from random weights, so they get their
# own defaults instead of the paper's (which fine-tune a pre-trained ViT-B/16 for 5 epochs at
# 2e-4, batch 64). Measured on synthetic-au fold 1 with clef-tiny (conv stem, model.CONV_STEMS):
# 800 steps of 32 images at lr 1e-3 give held-out mean AU F1 88 (85 after the default pre-training);
# synthetic-fer reaches 98% accuracy after 300-400 steps. Batch 32 learned more per image seen than
# batch 64 (F1 48 vs 33 after 12.8k images). Milder augmentation than the paper's (crop 0.8-1 +
# rotation 10: FER accuracy 65 vs 94 after 600 steps). Each default applies only when not given.
# The warm-up matters at lr 1e-3: 0.5 epochs (17 steps on synthetic-fer) left the loss at chance for
# ~90 steps and ended at 62% FER accuracy; 70 steps gave 96%. Small models warm up for
# SMALL_MODEL_WARMUP_STEPS steps (rounded to epochs) unless --warmup-epochs is given.
SMALL_MODEL_STEPS = {"au": 800, "fer": 300}
SMALL_MODEL_WARMUP_STEPS = 80
SMALL_MODEL_LR = 1e-3
SMALL_MODEL_BATCH = 32
PAPER_BATCH = 64
PAPER_WARMUP_EPOCHS = 0.5
SMALL_MODEL_AUGMENT = {"scale": (0.9, 1.0), "rotation": 0.0}
PAPER_AUGMENT = {"scale": (0.8, 1.0), "rotation": 10.0}


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


def resolve_defaults(train: TrainConfig, arch: str, dataset: str, task: str, n_train: int,
                     world: int = 1) -> TrainConfig:
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


@dataclass
class FinetuneOptions:
    dataset: str = "synthetic-au"
    data_root: str | None = None
    dataset_root: str | None = None
    fold: int = 1                      # AU data sets: which subject fold to train on (1-based)
    folds: int | None = None           # number of folds (canonical count, 3, or 4 for BP4D+)
    init: str | None = None            # a pre-training run (name/folder) or "latest" (default)
    weights: str | None = None         # a weights file instead of a pre-training run
    arch: str = "clef-tiny"            # used only when starting from --weights or random
    trust_checkpoint: bool = False
    prompts: str | None = None         # prompt set name or a user's YAML (default: the data set's)
    lam: float = 2.0                   # lambda of Eq. 6
    no_descriptions: bool = False      # L_IN only (Table 6 "N")
    head: str = "text"                 # text | linear (Table 6 "I": no text encoder)
    class_weighting: bool = True       # w_c of Eq. 4-5 from training-fold frequencies
    crop_scale: float | None = None    # smallest random crop area (None: 0.8 paper, 0.9 small models)
    rotation: float | None = None      # max rotation in degrees (None: 10 paper, 0 small models)
    device: str | None = None
    workspace: str | None = None
    resume: str | None = None          # run name/folder, or "latest" (the newest unfinished run)
    overrides: frozenset[str] = frozenset()  # resuming: options given again (field names, train's too);
    #                                          every other option is the resumed run's own
    evaluate: bool = True              # score the held-out part after training
    # epochs, lr and batch None: the paper's, or clefctl's small-model defaults (see SMALL_MODEL_*)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=None, batch_size=None, warmup_epochs=None,
                                                                   lr=None))


class FinetuneTask:
    """Eq. 6 (text head) or Eq. 4/5 on a linear head's logits."""

    def __init__(self, model: ClefModel, prompts, task: str, weights: torch.Tensor | None,
                 lam: float, use_descriptions: bool, head: torch.nn.Module | None):
        self.model, self.prompts, self.task = model, prompts, task
        self.weights, self.lam, self.use_descriptions, self.head = weights, lam, use_descriptions, head
        self.name_tokens = model.tokenizer(prompts.name_texts())

    def modules(self):
        mods = {"clip": self.model.clip}
        if self.head is not None:
            mods["head"] = self.head
        return mods

    def loss(self, batch: dict, rng: random.Random):
        clip = self.model.clip
        x = batch["image"]
        device = x.device
        w = self.weights.to(device) if self.weights is not None else None
        zi = clip.encode_image(x)
        scale = clip.logit_scale.exp()
        if self.head is not None:
            # the same learnable 1/tau as the text head: unit features times a linear layer that
            # starts near 0 give logits of ~0.1 and a loss stuck at chance for hundreds of steps
            logits = self.head(scale * F.normalize(zi, dim=-1))
            if self.task == "fer":
                return fer_loss_from_logits(logits.float(), batch["label"], w), {}
            return au_loss_from_logits(logits.float(), batch["aus"], w, batch["au_mask"]), {}
        names = self.name_tokens.to(device)
        if not self.use_descriptions:
            zn = encode_text_trimmed(clip, names)
        else:  # names and this batch's descriptions in one pass of the text tower
            desc = self.model.tokenizer(self.prompts.description_texts(rng)).to(device)
            both = encode_text_trimmed(clip, torch.cat([names, desc]))
            zn, zd = both[:names.shape[0]], both[names.shape[0]:]
        if self.task == "fer":
            l_in = fer_loss(zi, zn, batch["label"], w, scale)
        else:
            l_in = au_loss(zi, zn, batch["aus"], w, scale, batch["au_mask"])
        if not self.use_descriptions:
            return l_in, {"l_in": l_in.detach()}
        l_dn = name_description_loss(zd, zn, scale)
        return finetune_loss(l_in, l_dn, self.lam), {"l_in": l_in.detach(), "l_dn": l_dn.detach()}


def _init_model(opts: FinetuneOptions, ws: Workspace) -> tuple[ClefModel, str, str | None]:
    """(model, description, init) with ``init`` the pre-training run actually used, by name (its folder
    when outside the workspace) instead of "latest": a resumed run starts from the same one."""
    if opts.weights:
        model = ws.resolve_model(opts.weights, arch=opts.arch).load(
            opts.device, seed=opts.train.seed, default_arch=opts.arch, trust_checkpoint=opts.trust_checkpoint)
        return model, f"weights {opts.weights}", opts.init
    if opts.init not in (None, "", "none"):
        choice = ws.resolve_model(opts.init, stages=("pretrain",),
                                  hint="run `clefctl pretrain` first, or pass --init none / --weights FILE")
        run = choice.run
        ref = run.name if run.path.parent == ws.stage_dir("pretrain") else str(run.path)
        return choice.load(opts.device), choice.description, ref
    model = ws.resolve_model("random", arch=opts.arch).load(opts.device, seed=opts.train.seed)
    return model, "random initialisation", opts.init


def validate_options(opts: FinetuneOptions) -> None:
    """ClefError for a setting no run can use (the train settings left at None are filled later)."""
    opts.train.validate()
    if opts.head not in ("text", "linear"):
        raise ClefError(f"unknown --head {opts.head!r}", hint="use text or linear")
    if not (isinstance(opts.lam, (int, float)) and 0 <= opts.lam < float("inf")):
        raise ClefError(f"--lam must be a finite number >= 0, got {opts.lam!r}")
    if not (isinstance(opts.fold, int) and opts.fold >= 1):
        raise ClefError(f"--fold must be an integer >= 1, got {opts.fold!r}")
    if opts.folds is not None and not (isinstance(opts.folds, int) and opts.folds >= 2):
        raise ClefError(f"--folds must be an integer >= 2, got {opts.folds!r}")
    augment_for(opts.arch, opts.crop_scale, opts.rotation)  # checks --crop-scale and --rotation


def split_for(bundle, opts: FinetuneOptions):
    """(train, test, folds-or-None, description) for the data set's protocol."""
    from clefctl.data.folds import make_folds, official_split

    if any(s.split for s in bundle.samples):
        train, test = official_split(bundle)
        return train, test, None, "official train/test split"
    k = opts.folds or (len(bundle.canonical_folds) if bundle.canonical_folds else DEFAULT_FOLDS.get(bundle.name, 3))
    folds = make_folds(bundle, k, seed=opts.train.seed)
    if not 1 <= opts.fold <= len(folds):
        raise ClefError(f"--fold {opts.fold} out of range: {bundle.name} has {len(folds)} folds")
    fold = folds[opts.fold - 1]
    from clefctl.data.folds import split_samples

    train, test = split_samples(bundle, fold)
    return train, test, folds, f"fold {fold.index} of {len(folds)} (subject-exclusive)"


def run_finetune(opts: FinetuneOptions) -> Run:
    """Train stage 2 and return the run; ``model.pt`` stores the class-name text embeddings.

    ``opts.resume`` continues an unfinished run (see ``Workspace.resume_target``) with its own options,
    but those named in ``opts.overrides``. Everything is checked before a run folder is created; the
    run's ``status.json`` then says running, finished, interrupted or failed, and the finished run's
    ``status.json`` and ``test_metrics.json`` count the unreadable training images skipped.
    """
    from clefctl.data import load_dataset
    from clefctl.data.records import SampleDataset
    from clefctl.data.transforms import transforms_for
    from clefctl.data.weights import class_weights
    from clefctl.prompts import load_prompts

    ws = Workspace(opts.workspace)
    resume_run = ws.resume_target("finetune", opts.resume) if opts.resume else None
    if resume_run is not None:
        opts = options_from_run(resume_run, opts)
    validate_options(opts)
    dist.setup_from_env()
    bundle = load_dataset(opts.dataset, root=opts.dataset_root, data_root=opts.data_root)
    if bundle.task not in ("au", "fer"):
        raise ClefError(f"data set {bundle.name} has no AU or expression labels to fine-tune on")
    prompts = load_prompts(opts.prompts or bundle.prompts or _need_prompts(bundle))
    prompts = prompts.subset(bundle.classes)
    train, test, folds, protocol = split_for(bundle, opts)
    if not train:
        raise ClefError(f"no training samples in {bundle.name} for {protocol}", path=bundle.root)
    model, init_desc, init = _init_model(opts, ws)
    opts = replace(opts, init=init)  # stored by name: a resume starts from the same run
    resolve_defaults(opts.train, model.arch, bundle.name, bundle.task, len(train), dist.world_size())
    check_batches(len(train), opts.train.batch_size, dist.world_size())
    weights = torch.as_tensor(class_weights(train, bundle.task, len(bundle.classes)), dtype=torch.float32) \
        if opts.class_weighting else None
    head = None
    if opts.head == "linear":
        torch.manual_seed(opts.train.seed)
        head = torch.nn.Linear(model.embed_dim, len(bundle.classes)).to(model.device)
    aug = augment_for(model.arch, opts.crop_scale, opts.rotation)
    dataset = SampleDataset(cache_images(train, model.image_size), transforms_for(model, train=True, **aug),
                            classes_count=len(bundle.classes), task=bundle.task)
    run = resume_run or ws.new_run("finetune", f"{bundle.name}-{opts.head}" + (f"-fold{opts.fold}" if folds else ""))
    if dist.is_main():
        _save_run_files(run, resume_run is not None, opts, bundle, prompts, folds, {
            "protocol": protocol, "init": init_desc, "arch": model.arch, "init_fingerprint": model.fingerprint,
            "train_samples": len(train), "test_samples": len(test),
            "class_weights": weights.tolist() if weights is not None else None})
    task = FinetuneTask(model, prompts, bundle.task, weights, opts.lam, not opts.no_descriptions, head)
    meta = {"stage": "finetune", "dataset": bundle.name, "task": bundle.task, "classes": bundle.classes,
            "head": opts.head, "fold": opts.fold if folds else None, "prompts_hash": prompts.hash,
            "run": run.name}
    with run.attempt(dist.is_main()):
        trainer = Trainer(model, task, opts.train, run, meta,
                          resume_flags="--trust-checkpoint" if opts.weights and opts.trust_checkpoint else "")
        resume_from = trainer.last_path if resume_run is not None and trainer.last_path.is_file() else None
        result = trainer.fit(dataset, resume_from=resume_from)
        if dist.is_main():
            report = {"epochs": result.epochs_done, "steps": result.global_step,
                      "skipped_train_images": result.skipped_images}
            _save_results(run, model, head, prompts, meta, report, test if opts.evaluate else [], bundle, protocol)
            run.mark("finished", **report)
            ws.set_latest(run)
    dist.barrier()
    return run


def _save_run_files(run: Run, resumed: bool, opts: FinetuneOptions, bundle, prompts, folds, info: dict) -> None:
    """config.yaml, prompts.yaml and folds.json of a new run; a resumed run's config.yaml gets the
    options in force from now on (those given again replaced)."""
    from clefctl.data.folds import save_folds

    if resumed:
        run.save_config({**run.config(), "options": options_to_config(opts)})
        return
    run.save_config({"stage": "finetune", "options": options_to_config(opts), "dataset": bundle.name,
                     "task": bundle.task, "classes": bundle.classes, **info, "prompts_hash": prompts.hash})
    prompts.save(run.path / "prompts.yaml")
    if folds:
        save_folds(folds, run.path / "folds.json", dataset=bundle.name, seed=opts.train.seed)


def _save_results(run: Run, model: ClefModel, head, prompts, meta: dict, report: dict, test, bundle,
                  protocol: str) -> None:
    """model.pt (with the name embeddings, or the linear head) and, with test samples, test_metrics.json
    (which also counts the unreadable training images skipped) and its ``test`` record in metrics.jsonl."""
    from clefctl.paths import write_json_atomic

    extras = {"name_embeddings": model.encode_texts(prompts.name_texts())}
    if head is not None:  # the logit scale folded in: logits = W' . unit feature + b
        extras["head_weight"] = head.weight.detach() * model.logit_scale.detach()
        extras["head_bias"] = head.bias.detach()
    save_checkpoint(run.model_path, model, dict(meta, **report), extras=extras)
    if test:
        scores = predict_scores(model, test, extras, bundle.task)
        summary = quick_metrics(test, scores, bundle.task, bundle.classes)
        summary.update(protocol=protocol, test_samples=len(test),
                       skipped_train_images=report["skipped_train_images"])
        write_json_atomic(run.path / "test_metrics.json", summary)
        run.log({"kind": "test", "step": report["steps"], **{k: v for k, v in summary.items()
                                                             if isinstance(v, (int, float))}})


def _need_prompts(bundle) -> str:
    raise ClefError(f"data set {bundle.name} has no shipped prompt set", path=bundle.root,
                    hint="pass --prompts my_prompts.yaml with one class per label")


@dataclass
class ScoredSamples:
    """What :func:`predict_scores` scored: ``scores`` (n, C) row-aligned with ``samples`` (the
    readable ones, in the given order); ``skipped`` the ids of the unreadable ones left out."""

    scores: np.ndarray
    samples: list
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.samples)


def predict_scores(model: ClefModel, samples, extras: dict, task: str, batch_size: int = 128,
                   progress: bool = False) -> ScoredSamples:
    """Class scores in [0, 1] of the readable ``samples``: softmax over names (FER) or sigmoid
    per AU (AU). An unreadable image is left out and its id listed in ``.skipped``, never scored
    with another image's prediction; row i of ``.scores`` belongs to ``.samples[i]``."""
    from clefctl.data.records import encode_readable
    from clefctl.data.transforms import transforms_for

    samples = list(samples)
    feats, kept, bad = encode_readable(model.encode_images, samples, transforms_for(model, train=False),
                                       batch_size)
    if feats is None:
        feats = torch.zeros(0, model.embed_dim)
    scores = scores_from_features(feats, extras, task, float(model.logit_scale.detach()))
    return ScoredSamples(scores, [samples[i] for i in kept], [samples[i].id for i in bad])


def scores_from_features(feats: torch.Tensor, extras: dict, task: str, logit_scale: float) -> np.ndarray:
    """Scores from cached unit image features: the store re-uses this without the image encoder."""
    if "head_weight" in extras:
        logits = feats @ extras["head_weight"].T.float() + extras["head_bias"].float()
    else:
        logits = logit_scale * feats @ F.normalize(extras["name_embeddings"].float(), dim=-1).T
    probs = torch.softmax(logits, dim=1) if task == "fer" else torch.sigmoid(logits)
    return probs.numpy()


def quick_metrics(samples, scores, task: str, classes: list[str]) -> dict:
    """Accuracy (FER) or mean F1 at 0.5 over coded entries (AU), in percent.

    ``scores`` is :func:`predict_scores`' result (its rows belong to its readable samples, a
    subset of ``samples``) or an (N, C) array row-aligned with ``samples``. The summary has
    ``n_samples`` (the images scored), ``skipped`` (unreadable ones left out) and ``skipped_ids``;
    the metrics are None when no image could be read.
    """
    from sklearn.metrics import f1_score

    skipped: list[str] = []
    if isinstance(scores, ScoredSamples):
        given = {s.id for s in samples}
        if any(s.id not in given for s in scores.samples):
            raise ValueError("the scored samples are not among the samples given")
        samples, skipped, scores = scores.samples, scores.skipped, scores.scores
    samples = list(samples)
    if len(samples) != len(scores):
        raise ValueError(f"{len(scores)} score rows for {len(samples)} samples")
    counts = {"n_samples": len(samples), "skipped": len(skipped), "skipped_ids": list(skipped)}
    if not samples:  # nothing readable: no metric rather than a made-up one
        return {"accuracy": None, "macro_f1": None, **counts} if task == "fer" else \
            {"mean_f1": None, "f1": {}, **counts}
    if task == "fer":
        y = np.array([s.label for s in samples])
        pred = scores.argmax(1)
        return {"accuracy": float((pred == y).mean() * 100),
                "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(len(classes)))) * 100),
                **counts}
    y = np.stack([s.aus for s in samples])
    m = np.stack([s.au_mask if s.au_mask is not None else np.ones_like(s.aus) for s in samples])
    pred = (scores > 0.5).astype(int)
    f1s = {c: float(f1_score(y[m[:, j] > 0, j], pred[m[:, j] > 0, j], zero_division=0) * 100)
           for j, c in enumerate(classes)}
    return {"mean_f1": float(np.mean(list(f1s.values()))), "f1": f1s, **counts}
