"""``clefctl info``."""

from __future__ import annotations

import json

import click


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(as_json: bool) -> None:
    """Versions, device, FAISS build, prompt/cache/workspace locations, data sets and model configs.

    Example: clefctl info --json
    """
    from rich.console import Console
    from rich.table import Table

    from clefctl.info import collect

    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = Console()
    t = Table(title=f"clefctl {report['versions']['clefctl']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "clefctl"))
    dev = report["device"]
    gpu = ", ".join(dev["cuda_devices"]) if dev["cuda_available"] else "none (CUDA not available)"
    t.add_row("device", f"default {dev['default_device']}; GPUs: {gpu}; CPU threads {dev['cpu_threads']}")
    fa = report["faiss"]
    t.add_row("faiss", f"{fa.get('version')} ({fa.get('build')} build, {fa.get('gpus_visible', 0)} GPUs visible)"
              if fa.get("available") else f"not importable: {fa.get('error')}")
    fd = report.get("face_detector") or {}
    t.add_row("face detector", f"YuNet: {fd['yunet']}" if fd.get("yunet") else
              f"YuNet not downloaded (`{fd.get('hint', 'clefctl weights get yunet')}`): --detector auto fetches it "
              "on first use, else the Haar cascades run")
    for k, v in report["locations"].items():
        t.add_row(k.replace("_", " "), v)
    pr = report["prompts"]
    t.add_row("prompts", f"{pr['location']}: {', '.join(pr['sets'])}" if "sets" in pr else str(pr))
    ds = report["datasets"]
    if isinstance(ds, dict) and "error" not in ds:
        t.add_row("data sets", ", ".join(ds))
    else:
        t.add_row("data sets", str(ds))
    mo = report["models"]
    t.add_row("models", f"clefctl configs {', '.join(mo['clefctl_configs'])}; "
              f"{mo['open_clip_architectures']} open_clip architectures; paper: {mo['paper_architecture']}")
    console.print(t)
