"""One way to show progress: every long job's rich progress bar comes from :func:`progress_bar`.

Bars go to stderr (stdout stays for results and ``--json``), are hidden when ``enabled`` is False,
and show a label, the bar, done/total, elapsed and remaining time, plus optional live fields.

Example::

    >>> from clefctl.ui import progress_bar
    >>> with progress_bar("embed", total=100, enabled=False) as bar:
    ...     bar.advance(10)
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Bar:
    """The handle a job updates: ``advance(n)``, ``update(**fields)``, ``stop()``."""

    _progress: object
    _task: object

    def advance(self, n: float = 1, **fields) -> None:
        self._progress.update(self._task, advance=n, **fields)

    def update(self, **fields) -> None:
        self._progress.update(self._task, **fields)

    def stop(self) -> None:
        self._progress.stop()


@contextlib.contextmanager
def progress_bar(label: str, total: float | None = None, *, enabled: bool = True, completed: float = 0,
                 fields: str | None = None, transient: bool = False, **initial) -> Iterator[Bar]:
    """A rich progress bar for one job.

    ``total`` None gives a spinner-like bar without an end; ``fields`` is a format string over
    the live fields (e.g. ``"loss {task.fields[loss]:.4f}"``) whose first values are ``initial``;
    ``transient`` clears the bar when the job ends.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    progress = Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=transient)
    with progress:
        task = progress.add_task(label, total=total, completed=completed, **initial)
        yield Bar(progress, task)


def say(line: str) -> None:
    """One line for the person at the terminal, on stderr (stdout stays for results and ``--json``)."""
    print(line, file=sys.stderr, flush=True)
