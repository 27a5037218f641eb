"""CLEF stage 2: text-driven fine-tuning (paper section 3.2, Eq. 3-6), a stage of clefctl.engine.

Images are contrasted with the text features of the label names ("a photo of a person with
{name}."): Eq. 4 (expressions, softmax over names) or Eq. 5 (AUs, a sigmoid per name), plus the
name-description loss Eq. 3 with one random description per class and one random template per
batch; the total is Eq. 6, ``(lam * L_IN + L_DN) / 2``. Prediction (:mod:`clefctl.scoring`, from
the name embeddings saved in ``model.pt``) is the most similar label name (FER) or
``sigmoid(logit_scale * image . name) > 0.5`` per AU.

Ablations of Table 6: ``no_descriptions`` (L_IN alone, the "N" rows) and ``head="linear"`` (the
image encoder + a linear classifier, no text: the "I" rows).

Example::

    >>> from clefctl.finetune import FinetuneOptions, run_finetune
    >>> run = run_finetune(FinetuneOptions(dataset="synthetic-fer"))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from clefctl import distributed as dist
from clefctl.engine import Stage, StagePlan, TrainConfig, check_batches, run_stage
from clefctl.errors import ClefError
from clefctl.losses import (au_loss, au_loss_from_logits, fer_loss, fer_loss_from_logits, finetune_loss,
                            name_description_loss)
from clefctl.model import ClefModel, encode_text_trimmed, save_checkpoint
from clefctl.recipes import DEFAULT_FOLDS, augment_for, resolve_defaults
from clefctl.workspace import Run, Workspace


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
    crop_cache: bool = True            # read a complete face-crop cache when there is one (clefctl data prepare)
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
    # epochs, lr and batch None: the paper's, or clefctl's small-model defaults (clefctl.recipes)
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
        if run is None:  # --init names a run; no run folder of that name or path
            raise ClefError(f"no pretrain run named {opts.init!r}", path=ws.stage_dir("pretrain"),
                            hint="give a run folder, a run name, or 'latest'")
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


def prepare(opts: FinetuneOptions, ws: Workspace) -> StagePlan:
    """Stage 2's training part of the data set (from memory when small), model and Eq. 6 (or linear head) task."""
    from clefctl.data.crops import crop_cache_for
    from clefctl.data.images import decode_size_for
    from clefctl.data.dataset import SampleDataset
    from clefctl.data.records import cache_images
    from clefctl.data.transforms import transforms_for
    from clefctl.data.class_weights import class_weights

    bundle, prompts, (train, test, folds, protocol) = _load_data(opts)
    model, init_desc, init = _init_model(opts, ws)
    opts = replace(opts, init=init)  # stored by name: a resume starts from the same run
    crops = crop_cache_for(bundle, model.image_size, opts.crop_cache)
    test_left: list[str] = []       # held-out frames without a face crop: counted with the unreadable ones
    if crops:
        train = crops.apply(train)
        test, test_left = crops.partition(test, what="held-out")
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
                            classes_count=len(bundle.classes), task=bundle.task,
                            decode_size=decode_size_for(model.image_size))
    task = FinetuneTask(model, prompts, bundle.task, weights, opts.lam, not opts.no_descriptions, head)
    config = {"dataset": bundle.name, "task": bundle.task, "classes": bundle.classes, "protocol": protocol,
              "init": init_desc, "arch": model.arch, "init_fingerprint": model.fingerprint,
              "train_samples": len(train), "test_samples": len(test),
              "class_weights": weights.tolist() if weights is not None else None, "prompts_hash": prompts.hash,
              "crop_cache": crops.describe() if crops else None}
    meta = {"stage": "finetune", "dataset": bundle.name, "task": bundle.task, "classes": bundle.classes,
            "head": opts.head, "fold": opts.fold if folds else None, "prompts_hash": prompts.hash}

    def save_results(run: Run, meta: dict, report: dict) -> None:
        _save_results(run, model, head, prompts, meta, report, test if opts.evaluate else [], bundle, protocol,
                      test_left)

    def write_folds(run: Run) -> None:
        from clefctl.data.folds import save_folds

        if folds:
            save_folds(folds, run.path / "folds.json", dataset=bundle.name, seed=opts.train.seed)
    label = f"{bundle.name}-{opts.head}" + (f"-fold{opts.fold}" if folds else "")
    return StagePlan(opts, model, task, dataset, label, config, prompts, meta, save_results, write_folds)


