"""``clefctl evaluate``: k-fold protocol, one checkpoint, or the Table 6 ablation."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import build, json_option, options_command, progress_option


@options_command("evaluate", "clefctl.evaluate:EvaluateOptions")
@progress_option()
@json_option("Print results.json's content.")
def evaluate(no_progress, as_json, **kw) -> None:
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

    from clefctl import reports
    from clefctl.evaluate import EvaluateOptions, run_evaluate

    out = run_evaluate(build(EvaluateOptions, kw, progress=not no_progress and not as_json))
    if not out.main:  # torchrun: rank 0 prints
        return
    console = Console()
    if out.ablation is not None:
        if as_json:
            click.echo(json.dumps(out.ablation, indent=2))
        else:
            console.print(reports.ablation_table(out.ablation, au_name="synthetic-au", fer_name="synthetic-fer"))
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
