"""``clefctl embed``: fill an embedding store (a thin wrapper over :func:`clefctl.embed.run_embed`).

``embed`` writes the store of (model, image set) into a workspace folder named after both,
``<workspace>/embed/<image set>--<arch>-<hash>/store.h5``, so running it again resumes the same
file. ``query`` and ``rescore`` (:mod:`clefctl.commands.query`) read the latest such folder.
"""

from __future__ import annotations

import json

import click

from clefctl.commands.options import build, json_option, options_command


def summary_lines(res) -> list[str]:
    """The lines ``embed`` prints for an :class:`~clefctl.embed.EmbedResult`."""
    report = res.report
    if report.embedded_now == 0 and report.complete:
        now = "already complete"
    else:
        now = (f"{report.embedded_now} embedded now at {report.images_per_s:.1f} img/s"
               f"{', resumed after ' + str(report.resumed_from) if report.resumed_from else ''}")
    if "faces" in res.summary:  # photos and videos: one row per face
        now = now.replace("img/s", "faces/s")
        fps = f", {res.summary['fps']} frames/s" if res.summary.get("fps") else ""
        lines = [f"{report.rows} faces in {res.store_path} from {res.summary['frames']} frames of "
                 f"{res.summary['sources']} files ({res.summary['no_face_frames']} frames without a face, "
                 f"{report.skipped} unreadable files skipped; {now}{fps})"]
    else:
        lines = [f"{report.rows} images in {res.store_path} ({report.skipped} unreadable skipped; {now})"]
    if "index" in res.summary:
        lines.append(f"index: {res.summary['index']['kind']} over {res.summary['index']['rows']} rows")
    return lines


@options_command("embed", "clefctl.embed.run:EmbedOptions")
@click.argument("paths", nargs=-1)
@json_option("Print the report as JSON.")
def embed(paths, as_json, **kw) -> None:
    """Embed a data set's images, or every face of photos and videos, into a resumable HDF5 store
    (and build its FAISS index).

    PATH... (files, folders, globs, videos): one row per face per photo or sampled frame, with
    its source file, frame, timestamp, face id and box (the faces predict finds); `query` then
    shows where in which video each hit is.

    Killed runs continue from the last committed chunk when started again. Under torchrun each
    process embeds a shard and rank 0 merges them.

    With no options: the data set and checkpoint of the latest fine-tuning run.

    \b
    Example: clefctl embed
             clefctl embed --dataset synthetic-fer --weights random --arch clef-tiny
             clefctl embed interviews/ --every 5 --weights farl-ep64
    """
    from clefctl.embed.run import EmbedOptions, run_embed

    res = run_embed(build(EmbedOptions, kw, paths=tuple(paths), progress=not as_json))
    if not res.main:
        return
    if as_json:
        click.echo(json.dumps(res.summary, indent=2, default=str))
    else:
        for line in summary_lines(res):
            click.echo(line)
