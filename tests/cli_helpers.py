"""Running clefctl in-process through its one error boundary (``clefctl.cli.main``), for tests."""

from __future__ import annotations

import pytest

from clefctl import cli


def run_cli(args, capsys):
    """clefctl ``args`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err
