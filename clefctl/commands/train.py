"""``clefctl pretrain`` and ``clefctl finetune``: options -> clefctl.pretrain / clefctl.finetune.

Numeric options are range-checked here (and again by the library). With ``--resume`` the options
given on this command line (or by their environment variable) replace the resumed run's own; every
other option is the run's, whatever the defaults below say.
"""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from clefctl.commands.options import DATA, json_option, progress_option, shared_options
from clefctl.commands.types import NON_NEGATIVE, POSITIVE, Finite
from clefctl.engine import TrainConfig


# click parameter -> the options field it sets, where the names differ
_FIELDS = {"workers": "num_workers", "no_progress": "progress", "as_json": "progress",
           "no_class_weights": "class_weighting", "no_crop_cache": "crop_cache"}


def given_options(ctx: click.Context) -> frozenset[str]:
    """Option fields set on this command line or by environment variable (not left at the default):
    on ``--resume`` exactly these replace the run's own options."""
    out = {_FIELDS.get(name, name) for name in ctx.params
           if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    return frozenset(out)


def train_options(epochs: float | None, lr: float | None, warmup: float | None):
    """The engine's options, shared by both stages (defaults differ per stage)."""
    small = epochs is None  # fine-tuning: defaults depend on the architecture
    epochs_help = "Epochs (fractions allowed)." + (" Default: the paper's 5, or for clef-tiny/clef-small "
                                                   "(trained from scratch) enough for ~800 (AU) / 300 "
                                                   "(expression) steps." if small else "")

    def deco(f):
        opts = [
            click.option("--epochs", type=POSITIVE, default=epochs, show_default=epochs is not None, help=epochs_help),
            click.option("--batch-size", type=click.IntRange(min=1), default=None if small else 64,
                         show_default=not small,
                         help="Per-process batch size." + (" Default: the paper's 64, or 32 for clef-tiny/small."
                                                           if small else "")),
            click.option("--lr", type=POSITIVE, default=lr, show_default=lr is not None,
                         help="Peak learning rate (AdamW)." + ("" if lr is not None else
                                                              " Default: the paper's for the data set, or 1e-3 "
                                                              "for clef-tiny/small.")),
            click.option("--weight-decay", type=NON_NEGATIVE, default=0.01, show_default=True),
            click.option("--warmup-epochs", type=NON_NEGATIVE, default=warmup, show_default=warmup is not None,
                         help="Linear warm-up." + (" Default: 0.5 (the paper's setting here), or ~80 steps for "
                                                   "clef-tiny/small." if warmup is None else "")),
            click.option("--min-lr", type=NON_NEGATIVE, default=1e-6, show_default=True, help="Cosine decay floor."),
            click.option("--grad-clip", type=POSITIVE, default=None, help="Clip the gradient norm to this value."),
            click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
                         help="bf16 autocast; auto = on for CUDA and wide models on CPU."),
            click.option("--crop-scale", type=Finite(min=0, max=1, min_open=True), default=None,
                         help="Smallest random crop area (default 0.8 as in the paper; 0.9 for clef-tiny/small)."),
            click.option("--rotation", type=Finite(min=0, max=180), default=None,
                         help="Max random rotation in degrees (default 10 as in the paper; 0 for clef-tiny/small)."),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--workers", type=click.IntRange(min=0), default=None,
                         help="DataLoader workers (default: by machine)."),
            click.option("--max-steps", type=click.IntRange(min=1), default=None,
                         help="Stop after this many steps in total."),
            click.option("--resume", default=None, is_flag=False, flag_value="latest",
                         help="Continue an unfinished run exactly: --resume (the newest unfinished run) or "
                              "--resume RUN. The run keeps its own options but those given again here."),
            progress_option(),
            json_option(),
        ]
        for o in reversed(opts):
            f = o(f)
        return shared_options("device", "workspace")(f)
    return deco


def data_options(default: str):
    def deco(f):
        for o in reversed([
            click.option("--prompts", default=None, help="Prompt set name or your YAML (default: the data set's)."),
            click.option("--arch", default="clef-tiny", show_default=True,
                         help="Architecture (ViT-B-16-quickgelu with FaRL weights for the paper)."),
            click.option("--weights", default=None, help="Weights file (FaRL, OpenAI, open_clip, safetensors, clefctl),"
                                                          " a registry name such as farl-ep64 (clefctl weights "
                                                          "list; its architecture comes with it), an exported "
                                                          "folder, hf-hub:ORG/NAME or an open_clip pretrained tag."),
        ]):
            f = o(f)
        f = shared_options("trust_checkpoint", "crop_cache")(f)
        return shared_options(*DATA, dataset=default)(f)
    return deco


def _train_config(kw: dict) -> TrainConfig:
    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"],
                       warmup_epochs=kw["warmup_epochs"], min_lr=kw["min_lr"], grad_clip=kw["grad_clip"],
                       amp=kw["amp"], seed=kw["seed"], num_workers=kw["workers"], max_steps=kw["max_steps"],
                       progress=not kw["no_progress"] and not kw["as_json"])


