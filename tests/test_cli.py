"""The command line: every listed command works, errors are one line with exit code 2."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from clefctl.cli import COMMANDS, cli, main


def _all_commands():
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        yield [name], cmd
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield [name, sub], cmd.get_command(ctx, sub)


def test_help_lists_only_registered_commands_and_each_has_an_example():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.output
    for path, cmd in _all_commands():
        assert cmd is not None, path
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Example" in r.output, path


def test_info_json_is_truthful():
    r = CliRunner().invoke(cli, ["info", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    import faiss
    import torch

    assert info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert info["device"]["cuda_available"] == torch.cuda.is_available()
    assert info["faiss"]["build"] == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
    assert "bp4d" in info["prompts"]["sets"] and "rafdb" in info["datasets"]
    assert {"clef-tiny", "clef-small"} <= set(info["models"]["clefctl_configs"])
    from clefctl.data.crops import cache_base

    assert info["locations"]["crop_cache"] == str(cache_base())
    assert info["face_detector"]["yunet"] is None and "weights get yunet" in info["face_detector"]["hint"]  # none here


@pytest.mark.parametrize("argv, fragment", [
    (["--no-such-option"], "No such option"),
    (["finetune", "--dataset", "nosuchset"], "unknown data set 'nosuchset'"),
    (["pretrain", "--prompts", "/no/such/prompts.yaml", "--dataset", "rafdb", "--dataset-root", "/no/such/root"],
     "error:"),
    (["finetune", "--weights", "/no/such/weights.pt", "--dataset", "nosuchset"], "error:"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEF_WORKSPACE", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) <= 1
