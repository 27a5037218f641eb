"""Click parameter types shared by the commands: every number a command takes is checked here, before
it reaches arithmetic or native code.

``Finite`` is the one float type (``tests/test_cli_errors.py`` holds every float option of every
command to it): a finite number in a range, since click's FloatRange lets ``nan`` through and, when
unbounded, ``inf`` and ``1e999``. ``ByteSize`` reads memory sizes such as ``600MB`` or ``1.5TB`` with
:func:`clefctl.store.index.kinds.parse_size`. A bad value is click's usage error: one line, exit 2.
"""

from __future__ import annotations

import math

import click

from clefctl.errors import ClefError


class Finite(click.FloatRange):
    """A float in a range that is also finite (click's FloatRange lets nan and, unbounded, inf through)."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE = Finite(min=0, min_open=True)
NON_NEGATIVE = Finite(min=0)


class ByteSize(click.ParamType):
    """A memory size: ``600MB``, ``1.5GB``, ``2TB``, ``512MiB`` or a byte count -> the text itself
    (checked: a finite, positive size below 2**63 bytes); the library parses it again."""

    name = "size"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        from clefctl.store.index.kinds import parse_size

        try:
            parse_size(value)
        except ClefError as exc:
            self.fail(str(exc), param, ctx)
        return value
