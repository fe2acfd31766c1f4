"""Find the Markdown tables in a text and check that every row has the header's cell count.

A cell boundary is a ``|`` not preceded by a backslash and not inside an inline code span
(GitHub renders ``a|b`` inside backticks literally only when the pipe is escaped, so an
unescaped pipe in code still splits the row: the checker counts it, as a renderer would).
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"(?<!\\)\|")


def cells(line: str) -> list[str]:
    """The cells of one table line (outer pipes stripped)."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|") and not text.endswith("\\|"):
        text = text[:-1]
    return [c.strip() for c in _BOUNDARY.split(text)]


def tables(text: str) -> list[tuple[int, list[str]]]:
    """``(first line number, lines)`` of every table outside fenced code blocks."""
    out: list[tuple[int, list[str]]] = []
    fenced = False
    current: list[str] = []
    start = 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.lstrip().startswith("|")
        if is_row:
            if not current:
                start = n
            current.append(line)
        elif current:
            out.append((start, current))
            current = []
    if current:
        out.append((start, current))
    return [(s, t) for s, t in out if len(t) >= 2 and set(t[1].replace("|", "").strip()) <= set(":- ")]


def problems(text: str, name: str = "") -> list[str]:
    """One message per row whose cell count differs from its table's header."""
    found = []
    for start, lines in tables(text):
        width = len(cells(lines[0]))
        for offset, line in enumerate(lines):
            if len(cells(line)) != width:
                found.append(f"{name}:{start + offset}: {len(cells(line))} cells, header has "
                             f"{width}: {line.strip()[:90]}")
    return found
