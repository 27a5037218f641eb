"""``clefctl weights list|get|verify``: the registry of named weights (clefctl.weights)."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import json_option, progress_option


def _size(n) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


@click.group("weights")
def weights() -> None:
    """Named weights: list them, download them with checks, verify a file.

    Names work wherever weights are taken (--weights farl-ep64). Files go to $CLEF_WEIGHTS_DIR
    (default <cache>/weights); $CLEF_WEIGHTS_MIRROR (a base URL) fetches <mirror>/<file name>.

    \b
    Example: clefctl weights list
             clefctl weights get farl-ep64
             clefctl weights verify farl-ep64
    """


@weights.command("list")
@json_option("Print the registry as JSON.")
def list_cmd(as_json: bool) -> None:
    """The registry: name, architecture, size and sha256 (where known), downloaded or not.

    FaRL publishes no checksums: their size and sha256 are recorded at the first download
    (checksums.json in the weights folder) and checked on every later download and verify.

    Example: clefctl weights list --json
    """
    from clefctl.weights import registry

    rows = [registry.describe(registry.entry(n)) for n in registry.names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"named weights in {registry.weights_dir()}")
    for col in ("name", "arch", "size", "sha256", "downloaded"):
        t.add_column(col, no_wrap=col in ("name", "arch"))
    for r in rows:
        sha = f"{r['sha256'][:12]}... ({r['checksum']})" if r["sha256"] else "unknown *"
        t.add_row(r["name"], r["arch"] or f"({r['purpose']})", _size(r["size"]), sha, "yes" if r["path"] else "no")
    c = Console()
    c.print(t)
    if any(r["sha256"] is None for r in rows):
        c.print("* not published: size and sha256 are recorded at the first download and checked after it")
    for r in rows:
        c.print(f"{r['name']}: {r['description']}; {r['url']}" + (f"; at {r['path']}" if r["path"] else ""),
                soft_wrap=True)


@weights.command("get")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even when the file is there (it must still match).")
@progress_option()
@json_option()
def get_cmd(name: str, force: bool, no_progress: bool, as_json: bool) -> None:
    """Download NAME into the weights folder, resuming a broken download, checking size and sha256.

    The file is written to <file>.part and renamed only after the check; a download that differs
    from the recorded checksum is refused (exit 2) and the file already there is left as it was.

    \b
    Example: clefctl weights get farl-ep64
             CLEF_WEIGHTS_MIRROR=https://mirror.example.org/farl clefctl weights get farl-ep64
    """
    from clefctl.weights import download, registry

    res = download.get(registry.entry(name), force=force, progress=not (no_progress or as_json))
    out = {"name": res.name, "path": str(res.path), "size": res.size, "sha256": res.sha256, "status": res.status,
           "checksum": res.checksum, "url": res.url, "resumed_from": res.resumed_from}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    what = {"downloaded": "downloaded", "present": "already there, checked", "recorded": "already there"}[res.status]
    click.echo(f"{res.name}: {what}: {res.path}")
    note = {"recorded-now": "recorded now in checksums.json", "published": "matches the published checksum",
            "matches-record": "matches the checksum recorded at the first download",
            "open_clip": "fetched and checked by open_clip"}[res.checksum]
    click.echo(f"  size {res.size}, sha256 {res.sha256} ({note})")


@weights.command("verify")
@click.argument("ref")
@json_option("Print the report as JSON.")
def verify_cmd(ref: str, as_json: bool) -> None:
    """Size, sha256, detected format and architecture of FILE, NAME, an exported folder or hf-hub:ORG/NAME.

    A registry file is also checked against its published or recorded checksum: a mismatch
    exits with status 2.

    \b
    Example: clefctl weights verify farl-ep64
             clefctl weights verify ~/Downloads/FaRL-Base-Patch16-LAIONFace20M-ep64.pth --json
    """
    from clefctl.errors import ClefError
    from clefctl.weights.verify import verify

    rep = verify(ref)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo(f"{rep['path']}")
        click.echo(f"  size {rep['size']} ({_size(rep['size'])}), sha256 {rep['sha256']}")
        click.echo(f"  format {rep['format']}, detected {rep['source']}, architecture "
                   f"{', '.join(rep['arch']) or 'unknown'}")
        if rep.get("note"):
            click.echo(f"  {rep['note']}")
        if rep.get("clefctl"):
            click.echo("  clefctl: " + ", ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                                                 for k, v in rep["clefctl"].items()))
        if rep.get("matches") is True:
            click.echo(f"  matches the {rep['checksum']} checksum")
        elif rep.get("matches") is None and rep.get("name") and rep.get("checksum") is None:
            click.echo("  no checksum recorded yet (`clefctl weights get` records it)")
    if rep.get("matches") is False:
        exp = rep.get("expected", {})
        raise ClefError(f"differs from its {rep['checksum']} checksum (expected size {exp.get('size')}, "
                        f"sha256 {exp.get('sha256')})", path=rep["path"],
                        hint=f"it is corrupt or another file: `clefctl weights get {rep['name']} --force`")
    if rep.get("format") == "unreadable":
        raise ClefError(f"not a weights file clefctl can read: {rep.get('note')}", path=rep["path"])