def _load_data(opts: FinetuneOptions):
    """(bundle, its prompt set, (train, test, folds, protocol)); ClefError when it cannot fine-tune."""
    from clefctl.data import load_dataset
    from clefctl.prompts import load_prompts

    bundle = load_dataset(opts.dataset, root=opts.dataset_root, data_root=opts.data_root)
    if bundle.task not in ("au", "fer"):
        raise ClefError(f"data set {bundle.name} has no AU or expression labels to fine-tune on")
    prompts = load_prompts(opts.prompts or bundle.prompts or _need_prompts(bundle))
    if prompts.task != bundle.task:  # AU prompts on expression labels (or the reverse) train the wrong loss
        raise ClefError(f"prompt set {opts.prompts or prompts.dataset} is for task {prompts.task}, but "
                        f"{bundle.name} has {bundle.task} labels", hint=f"give a prompt set with task: {bundle.task}"
                        + (f" (e.g. --prompts {bundle.prompts})" if bundle.prompts else ""))
    prompts = prompts.subset(bundle.classes)
    split = split_for(bundle, opts)
    if not split[0]:
        raise ClefError(f"no training samples in {bundle.name} for {split[3]}", path=bundle.root)
    return bundle, prompts, split


STAGE = Stage("finetune", validate_options, prepare)


def run_finetune(opts: FinetuneOptions) -> Run:
    """Train stage 2 and return the run; ``model.pt`` stores the class-name text embeddings.

    ``opts.resume`` continues an unfinished run (see ``Workspace.resume_target``) with its own options,
    but those named in ``opts.overrides``. Everything is checked before a run folder is created; the
    run's ``status.json`` then says running, finished, interrupted or failed (:func:`clefctl.engine.run_stage`),
    and the finished run's ``status.json`` and ``test_metrics.json`` count the unreadable training
    images skipped.
    """
    return run_stage(STAGE, opts)


def _save_results(run: Run, model: ClefModel, head, prompts, meta: dict, report: dict, test, bundle,
                  protocol: str, test_left: list[str] = ()) -> None:
    """model.pt (with the name embeddings, or the linear head) and, with test samples, test_metrics.json
    (which also counts the unreadable training images skipped; its ``skipped`` counts the held-out images
    left out: unreadable, or ``test_left``, without a face crop) and its ``test`` record in metrics.jsonl.
    Called on every rank: under torchrun the held-out images are scored in shards, one per rank
    (:func:`clefctl.scoring.predict_scores`), and rank 0 writes the files."""
    from clefctl.paths import write_json_atomic
    from clefctl.scoring import predict_scores, quick_metrics

    extras = {"name_embeddings": model.encode_texts(prompts.name_texts())}
    if head is not None:  # the logit scale folded in: logits = W' . unit feature + b
        extras["head_weight"] = head.weight.detach() * model.logit_scale.detach()
        extras["head_bias"] = head.bias.detach()
    if dist.is_main():
        save_checkpoint(run.model_path, model, dict(meta, **report), extras=extras)
    if not test:
        return
    scores = predict_scores(model, test, {k: v.cpu() for k, v in extras.items()}, bundle.task)
    scores.skipped.extend(test_left)
    if not dist.is_main():
        return
    summary = quick_metrics(test, scores, bundle.task, bundle.classes)
    summary.update(protocol=protocol, test_samples=len(test), skipped_train_images=report["skipped_train_images"])
    write_json_atomic(run.path / "test_metrics.json", summary)
    run.log({"kind": "test", "step": report["steps"], **{k: v for k, v in summary.items()
                                                         if isinstance(v, (int, float))}})


def _need_prompts(bundle) -> str:
    raise ClefError(f"data set {bundle.name} has no shipped prompt set", path=bundle.root,
                    hint="pass --prompts my_prompts.yaml with one class per label")
