"""``clefctl export``: a trained model as an open_clip Hub folder with a model card."""

from __future__ import annotations

import json

import click


@click.command("export")
@click.argument("run", required=False)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (new or empty).")
@click.option("--force", is_flag=True, help="Replace --out when it is not empty.")
@click.option("--workspace", default=None, envvar="CLEF_WORKSPACE", help="Run folders (default ./clef_runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(run, out, force, workspace, as_json) -> None:
    """Export RUN (default: the latest fine-tuning run) for sharing on the Hugging Face Hub.

    Writes open_clip_model.safetensors, open_clip_config.json, clefctl.json (task, classes,
    class-name embeddings, thresholds, provenance), prompts.yaml and README.md (a model card with
    the run's evaluation when there is one). --weights FOLDER loads it in predict, embed, explain
    and finetune; once uploaded, so does --weights hf-hub:ORG/NAME.

    \b
    Example: clefctl export --out exported/clef-bp4d-au
             huggingface-cli upload my-lab/clef-bp4d-au exported/clef-bp4d-au
    """
    from clefctl.export import export_model

    res = export_model(run, out, workspace=workspace, force=force)
    summary = {"out": str(res.out), "files": res.files, "run": res.run, "evaluation": res.evaluation,
               "fingerprint": res.fingerprint}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"exported {res.run or 'the checkpoint'} to {res.out}: {', '.join(res.files)}")
    if res.evaluation is None:
        click.echo("note: no `clefctl evaluate` report for this run, so the model card has no evaluation table",
                   err=True)
    click.echo(f"share it: huggingface-cli upload ORG/NAME {res.out}")
