"""The ``clefctl`` command line: a thin click group.

Each subcommand lives in ``clefctl/commands/<name>.py``, parses options and calls one
library module. Errors a user can fix (:class:`clefctl.errors.ClefError`, bad options,
missing files) end with one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from clefctl import __version__
from clefctl.errors import ClefError

# name -> "module:attribute"; imported only when the command runs or help lists it.
COMMANDS: dict[str, str] = {
    "info": "clefctl.commands.info:info",
    "data": "clefctl.commands.data:data",
    "pretrain": "clefctl.commands.train:pretrain",
    "finetune": "clefctl.commands.train:finetune",
    "evaluate": "clefctl.commands.evaluate:evaluate",
    "predict": "clefctl.commands.predict:predict",
    "explain": "clefctl.commands.explain:explain",
    "embed": "clefctl.commands.embed:embed",
    "query": "clefctl.commands.embed:query",
    "rescore": "clefctl.commands.embed:rescore",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(__version__, prog_name="clefctl")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """clefctl: CLEF facial action unit (AU) and expression (FER) models.

    \b
    The used-by sequence, each step reading the latest run of the one before:
      clefctl pretrain
      clefctl finetune --dataset rafdb
      clefctl evaluate --folds 3
      clefctl embed
      clefctl query "lip corner pulled up"

    Example: clefctl info
    """


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("CLEF_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group and map errors to exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    try:
        rv = cli.main(args=argv, prog_name="clefctl", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        exc.show()
        sys.exit(2)
    except ClefError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc.strerror or exc}: {exc.filename} (check the path)", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
