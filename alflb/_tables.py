"""One writer for every table alflb produces: CSV files, Markdown tables, terminal tables.

A float is written in one format everywhere (:data:`CSV_FLOAT`, enough digits to read the
number back to the bit for the values the project stores; 17 significant digits would
round-trip every double but make the files hard to read); ``None`` is an empty cell.
Markdown cells escape ``|`` so a formula such as ``max|A - c|`` never splits a row.

>>> print(csv_text([{"rule": "sign", "maxvio": 0.25}, {"rule": "none", "maxvio": None}]), end="")
rule,maxvio
sign,0.25
none,
>>> print(markdown_table([{"check": "T3", "statement": "max|A - c| <= n"}]))
| check | statement |
|---|---|
| T3 | max\\|A - c\\| <= n |
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CSV_FLOAT", "csv_text", "format_cell", "markdown_table", "text_table"]

CSV_FLOAT = ".10g"


def format_cell(value: Any, float_format: str = CSV_FLOAT) -> str:
    """The text of one cell: floats in ``float_format``, ``None`` empty, the rest ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, float_format)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return format_cell(value.item(), float_format)
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV of ``rows`` (header first); columns default to the keys in order of appearance."""
    cols = _columns(rows, columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in cols])
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                   headers: Sequence[str] | None = None, float_format: str = ".4g",
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``|`` inside cells is escaped.

    ``align`` gives one of ``"l"``, ``"r"``, ``"c"`` or ``""`` per column.
    """
    cols = _columns(rows, columns)
    heads = list(headers) if headers is not None else cols
    marks = {"l": ":---", "r": "---:", "c": ":---:", "": "---"}
    rule = [marks[a] for a in align] if align is not None else ["---"] * len(cols)
    lines = ["| " + " | ".join(_md_escape(h) for h in heads) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        cells = [_md_escape(format_cell(row.get(c), float_format)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
               headers: Sequence[str] | None = None, float_format: str = ".4g") -> str:
    """A fixed-width table for a terminal: first column left-aligned, the others right."""
    cols = _columns(rows, columns)
    heads = list(headers) if headers is not None else cols
    body = [[format_cell(row.get(c), float_format) or "n/a" for c in cols] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in body]) for j, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(heads), *(line(r) for r in body)])