def _report(run, as_json: bool, stage: str) -> None:
    """The summary of a finished run, from the run's own files (a resumed run's data set and init,
    not this command line's defaults), with the count of unreadable training images skipped.
    Under torchrun only rank 0 prints."""
    from clefctl.distributed import is_main

    if not is_main():
        return
    cfg = run.config()
    extra = {"stage": stage, "dataset": cfg.get("dataset")}
    if stage == "finetune":
        extra["init"] = cfg.get("init")
        metrics_file = run.path / "test_metrics.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text(encoding="utf-8"))
            extra.update({k: round(v, 2) for k, v in m.items() if k in ("accuracy", "macro_f1", "mean_f1")})
            extra["protocol"] = m.get("protocol")
    extra["skipped_train_images"] = int(run.status().get("skipped_train_images", 0))
    out = {"run": str(run.path), "model": str(run.model_path), **extra}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console

    c = Console()
    c.print(f"[green]done[/green]: {run.path}", soft_wrap=True)  # paths stay whole for copy and paste
    for k, v in extra.items():
        c.print(f"  {k}: {v}", soft_wrap=True)
    c.print(f"  checkpoint: {run.model_path}", soft_wrap=True)


@click.command("pretrain")
@data_options("synthetic-au")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Sample this many frames evenly over the tasks (the paper: 480000 of BP4D+).")
@click.option("--temperature", type=POSITIVE, default=0.25, show_default=True, help="Epsilon of Eq. 1.")
@click.option("--no-activity-text", is_flag=True, help="Ablation 'PI': image-image L_II only (Table 6).")
@train_options(epochs=5, lr=5e-4, warmup=1)
def pretrain(**kw) -> None:
    """Stage 1: activity-supervised cross-modal contrastive pre-training (Eq. 1-2).

    With no options: the embedded synthetic-au data and the clef-tiny model, sized for a CPU.

    \b
    Example: clefctl pretrain
    Paper:   clefctl pretrain --dataset bp4dplus --max-frames 480000 --arch ViT-B-16-quickgelu \\
               --weights FaRL-Base-Patch16-LAIONFace20M-ep64.pth --lr 5e-5 --epochs 5
    """
    from clefctl.pretrain import PretrainOptions, run_pretrain

    opts = PretrainOptions(dataset=kw["dataset"], data_root=kw["data_root"], dataset_root=kw["dataset_root"],
                           max_frames=kw["max_frames"], arch=kw["arch"], weights=kw["weights"],
                           trust_checkpoint=kw["trust_checkpoint"], prompts=kw["prompts"],
                           temperature=kw["temperature"], no_activity_text=kw["no_activity_text"],
                           crop_scale=kw["crop_scale"], rotation=kw["rotation"], device=kw["device"],
                           crop_cache=not kw["no_crop_cache"], workspace=kw["workspace"], resume=kw["resume"],
                           overrides=given_options(click.get_current_context()), train=_train_config(kw))
    run = run_pretrain(opts)
    _report(run, kw["as_json"], "pretrain")


@click.command("finetune")
@data_options("synthetic-au")
@click.option("--fold", type=click.IntRange(min=1), default=1, show_default=True,
              help="AU data sets: the fold to train (1-based).")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Number of subject folds (default: canonical, else 3).")
@click.option("--init", default="latest", show_default=True,
              help="Pre-training run to start from: latest, a run name/folder, or none.")
@click.option("--lam", type=NON_NEGATIVE, default=2.0, show_default=True, help="Lambda of Eq. 6.")
@click.option("--no-descriptions", is_flag=True, help="Ablation 'N': L_IN only, no name-description loss.")
@click.option("--head", type=click.Choice(["text", "linear"]), default="text", show_default=True,
              help="linear = ablation 'I': image encoder + linear classifier, no text.")
@click.option("--no-class-weights", is_flag=True, help="All w_c = 1 in Eq. 4-5.")
@train_options(epochs=None, lr=None, warmup=None)
def finetune(**kw) -> None:
    """Stage 2: fine-tune on AU or expression labels by contrasting images with label names (Eq. 3-6).

    Starts from the latest pre-training run unless --init or --weights says otherwise. AU data sets
    train on one subject fold (--fold); expression data sets use their official split.

    \b
    Example: clefctl finetune --dataset rafdb
             clefctl finetune --dataset synthetic-fer --epochs 3
    """
    from clefctl.finetune import FinetuneOptions, run_finetune

    cfg = _train_config(kw)  # None (lr, batch, epochs, warm-up): run_finetune picks by data set and arch
    init = kw["init"]
    given = given_options(click.get_current_context())
    if kw["weights"]:
        init = None
        given |= {"init"}
    opts = FinetuneOptions(dataset=kw["dataset"], data_root=kw["data_root"], dataset_root=kw["dataset_root"],
                           fold=kw["fold"], folds=kw["folds"], init=init, weights=kw["weights"], arch=kw["arch"],
                           trust_checkpoint=kw["trust_checkpoint"], prompts=kw["prompts"], lam=kw["lam"],
                           no_descriptions=kw["no_descriptions"], head=kw["head"],
                           class_weighting=not kw["no_class_weights"], crop_scale=kw["crop_scale"],
                           rotation=kw["rotation"], device=kw["device"], crop_cache=not kw["no_crop_cache"],
                           workspace=kw["workspace"], resume=kw["resume"], overrides=given, train=cfg)
    if init == "latest" and not (kw["resume"] and "init" not in given):  # a resumed run keeps its own init
        from clefctl.workspace import Workspace

        if Workspace(opts.workspace).latest("pretrain") is None:
            opts.init = None
            click.echo("note: no pre-training run in the workspace; starting from "
                       f"{'--weights' if opts.weights else 'a random ' + opts.arch}", err=True)
    run = run_finetune(opts)
    _report(run, kw["as_json"], "finetune")
