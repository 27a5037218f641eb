"""``clefctl evaluate``: k-fold protocol, one checkpoint, or the Table 6 ablation."""

from __future__ import annotations

import json

import click

from clefctl.commands.types import POSITIVE


@click.command("evaluate")
@click.option("--folds", "k", type=int, default=None,
              help="Subject-exclusive folds (default: the data set's canonical count, else 3).")
@click.option("--config", default=None, help="Fine-tuning run whose settings to use (default: the latest).")
@click.option("--dataset", default=None, help="Evaluate on this data set instead of the run's.")
@click.option("--checkpoint", default=None, type=click.Path(),
              help="Evaluate one fine-tuned model.pt (or a folder from clefctl export) instead of running the folds.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "train", "val", "all"]),
              help="With --checkpoint: the split to score.")
@click.option("--tune-thresholds", is_flag=True,
              help="Also report per-AU thresholds tuned on each TRAINING fold (labelled row).")
@click.option("--ablation", is_flag=True, help="Run the Table 6 grid (PA, PI, I, N, D) on synthetic-au/-fer.")
@click.option("--epochs", type=POSITIVE, default=None, help="Ablation: epochs per run (default: the stages').")
@click.option("--trust-checkpoint", is_flag=True,
              help="--checkpoint: allow full unpickling of a trusted file (never taken from a config file).")
@click.option("--data-root", default=None, envvar="CLEF_DATA_ROOT")
@click.option("--dataset-root", default=None)
@click.option("--no-crop-cache", is_flag=True,
              help="Read the full frames even when a face-crop cache is ready (clefctl data prepare).")
@click.option("--device", default=None)
@click.option("--workspace", default=None, envvar="CLEF_WORKSPACE")
@click.option("--no-progress", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print results.json's content.")
def evaluate(k, config, dataset, checkpoint, split, tune_thresholds, ablation, epochs, trust_checkpoint, data_root,
             dataset_root, no_crop_cache, device, workspace, no_progress, as_json) -> None:
    """Evaluate as the paper does: per-AU F1 (fold mean and pooled) or accuracy, tables and plots.

    Runs one fine-tuned model per subject fold with the settings of the latest fine-tuning run
    (reusing fold runs that already exist with the same settings) and writes results.json,
    per_fold.csv, predictions.csv and PNG plots into a new run folder under <workspace>/evaluate.

    \b
    Example: clefctl evaluate --folds 3
             clefctl evaluate --checkpoint clef_runs/finetune/RUN/model.pt --split test
             clefctl evaluate --ablation --epochs 1
    """
    from rich.console import Console

    from clefctl import evaluate as ev
    from clefctl import reports

    console = Console()
    if ablation:
        rows = ev.run_ablation(workspace=workspace, progress=not no_progress and not as_json,
                               train_overrides={"epochs": epochs} if epochs else None)
        from clefctl.distributed import is_main

        if not is_main():  # torchrun: every rank trained the grid; rank 0 prints it
            return
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            console.print(reports.ablation_table(rows, au_name="synthetic-au", fer_name="synthetic-fer"))
        return
    if checkpoint:
        out = ev.evaluate_checkpoint(checkpoint, dataset, split, workspace, data_root, dataset_root, device,
                                     trust_checkpoint=trust_checkpoint, crop_cache=not no_crop_cache)
    else:
        out = ev.evaluate_kfold(k, config, workspace, dataset, data_root, dataset_root, tune_thresholds, device,
                                progress=not no_progress and not as_json, crop_cache=not no_crop_cache)
    if out.run is None:  # torchrun: rank 0 prints
        return
    if as_json:
        click.echo(json.dumps(reports.jsonable(out.result), indent=2))
        return
    task = out.result.get("task", "au")
    if task == "au":  # the paper's layout when it fits the terminal, one row per AU when not
        narrow = console.width < reports.au_table_width(out.result)
        console.print(reports.au_table(out.result, transpose=narrow))
    else:
        console.print(reports.fer_table(out.result))
    console.print(f"report folder: {out.run.path}", soft_wrap=True)
    for name, path in out.files.items():
        console.print(f"  {name}: {path}", soft_wrap=True)
