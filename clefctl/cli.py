"""The ``clefctl`` command line: a thin click group.

Each subcommand lives in ``clefctl/commands/<name>.py``, parses options and calls one
library module. Errors a user can fix (:class:`clefctl.errors.ClefError`, bad options,
missing files) end with one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import warnings

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
    "weights": "clefctl.commands.weights:weights",
    "export": "clefctl.commands.export:export",
    "index": "clefctl.commands.index:index",
    "query": "clefctl.commands.query:query",
    "rescore": "clefctl.commands.query:rescore",
    "serve": "clefctl.commands.serve:serve",
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


_ERRNO_ADVICE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "not a directory",
}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, what to do."""
    code = exc.errno
    what = _ERRNO_ADVICE.get(code) or (exc.strerror or str(exc) or type(exc).__name__)
    where = exc.filename if exc.filename is not None else None
    if code == errno.EEXIST and where is not None and os.path.exists(where) and not os.path.isdir(where):
        return f"{where}: is a file, not a folder, and a folder is needed there (check the path)"  # --out file/x.h5
    if where is not None and getattr(exc, "filename2", None):
        where = f"{where} -> {exc.filename2}"
    text = f"{what}: {where}" if where is not None else what
    if code in (errno.ENOSPC, errno.EDQUOT):
        text += " (free some space, then run the same command again: finished work is kept and resumed)"
    elif code == errno.EROFS:
        text += " (write somewhere else, e.g. --workspace / --out on a writable disk)"
    elif code in (errno.EACCES, errno.EPERM):
        text += " (check the file's permissions or choose another location)"
    elif code in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        text += " (check the path)"
    elif where is None and exc.strerror is None:
        text = f"{type(exc).__name__}: {exc}"
    return text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line (``warning: ...``), without the source line of the library that warned."""
    stream = file or sys.stderr
    try:
        stream.write(f"warning: {message}\n")
    except (OSError, ValueError):  # a closed stderr: nothing to do
        pass


class _LineHandler(logging.Handler):
    """Log records of WARNING and above as the one ``warning: ...`` line (``error: ...`` for errors), on
    the stderr of the moment. Installed on the root logger before a command runs, so that a library's
    implicit ``logging.basicConfig()`` (open_clip logs through the root logger) finds a handler and adds
    none: records then never print as ``WARNING:clefctl.store:...``."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno < logging.ERROR else "error"
        try:
            sys.stderr.write(f"{level}: {record.getMessage()}\n")
        except (OSError, ValueError):  # a closed stderr: nothing to do
            pass


def _log_as_lines() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _LineHandler) for h in root.handlers):
        root.addHandler(_LineHandler())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group and map errors to exit codes.

    The one error boundary: user-fixable problems (:class:`ClefError`, bad options, any
    ``OSError`` such as a missing file, a full or read-only disk, text that is not valid UTF-8)
    print one line on stderr and exit 2 (``Interrupted``: 130); programming errors keep their
    traceback. ``--debug`` (or ``CLEF_DEBUG=1``) re-raises everything.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    if not debug:
        warnings.showwarning = _show_warning
        _log_as_lines()
    try:
        rv = cli.main(args=argv, prog_name="clefctl", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
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
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if debug:
            raise
        click.echo(f"error: {os_error_message(exc)}", err=True)
        sys.exit(2)
    except UnicodeError as exc:
        if debug:
            raise
        click.echo(f"error: text that is not valid {getattr(exc, 'encoding', 'UTF-8')} ({exc}) "
                   "(save the file as UTF-8)", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
