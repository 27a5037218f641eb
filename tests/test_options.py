"""Every number a command takes is checked at the command line (issue 22, item 7): a float option is a
finite number in its range, a size is a finite size (TB included), and a bad one ends in one line and
exit 2 before anything reaches arithmetic or native code."""

from __future__ import annotations

import click
import pytest

from clefctl import cli
from clefctl.commands.types import Finite
from clefctl.errors import ClefError
from clefctl.store.index.kinds import parse_size


def _every_command():
    out = []

    def walk(path, cmd):
        out.append((" ".join(path), cmd))
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(path + [name], cmd.get_command(ctx, name))

    for name in sorted(cli.COMMANDS):
        walk([name], cli.cli.get_command(click.Context(cli.cli), name))
    return out


def test_every_float_option_of_every_command_is_finite():
    loose = [f"{path} --{p.name}" for path, cmd in _every_command() for p in cmd.params
             if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, Finite)]
    assert not loose, f"float options that let nan/inf through: {loose}"


@pytest.mark.parametrize("args", [
    ["index", "build", "--budget", "nan"],
    ["index", "build", "--budget", "inf"],
    ["index", "build", "--budget", "1e999GB"],
    ["index", "build", "--budget", "-3MB"],
    ["index", "build", "--recall", "nan"],
    ["data", "prepare", "in", "--out", "o", "--margin", "nan"],
    ["data", "prepare", "in", "--out", "o", "--margin", "inf"],
    ["data", "prepare", "in", "--out", "o", "--size", "100000"],
    ["serve", "--max-upload-mb", "nan"],
    ["serve", "--max-upload-mb", "inf"],
    ["evaluate", "--epochs", "nan"],
    ["predict", "in.jpg", "--smooth", "inf"],
])
def test_bad_numbers_are_one_usage_line(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and f"'{args[-2]}'" in errors[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "clef_runs").exists()


def test_sizes_take_terabytes_and_refuse_non_finite():
    assert parse_size("10TB") == 10 * 10**12
    assert parse_size("1.5TiB") == int(1.5 * 2**40)
    assert parse_size("600MB") == 600 * 10**6
    for bad in ("nan", "inf", "1e999GB", "1e19", "0", "tenMB"):
        with pytest.raises(ClefError):
            parse_size(bad)


def test_serve_library_refuses_a_non_finite_upload_limit():
    from clefctl.serve.server import ServeOptions, run_serve

    with pytest.raises(ClefError, match="max-upload-mb"):
        run_serve(ServeOptions(store="s.h5", max_upload_mb=float("nan")))
