"""Text from run files made safe for spreadsheets (CSV cells) and terminals (control characters).

Run names, expert names and attributes are user-controlled: a CSV cell ``=HYPERLINK(...)`` runs as a
formula in a spreadsheet, and an ESC in a name printed raw drives the terminal.
"""

from __future__ import annotations

import csv
import io
import numbers
import re
from typing import IO, Any, Iterable

__all__ = ["csv_cell", "csv_row", "csv_writer", "SafeCsvWriter", "terminal", "terminal_lines", "FORMULA_PREFIXES"]

# OWASP "CSV injection": a cell starting with one of these is read as a formula by spreadsheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# C0, DEL, C1, and the bidirectional overrides/isolates that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_NO_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: a string starting with = + - @ TAB or CR gets a leading ``'``.

    Numbers (int, float, numpy scalars, bool; negative ones too) and None are returned unchanged;
    bytes are decoded; anything else becomes its ``str``.
    """
    if value is None or isinstance(value, numbers.Number):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_row(values: Iterable[Any]) -> list[Any]:
    """``csv_cell`` of every value, for ``csv.writer.writerow``."""
    return [csv_cell(v) for v in values]


class SafeCsvWriter:
    """``csv.writer`` whose rows go through ``csv_row`` and end in ``\\n``; a cell holding CR or LF is quoted.

    (``csv.writer(lineterminator="\\n")`` leaves a cell with a bare CR unquoted: a new row for a reader.)
    """

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\r\n")  # quotes cells holding CR or LF

    def writerow(self, values: Iterable[Any]) -> None:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerow(csv_row(values))
        self._fh.write(self._buf.getvalue()[:-2] + "\n")

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: IO[str]) -> SafeCsvWriter:
    """A ``SafeCsvWriter`` on the text stream ``fh`` (open files with ``newline=""``)."""
    return SafeCsvWriter(fh)


def _escape(match: re.Match) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal(value: Any) -> str:
    """``str(value)`` with every control character (C0 incl. newline and tab, DEL, C1) shown as an escape.

    ESC becomes ``\\x1b``, newline ``\\n``; backslashes are left as they are (paths stay readable).
    """
    return _CONTROL.sub(_escape, str(value))


def terminal_lines(text: Any) -> str:
    """``terminal`` for a multi-line report the library formatted: line breaks are kept."""
    return _CONTROL_NO_NL.sub(_escape, str(text))
