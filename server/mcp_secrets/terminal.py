"""What the CLI shows: tables and lines on stdout, escaped, and a progress bar on stderr.

stdout carries only what a script captures, and a failure to write it is an error of the command;
stored names may hold anything, so every cell is escaped before a terminal sees it.
"""

from __future__ import annotations

import errno
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from mcp_secrets.logs import say, stderr_is_a_terminal


class UnwritableOutput(Exception):  # noqa: N818 - named for what happened, as Terminated is
    """stdout could not be written (``error`` says why): a command's output did not all reach it."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def printable(text: str) -> str:
    """``text`` with control characters escaped: a stored field must not move an admin's terminal cursor."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, block: int | None = None) -> None:
    """A plain table on stdout, its cells escaped, each column as wide as its widest cell.

    Two spaces always separate the columns: a gateway use names several keys, and a fixed width
    let a long cell run into the next one. With ``block``, rows are printed as they come, that many at
    a time, each column as wide as its widest cell so far: a long listing is never held whole.
    """
    widths = [0] * len(header)
    pending = iter(rows)
    first = [header]
    while True:
        shown = [[printable(cell) for cell in row] for row in (*first, *itertools.islice(pending, block))]
        if not shown:
            break
        columns = zip(*shown, strict=True)
        widths = [max(width, *map(len, column)) for width, column in zip(widths, columns, strict=True)]
        lines = []
        for row in shown:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
            line = "  ".join([*cells, row[-1]])
            lines.append(line if row[-1] else line.rstrip())
        write_out(lines)
        if block is None or len(shown) < block + len(first):
            break
        first = []


def write_out(lines: Iterable[str]) -> None:
    """Print ``lines`` on stdout and flush them: every command's output, an error if it cannot be written.

    A closed stdout (``>&-``) made ``list``, ``audit`` and ``token list`` print nothing and exit 0.
    """
    if sys.stdout is None:  # started with stdout closed, where print drops what it is given
        raise UnwritableOutput(OSError(errno.EBADF, "stdout is closed"))
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except OSError as exc:  # only these: an OSError raised anywhere else is no output error
        raise UnwritableOutput(exc) from None


@contextmanager
def progress_bar(unit: str = "records") -> Iterator[Callable[[int, int], None]]:
    """A bar redrawn in place on a terminal; elsewhere (logs, CI) a line at each tenth."""
    shown = {"tenth": -1}
    line_open = False

    def show(done: int, total: int) -> None:
        nonlocal line_open
        total = max(total, 1)
        if stderr_is_a_terminal():
            width = 30
            filled = width * done // total
            end = "\n" if done >= total else ""
            say(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}", end=end)
            line_open = not end
        elif done * 10 // total > shown["tenth"]:
            shown["tenth"] = done * 10 // total
            say(f"{done}/{total} {unit}")

    try:
        yield show
    finally:
        # Stopped short of the total (an error, or records deleted meanwhile): what follows needs a line.
        if line_open:
            say()
